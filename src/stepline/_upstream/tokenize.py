"""Count the tokens of a Chat Completions request with the upstream's own tokenizer.

An upstream says how in its config (``tokenize``):

* ``vllm``: ``POST <server>/tokenize`` (beside ``/v1``) with the request's
  ``messages`` and ``tools`` and ``add_generation_prompt: true``; the answer's
  ``count`` is the number.
* ``llama.cpp``: ``POST <server>/apply-template`` with the ``messages`` (and
  ``tools``) gives the prompt text, ``POST <server>/tokenize`` with that text
  gives its ``tokens``.
* an ``http(s)://`` URL: a vLLM-shaped ``/tokenize`` at that address.

An upstream without ``tokenize`` has no tokenizer (:func:`tokenizer_for` is
None): stepline never guesses a count. Every failure (connection, non-2xx, an
answer without a count) is an :class:`~stepline.errors.UpstreamError`; the
upstream's API key goes along as on a model call and never appears in one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from stepline._upstream.failures import mask_secret
from stepline._upstream.routing import UpstreamTarget
from stepline.errors import UpstreamError

__all__ = ["Tokenizer", "tokenizer_for"]

#: seconds one tokenizer request may take
_TIMEOUT = 30.0


def _server_root(base_url: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000``: vLLM and llama.cpp serve it there."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


@dataclass(frozen=True, kw_only=True)
class Tokenizer:
    """The tokenizer of one upstream target."""

    target: UpstreamTarget
    kind: str
    url: str

    async def count(self, http: httpx.AsyncClient, payload: dict[str, Any]) -> int:
        """The tokens of ``payload``'s ``messages`` (and ``tools``) as the model reads them."""
        messages = payload.get("messages") or []
        tools = payload.get("tools")
        if self.kind == "llama.cpp":
            body: dict[str, Any] = {"messages": messages}
            if tools:
                body["tools"] = tools
            templated = await self._post(http, f"{self.url}/apply-template", body)
            prompt = templated.get("prompt")
            if not isinstance(prompt, str):
                raise self._error("/apply-template answered without a prompt")
            counted = await self._post(
                http,
                f"{self.url}/tokenize",
                {"content": prompt, "add_special": True, "parse_special": True},
            )
            tokens = counted.get("tokens")
            if not isinstance(tokens, list):
                raise self._error("/tokenize answered without tokens")
            return len(tokens)
        body = {
            "model": self.target.upstream_model,
            "messages": messages,
            "add_generation_prompt": True,
        }
        if tools:
            body["tools"] = tools
        counted = await self._post(http, self.url, body)
        count = counted.get("count")
        if isinstance(count, bool) or not isinstance(count, int):
            tokens = counted.get("tokens")
            if not isinstance(tokens, list):
                raise self._error("/tokenize answered without a count")
            count = len(tokens)
        return count

    async def _post(
        self, http: httpx.AsyncClient, url: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        key = self.target.api_key
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        try:
            response = await http.post(
                url, content=orjson.dumps(body), headers=headers, timeout=_TIMEOUT
            )
        except httpx.HTTPError as exc:
            raise self._error(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            text = response.text[:300]
            raise self._error(f"HTTP {response.status_code}: {text}", status=response.status_code)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise self._error("the answer is not JSON") from None
        if not isinstance(data, dict):
            raise self._error("the answer is not a JSON object")
        return data

    def _error(self, detail: str, *, status: int | None = None) -> UpstreamError:
        message = f"tokenizer of upstream {self.target.name!r} failed: {detail}"
        return UpstreamError(mask_secret(message, self.target.api_key), status=status)


def tokenizer_for(target: UpstreamTarget) -> Tokenizer | None:
    """The configured tokenizer of ``target``'s upstream, or None when it has none."""
    kind = target.config.tokenize
    if kind is None:
        return None
    if kind in ("vllm", "llama.cpp"):
        root = _server_root(target.base_url)
        url = f"{root}/tokenize" if kind == "vllm" else root
        return Tokenizer(target=target, kind=kind, url=url)
    return Tokenizer(target=target, kind="vllm", url=kind)
