"""The Chat Completions wire stepline speaks to every upstream, below the engine and the edges.

What a model call sends and reads back, in Chat Completions terms and
nothing else: the request body (``body``: the upstream's ``ChatDialect``,
a response's ``ChatOptions``), the messages (``messages``: a stored chain
of steps as the model saw it, a transcript as one upstream takes it;
``summary``: how a compaction summary stands in for what it summarises),
and the stream of chunks coming back (``stream``: deltas for a sink, the
final assistant turn). It reads the step records and nothing above them,
so the engine, the upstream client and the Open Responses wire all build
on it.
"""
