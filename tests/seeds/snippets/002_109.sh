curl http://localhost:8000/api/v1/ws/status
