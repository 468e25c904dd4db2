"""MkDocs hook: the route table of ``docs/api.md``, generated from the app's OpenAPI document.

``api.md`` holds the marker ``<!-- openapi-routes -->``; at build time it is replaced by one row
per operation (method, path, the first paragraph of its description), read from
``create_app(settings).openapi()``, so the page lists exactly the routes the code serves. The app
is built but never started (no core opens).
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- openapi-routes -->"
PAGE = "api.md"
METHODS = ("get", "post", "put", "patch", "delete")


def _openapi() -> dict[str, Any]:
    """The OpenAPI document of an app built with default settings."""
    from derim.api.app import create_app
    from derim.config import load_settings

    document: dict[str, Any] = create_app(load_settings()).openapi()
    return document


def _first_paragraph(text: str) -> str:
    """The first paragraph of an operation's description, as Markdown for one table cell."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    return paragraph.replace("``", "`").replace("|", "\\|")


def route_table(document: dict[str, Any]) -> str:
    """A Markdown table of every operation in ``document``, in the order the app declares them."""
    rows = ["| method | path | what it does |", "|---|---|---|"]
    for path, operations in document["paths"].items():
        for method in METHODS:
            operation = operations.get(method)
            if operation is None:
                continue
            text = operation.get("description") or operation.get("summary", "")
            rows.append(f"| `{method.upper()}` | `{path}` | {_first_paragraph(text)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace the marker in ``api.md`` with the generated table; fail if it is missing."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its {MARKER} marker: the route table has nowhere to go")
    return markdown.replace(MARKER, route_table(_openapi()))
