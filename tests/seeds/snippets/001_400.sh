curl http://localhost:8000/ws/test
