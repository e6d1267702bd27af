"""A self-contained HTML page: sections with a table of contents, tables, embedded PNG figures, image grids."""

from __future__ import annotations

import base64
import html

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;color:#222;
line-height:1.45;padding:0 1em}
h1{font-size:1.7em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;font-size:.92em}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;margin:.8em 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}.cell{width:120px;font-size:.72em;word-wrap:break-word}
.cell img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #ccc;display:block}
.reason{color:#a33}.toc a{display:block}figure{margin:.8em 0}figure img{max-width:100%}
"""


def esc(x) -> str:
    return html.escape(str(x))


def figure(png: bytes, caption: str) -> str:
    """An embedded PNG figure."""
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}"><figcaption>{esc(caption)}' \
           "</figcaption></figure>"


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A table of dict rows; numbers are right-aligned, floats shown with 3 decimals."""
    if not rows:
        return "<p><em>none</em></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)

    def cell(v):
        if isinstance(v, float):
            return f'<td class="num">{v:.3f}</td>'
        if isinstance(v, int):
            return f'<td class="num">{v}</td>'
        return f"<td>{esc('' if v is None else v)}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def grid(items: list[tuple[bytes, str, str]]) -> str:
    """Thumbnails (PNG bytes) with a caption and a reason line under each."""
    cells = []
    for png, caption, reason in items:
        data = base64.b64encode(png).decode("ascii")
        cells.append(f'<div class="cell"><img alt="" src="data:image/png;base64,{data}">{esc(caption[:80])}'
                     f'<div class="reason">{esc(reason)}</div></div>')
    return '<div class="grid">' + "".join(cells) + "</div>"


def note(text: str) -> str:
    return f'<div class="note">{esc(text)}</div>'


def page(title: str, sections: list[tuple[str, str]], intro: str = "") -> str:
    """The whole page: title, table of contents, then each (heading, html) section with an anchor."""
    toc = "".join(f'<a href="#s{i}">{i + 1}. {esc(h)}</a>' for i, (h, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{i + 1}. {esc(h)}</h2>{content}' for i, (h, content) in enumerate(sections))
    return _document(title, intro, toc, body)


def _document(title: str, intro: str, toc: str, body: str) -> str:
    """The HTML document around a page's intro, table-of-contents links and body."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{intro}"
            f'<nav class="toc"><strong>Contents</strong>{toc}</nav>{body}</body></html>\n')


def story(title: str, parts: list[tuple[str, str, list[tuple[str, str]]]], intro: str = "") -> str:
    """One page of several reports: each part (title, intro html, sections) is an h2 with its sections as h3; the
    table of contents links every part and section."""
    toc, body = [], []
    for i, (part, part_intro, sections) in enumerate(parts):
        toc.append(f'<a href="#p{i}"><strong>{i + 1}. {esc(part)}</strong></a>')
        body.append(f'<h2 id="p{i}">{i + 1}. {esc(part)}</h2>{part_intro}')
        for j, (heading, content) in enumerate(sections):
            toc.append(f'<a href="#p{i}s{j}" style="margin-left:1.5em">{i + 1}.{j + 1} {esc(heading)}</a>')
            body.append(f'<h3 id="p{i}s{j}">{i + 1}.{j + 1} {esc(heading)}</h3>{content}')
    return _document(title, intro, "".join(toc), "".join(body))
