"""The agent loop: steps, the pure transition, and the loop that runs them durably.

The engine records and runs a response's steps (``loop``, around the pure
``transition``), under the :class:`~stepline.engine.limits.Limits` and
:class:`~stepline.engine.routes.ModelRoutes` it is given — it reads no
config file. It reports what happens as typed events to one sink
(``sinks``: taps, metrics, traces) and shows it through a
:class:`~stepline.engine.view.ResponseView` (the wire's, in
``protocol.response_events``): it names no wire event.
"""
