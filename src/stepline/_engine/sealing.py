"""What seals ``encrypted_content``, as the engine carries it: a seam, not a cipher.

Every run of a process seals and opens with the same keys (a client carries
what one turn sealed into the next), so the engine holds one sealer for all
its runs; it never uses it itself. The wire's :class:`~stepline._protocol.sealing.Sealer`
is the implementation the server and the library hand it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Sealing"]


class Sealing(Protocol):
    def seal(self, text: str, *, label: str = ...) -> str:
        """``text`` sealed under ``label`` (only this process's keys open it)."""
        ...

    def open(self, token: str, *, label: str = ...) -> str | None:
        """What ``token`` sealed under ``label``; None when no key opens it."""
        ...
