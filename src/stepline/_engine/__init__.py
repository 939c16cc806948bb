"""The agent loop: it runs a response's steps durably and knows no wire, no config, no server.

One job: record and run the steps of a scope (``loop``, around the pure
``transition``; a model call in ``model_call``, tool calls and sub-agents in
``tool_call``) until the transition says it is done. It takes what it needs
as its own typed values — the request's :class:`~stepline._engine.spec.RunSpec`,
:class:`~stepline._engine.limits.Limits`, :class:`~stepline._engine.routes.ModelRoutes`
— and reports what happens as typed events and typed results to one sink
(``sinks``), whose consumers are the Open Responses stream, taps, metrics
and traces. When what a consumer shows of a step is stored is the engine's
rule (``run_log``: with the step's end), and so is the event log itself
(``event_log``).
"""
