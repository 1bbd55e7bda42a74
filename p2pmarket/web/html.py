"""Building HTML that escapes by default, pure.

:func:`el` makes an element: every string child and every attribute value is escaped
(:func:`html.escape`, quotes included) unless it is :class:`Safe`, which only this
module and :mod:`~p2pmarket.web.svg` make from markup they built themselves. So a
string that came from the network (a host record's URL, a resource name) shows as
text, whatever it holds.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})


@dataclass(frozen=True)
class Safe:
    """Markup built here: inserted as it is."""

    text: str

    def __add__(self, other: Safe) -> Safe:
        return Safe(self.text + other.text)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def render(child: object) -> str:
    """A child as markup: strings and numbers escaped, :class:`Safe` as it is, None
    nothing, anything iterable its items in order."""
    if child is None or child is False:
        return ""
    if isinstance(child, Safe):
        return child.text
    if isinstance(child, str | int | float):
        return esc(child)
    if isinstance(child, Iterable):
        return "".join(render(c) for c in child)
    return esc(child)


def attrs(pairs: dict[str, object]) -> str:
    out = []
    for key, value in pairs.items():
        name = key.rstrip("_").replace("_", "-")
        if not _NAME.match(name):
            raise ValueError(f"bad attribute name {name!r}")
        if value is None or value is False:
            continue
        out.append(f" {name}" if value is True else f' {name}="{esc(value)}"')
    return "".join(out)


def el(tag: str, *children: object, **attributes: object) -> Safe:
    """``<tag attributes>children</tag>``; attribute names: ``class_`` is ``class``,
    ``data_x`` is ``data-x``."""
    if not _NAME.match(tag):
        raise ValueError(f"bad tag {tag!r}")
    head = f"<{tag}{attrs(attributes)}>"
    if tag in VOID:
        return Safe(head)
    return Safe(f"{head}{render(children)}</{tag}>")


def join(children: Iterable[object]) -> Safe:
    return Safe(render(children))


def document(title: str, body: object, *, scripts: Iterable[str] = (),
             styles: Iterable[str] = ()) -> str:
    """A whole page: ``<!doctype html>`` and its head (stylesheets and scripts by URL:
    the CSP allows only the node's own)."""
    head = [el("meta", charset="utf-8"),
            el("meta", name="viewport", content="width=device-width, initial-scale=1"),
            el("title", title),
            *(el("link", rel="stylesheet", href=s) for s in styles),
            *(el("script", src=s, defer=True) for s in scripts)]
    return "<!doctype html>" + el("html", el("head", head), el("body", body),
                                  lang="en").text


__all__ = ["Safe", "attrs", "document", "el", "esc", "join", "render"]
