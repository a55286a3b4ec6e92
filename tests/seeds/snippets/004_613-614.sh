curl -H "Authorization: Bearer <admin-token>" \
  http://localhost:8000/api/v1/ws/stats
