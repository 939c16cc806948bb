"""HTML for the console: templates filled with escaped values, and nothing else.

Invariants:

* Every value put into a template is HTML-escaped (quotes included, so it is
  safe inside an attribute) unless it is :class:`Html`, which only this
  module's functions and the templates themselves produce. Stored data (a
  model's output, a tool's arguments, a key's name) can never become markup.
* Templates are the ``.html`` files beside this module, read once; their
  ``{name}`` fields are filled by :func:`render`. They hold no inline script
  or style (the console's Content-Security-Policy forbids both), so a literal
  brace never needs doubling.
"""

from __future__ import annotations

import functools
import html
import string
from collections.abc import Iterable
from importlib import resources
from typing import Any

__all__ = ["Html", "join", "render", "template"]


class Html(str):
    """Text that is already HTML: inserted into a template as it is."""

    __slots__ = ()


class _EscapingFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        text = format(value, format_spec)
        return text if isinstance(value, Html) else html.escape(text, quote=True)


_FORMATTER = _EscapingFormatter()


@functools.cache
def template(name: str) -> str:
    """The text of ``templates/<name>.html``, shipped inside the package."""
    return (resources.files("stepline._server.console") / "templates" / f"{name}.html").read_text(
        "utf-8"
    )


def render(template_text: str, /, **values: Any) -> Html:
    """``template_text`` with each ``{field}`` replaced by its value, escaped unless Html."""
    return Html(_FORMATTER.format(template_text, **values))


def join(parts: Iterable[Html]) -> Html:
    return Html("".join(parts))
