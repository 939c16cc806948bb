"""A client's own Chat Completions call relayed to an upstream and back, bytes as sent.

The gateway route (``_server/passthrough.py``) forwards a body through
:meth:`~stepline._upstream.client.ChatClient.forward`, with the same failover as
a model call; :class:`ForwardedReply` is the upstream's 2xx answer.

Invariants:

* The bytes go back as they came, but for registered secrets
  (:mod:`stepline._masking`): a JSON body is masked whole, an event stream event
  by event, an event re-encoded only when masking changed it.
* Each wait for the upstream is bounded by the ``chunk`` timeout, all of them
  by the call's ``total``.
* The target's call slot is given back exactly once: at the body's end, or at
  :meth:`ForwardedReply.aclose`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson

from stepline._config import TimeoutsConfig
from stepline._masking import StreamMasker, mask_bytes, stream_masker
from stepline._transport import ReadFailed, Reply
from stepline._upstream.failures import Phase, read_failure, timeout

__all__ = ["ForwardedReply", "MaskedRelay"]


class ForwardedReply:
    """An upstream's 2xx reply to a forwarded call: its status, content type and raw
    bytes. Iterate :meth:`body` once (it frees the target's slot at its end), or
    :meth:`aclose` it without reading."""

    def __init__(
        self,
        reply: Reply,
        *,
        target: str,
        timeouts: TimeoutsConfig,
        total_deadline: float,
        request_id: str,
        finished: Callable[[str | None], None],
    ) -> None:
        self._reply = reply
        self._timeouts = timeouts
        self._total_deadline = total_deadline
        self._request_id = request_id
        self._finished = finished
        self._closed = False
        self.status_code = reply.status
        self.content_type = reply.headers.get("content-type", "application/json")
        #: relayed with the bytes, should an upstream compress despite being asked not to
        self.content_encoding = reply.headers.get("content-encoding")
        self.target = target

    async def body(self) -> AsyncIterator[bytes]:
        """The reply's bytes as they arrive; each wait bounded by the ``chunk`` timeout."""
        loop = asyncio.get_running_loop()
        timeouts = self._timeouts
        reads = self._reply.raw()
        relay = MaskedRelay.of(self.content_type, self.content_encoding)
        outcome: str | None = "cancelled"
        try:
            while True:
                deadline = min(loop.time() + timeouts.chunk, self._total_deadline)
                try:
                    async with asyncio.timeout_at(deadline):
                        block = await anext(reads, None)
                except TimeoutError:
                    outcome = "timeout"
                    phase: Phase = "chunk" if deadline < self._total_deadline else "total"
                    raise timeout(phase, timeouts, self._request_id) from None
                except ReadFailed as exc:
                    outcome = "stream"
                    raise read_failure(exc, self._request_id) from exc
                if block is None:
                    outcome = None
                    if relay is not None and (rest := relay.close()):
                        yield rest
                    return
                if relay is not None:
                    block = relay.feed(block)
                    if not block:
                        continue
                yield block
        finally:
            await reads.aclose()
            await self._close(outcome)

    async def read(self) -> bytes:
        return b"".join([block async for block in self.body()])

    async def aclose(self) -> None:
        await self._close("cancelled")

    async def _close(self, outcome: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        await self._reply.aclose()
        self._finished(outcome)


class MaskedRelay:
    """A forwarded body with registered secrets masked: an event stream line by line
    (a ``data:`` chunk through a :class:`~stepline._masking.StreamMasker`, so a secret
    split across events is caught too), any other body whole, at its end."""

    __slots__ = ("_masker", "_stream", "_tail")

    def __init__(self, masker: StreamMasker, *, stream: bool) -> None:
        self._masker = masker
        self._stream = stream
        self._tail = b""

    @classmethod
    def of(cls, content_type: str, content_encoding: str | None) -> MaskedRelay | None:
        """The relay for a reply; None with no secret registered, or for a body
        compressed despite the ``identity`` asked for (it cannot be read)."""
        masker = stream_masker()
        if masker is None or content_encoding not in (None, "identity"):
            return None
        return cls(masker, stream=content_type.startswith("text/event-stream"))

    def feed(self, block: bytes) -> bytes:
        data = self._tail + block
        if not self._stream:
            self._tail = data
            return b""
        end = data.rfind(b"\n") + 1
        self._tail = data[end:]
        return b"".join(self._line(line) for line in data[:end].splitlines(keepends=True))

    def close(self) -> bytes:
        data, self._tail = self._tail, b""
        if not self._stream:
            return mask_bytes(data)
        return self._line(data) if data else b""

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data:"):
            return line
        content = line.rstrip(b"\r\n")
        try:
            chunk = orjson.loads(content[5:])
        except orjson.JSONDecodeError:
            return mask_bytes(line)  # [DONE], or not a chunk
        if type(chunk) is dict and self._masker.chunk(chunk):
            return b"data: " + orjson.dumps(chunk) + line[len(content) :]
        return mask_bytes(line)
