curl -X POST "http://localhost:8000/api/v1/ws/token" \
  -H "Authorization: Bearer YOUR_ACCESS_TOKEN"
