"""The wire: Open Responses in and out, Chat Completions to the upstream.

Parsing a request (``request``), reading its items as chat messages
(``items``, ``client_tools``), building the chat payload (``chat_request``),
reading the upstream's stream (``chat_stream``), and showing a run as Open
Responses events and objects (``response_events``, ``model_events``,
``assemble``). It runs nothing: it may read the engine's typed steps and
implement its view, never drive the loop.
"""
