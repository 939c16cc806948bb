"""The edge that talks to model upstreams: routing a model name, and streaming a call.

:func:`resolve_target` maps a client's model name to an :class:`UpstreamTarget`
(and its :class:`~stepline._chat.body.ChatDialect`); :class:`ChatClient`
streams one Chat Completions call to it as chunk dicts, deciding retries and
mapping every failure to :class:`~stepline.errors.UpstreamError`. The body it
sends and the chunks it reads are the Chat Completions wire (``stepline._chat``).
"""

from stepline._upstream.client import ChatClient
from stepline._upstream.routing import UpstreamTarget, resolve_target

__all__ = ["ChatClient", "UpstreamTarget", "resolve_target"]
