"""A response's run: prepare it, run its loop, show it on the wire, store its end.

The engine (``stepline._engine``) runs a loop and names no wire format; the
protocol (``stepline._protocol``) speaks Open Responses and runs nothing. A
response's run needs both — a request read into the engine's ``RunSpec``
(``prepare``), the conversation it continues read from stored bodies
(``conversation``), a loop whose steps are shown as Open Responses events, a
response object assembled at the end (``response``) — so it lives here,
above both, and the server and the library start every run through
:func:`~stepline._run.response.run_response`.
"""
