"""A response's run: prepare it, run its loop, show it on the wire, store its end.

The engine (``stepline.engine``) runs a loop and names no wire format; the
protocol (``stepline.protocol``) speaks Open Responses and Chat Completions
and runs nothing. A response's run needs both — a request read as the wire
says, a loop whose steps are shown as Open Responses events, a response
object assembled at the end — so it lives here, above both, and the server
and the library start every run through :func:`~stepline.run.response.run_response`.
"""
