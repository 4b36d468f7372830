"""The service layer: `medagent serve` (HTTP API + web page, service/http.py) and `medagent mcp` (service/mcp_server.py).

Both run cases and consultations through the same engine as `medagent solve` and `medagent chat` (agent/);
the service adds jobs that outlive a server process (service/jobs.py) and safe uploads (service/uploads.py).
"""
