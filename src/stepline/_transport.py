"""The network edge of a step: one POST out; its status, headers and body back.

The upstream client (a model call) and the HTTP tools (a tool call) send
through the one small :class:`Transport` seam, which two implementations fill:

* :class:`AiohttpTransport`, the network: aiohttp's keep-alive pool and C
  HTTP parser. A streamed model call through it costs a third of what httpx
  costs per call (``benchmarks``' ``floor`` scenario measures both), and
  every step of every response makes a model call or a tool call.
* :class:`HttpxTransport`, any ``httpx`` transport or client: ``httpx.MockTransport``
  in tests, ``httpx.ASGITransport`` for a model served in-process by the library.

Invariants:

* Failures leave as the :class:`TransportError` kinds below, and nothing else;
  the caller turns them into its own errors (``UpstreamError``, ``ToolError``).
  Cancellation always propagates untouched.
* A transport has no timeout of its own besides ``connect_timeout``: the
  caller's deadlines bound every other wait.
* A reply is closed once (:meth:`Reply.aclose` may be called again); a body
  read to its end gives the connection back to the pool, a body left unread
  closes it.
* Nothing is followed or retried here: no redirects, no second attempt.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import urllib.request
import zlib
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Protocol, cast

import httpx

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "AiohttpTransport",
    "ConnectFailed",
    "ConnectTimedOut",
    "HttpxTransport",
    "InvalidURL",
    "ReadFailed",
    "Reply",
    "RequestFailed",
    "Transport",
    "TransportError",
]


class TransportError(Exception):
    """A request that got no usable answer; ``str()`` says why."""


class ConnectFailed(TransportError):
    """No answer yet: the request never reached a live upstream (refused, reset, a
    malformed answer, or a pooled connection the server had just closed)."""


class ConnectTimedOut(TransportError):
    """Opening the connection took longer than ``connect_timeout``."""


class InvalidURL(TransportError):
    """The URL cannot be requested (malformed, or not http/https)."""


class RequestFailed(TransportError):
    """Any other failure before an answer."""


class ReadFailed(TransportError):
    """The body broke off; ``dropped``: the connection closed under it."""

    def __init__(self, message: str, *, dropped: bool) -> None:
        super().__init__(message)
        self.dropped = dropped


class Reply(Protocol):
    """An answer whose status and headers have arrived, its body still to read."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up case-insensitively."""
        ...

    def body(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, decoded of any ``Content-Encoding``."""
        ...

    def raw(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, as it was sent."""
        ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    async def post(
        self, url: str, *, headers: Mapping[str, str], content: bytes, connect_timeout: float
    ) -> Reply:
        """Send one POST and return once the answer's head has arrived."""
        ...

    async def aclose(self) -> None: ...


# -- aiohttp: the network -----------------------------------------------------


class _AiohttpReply:
    __slots__ = ("_closed", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._closed = False

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def raw(self) -> AsyncGenerator[bytes, None]:
        import aiohttp

        content = self._response.content
        while True:
            try:
                block = await content.readany()
            except aiohttp.ClientPayloadError as exc:
                raise ReadFailed(str(exc) or type(exc).__name__, dropped=True) from exc
            except aiohttp.ClientError as exc:
                dropped = isinstance(exc, aiohttp.ClientConnectionError)
                raise ReadFailed(str(exc) or type(exc).__name__, dropped=dropped) from exc
            if not block:
                return
            yield block

    def body(self) -> AsyncGenerator[bytes, None]:
        encoding = self._response.headers.get("content-encoding", "identity").lower()
        if encoding not in ("gzip", "deflate", "x-gzip"):
            # the raw blocks themselves: no generator in between for each open stream
            return self.raw()
        return self._decoded(encoding)

    async def _decoded(self, encoding: str) -> AsyncGenerator[bytes, None]:
        # wbits 47: a gzip or zlib header, told apart from the data
        decoder = zlib.decompressobj(wbits=47)
        try:
            async for block in self.raw():
                if data := decoder.decompress(block):
                    yield data
            if rest := decoder.flush():
                yield rest
        except zlib.error as exc:
            raise ReadFailed(f"undecodable {encoding} body: {exc}", dropped=False) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._response.content.at_eof():
            self._response.release()  # the whole body was read: the connection is reused
        else:
            self._response.close()


class AiohttpTransport:
    """The network, through one aiohttp session made on first use (it needs the loop)."""

    def __init__(self, *, max_connections: int = 1000) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        #: the proxy of each origin, read from the environment once (see _proxy_for)
        self._proxies: dict[str, str | None] = {}

    def _proxy_for(self, url: str) -> str | None:
        """The ``HTTP(S)_PROXY`` an origin goes through unless ``NO_PROXY`` names it,
        as every other HTTP client honours them; worked out once per origin, since
        aiohttp's own ``trust_env`` reads the environment (and ``.netrc``, in a
        thread) on every request."""
        parts = urllib.parse.urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._proxies:
            proxies = urllib.request.getproxies_environment()
            proxy = proxies.get(parts.scheme) or proxies.get("all")
            if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
                proxy = None
            self._proxies[origin] = proxy or None
        return self._proxies[origin]

    def _open_session(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # the client asks for identity; a body sent compressed anyway is decoded in
            # Reply.body, and relayed as it came by Reply.raw
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
        )
        return self._session

    async def post(
        self, url: str, *, headers: Mapping[str, str], content: bytes, connect_timeout: float
    ) -> Reply:
        import aiohttp

        session = self._session or self._open_session()
        try:
            response = await session.post(
                url,
                data=content,
                headers=dict(headers),
                allow_redirects=False,
                proxy=self._proxy_for(url),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
            )
        except aiohttp.InvalidURL as exc:
            raise InvalidURL(str(exc) or url) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise ConnectTimedOut(str(exc) or "connect timeout") from exc
        except aiohttp.ClientConnectorError as exc:
            error = exc.os_error
            why = os.strerror(error.errno) if error.errno else str(error)
            raise ConnectFailed(f"{why} ({exc.host}:{exc.port})") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise RequestFailed(str(exc) or type(exc).__name__) from exc
        except ValueError as exc:  # a URL yarl cannot even parse
            raise InvalidURL(str(exc)) from exc
        return _AiohttpReply(response)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


# -- httpx: injected transports ------------------------------------------------


class _HttpxReply:
    __slots__ = ("_response",)

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def _read(self, blocks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                try:
                    block = await anext(blocks)
                except StopAsyncIteration:
                    return
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    raise ReadFailed(str(exc) or type(exc).__name__, dropped=True) from exc
                except httpx.HTTPError as exc:
                    raise ReadFailed(str(exc) or type(exc).__name__, dropped=False) from exc
                yield block
        finally:
            await blocks.aclose()

    def body(self) -> AsyncGenerator[bytes, None]:
        return self._read(cast(AsyncGenerator[bytes, None], self._response.aiter_bytes()))

    def raw(self) -> AsyncGenerator[bytes, None]:
        return self._read(cast(AsyncGenerator[bytes, None], self._response.aiter_raw()))

    async def aclose(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._response.aclose()


class HttpxTransport:
    """Any httpx transport, through an ``httpx.AsyncClient`` of its own, or ``client``
    (which stays the caller's to close)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._owned = client is None
        self._client = client or httpx.AsyncClient(
            transport=transport, timeout=None, follow_redirects=False
        )

    async def post(
        self, url: str, *, headers: Mapping[str, str], content: bytes, connect_timeout: float
    ) -> Reply:
        client = self._client
        try:
            request = client.build_request(
                "POST",
                url,
                content=content,
                headers=headers,
                timeout=httpx.Timeout(None, connect=connect_timeout),
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise InvalidURL(str(exc)) from exc
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectTimeout as exc:
            raise ConnectTimedOut(str(exc) or "connect timeout") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        except httpx.UnsupportedProtocol as exc:
            raise InvalidURL(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise RequestFailed(str(exc) or type(exc).__name__) from exc
        return _HttpxReply(response)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()
