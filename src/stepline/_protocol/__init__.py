"""The wire: Open Responses in and out, read into what a run needs.

Parsing a request (``request``), reading its items as chat messages
(``items``, ``client_tools``), reading its fields as the options of its
Chat Completions calls (``chat_request``; the Chat Completions wire itself
is ``stepline._chat``), and showing a run as Open Responses events and
objects (``response_stream``, a consumer of the run's sink; ``model_events``,
``assemble``). It runs nothing: it may read the engine's typed steps and
sink events and append to a run's log, never drive the loop.
"""
