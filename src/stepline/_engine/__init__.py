"""The agent loop: it runs a response's steps durably and knows no wire, no config, no server.

One job: record and run the steps of a scope (``loop``, around the pure
``transition``; a model call in ``model_call``, tool calls and sub-agents in
``tool_call``) until the transition says it is done. It takes what it needs
as its own typed values — the request's :class:`~stepline._engine.spec.RunSpec`,
:class:`~stepline._engine.limits.Limits`, :class:`~stepline._engine.routes.ModelRoutes`
— reports what happens as typed events to one sink (``sinks``: taps,
metrics, traces), and shows it through a :class:`~stepline._engine.view.ResponseView`
that the wire implements (``protocol.response_events``).
"""
