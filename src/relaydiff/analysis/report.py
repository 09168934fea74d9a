"""A self-contained HTML report: sections of text, images (files beside the report) and tables."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io.files import write_bytes_atomic


@dataclass
class Figure:
    path: str  # relative to the report's folder
    caption: str


@dataclass
class Section:
    id: str
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    table: list[dict] | None = None


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{image-rendering:pixelated;max-width:100%;min-width:320px;height:auto;
border:1px solid #ccc}
figcaption{font-size:.85em;color:#555;max-width:520px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
nav a{margin-right:1em}"""


def write_report(path: str | Path, title: str, intro: str, sections: Sequence[Section]) -> Path:
    """Write ``path`` (HTML) atomically; figures are referenced by their relative paths."""
    path = Path(path)
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>{intro}</p><nav>{nav}</nav>"]
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        if s.text:
            parts.append(f"<p>{s.text}</p>")
        for f in s.figures:
            parts.append(f'<figure><img src="{html.escape(f.path)}" alt="{html.escape(f.caption)}">'
                         f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
        if s.table:
            parts.append(_table(s.table))
        parts.append("</section>")
    parts.append("</body></html>\n")
    write_bytes_atomic(path, "\n".join(parts).encode())
    return path
