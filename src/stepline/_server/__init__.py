"""The HTTP server: the app, its routes and readers, auth, the runner and its leases.

The server is the library's run (``stepline._run``) plus a durable store,
HTTP, SSE and WebSocket readers of the event log, API keys, metrics,
traces, and the runner that keeps each response's lease.
"""
