"""A small Markdown-to-HTML converter for what the reports contain: headers, tables, images,
paragraphs, bullet lists, fenced code, foldable ``<details>``/``<summary>`` lines (as GitHub
renders them), and inline ``code``, **bold**, *italics* and links.
Images are embedded as base64 so the HTML file is self-contained; an image file that is missing
becomes a visible note instead of a broken image.

>>> print(markdown_to_html("# T\\n\\n| a | b |\\n|---|---|\\n| **1** | `x<y` |", Path("."),
...                        standalone=False))
<h1>T</h1>
<table>
<tr><th>a</th><th>b</th></tr>
<tr><td><b>1</b></td><td><code>x&lt;y</code></td></tr>
</table>
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from .matrix import CELL_STYLE, MARKS, NA

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
         "line-height:1.35;color:#222;}"
         "table{border-collapse:collapse;font-size:12px;margin:1em 0;display:block;"
         "overflow-x:auto;max-width:100%;}"
         "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;}"
         "th{background:#f3f3f3;position:sticky;top:0;}tr:nth-child(even) td{background:#fafafa;}"
         "img{max-width:100%;height:auto;display:block;margin:0.5em 0;}"
         "code,pre{background:#f5f5f5;font-size:12px;}pre{padding:0.6em;overflow-x:auto;}"
         "summary{cursor:pointer;font-weight:bold;margin:0.5em 0;}"
         "h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em;}"
         ".missing{color:#b00;}"
         # the verdict cells (after the even rows' background, at the same specificity)
         + "".join(f"table td.v-{k.replace(' ', '-')},table th.v-{k.replace(' ', '-')}{{{v}}}"
                   for k, v in CELL_STYLE.items())
         + "table td.unstable{outline:2px dashed #d67e00;outline-offset:-3px;}"
         "table td.na{background:#fdfdfd;color:#bbb;text-align:center;}")
_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
         ".jpeg": "image/jpeg", ".gif": "image/gif"}


def inline(text: str) -> str:
    """Escape ``text`` and render inline code, bold, italics and links.

    >>> inline("**a** < `b*c*` and [x](http://e.org) *i*")
    '<b>a</b> &lt; <code>b*c*</code> and <a href="http://e.org">x</a> <i>i</i>'
    """
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # a code span: escaped, nothing else
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", s)
        s = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)",
                   lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', s)
        out.append(s)
    return "".join(out)


def cell(tag: str, text: str) -> str:
    """One table cell; a cell starting with a verdict marker (:data:`.matrix.MARKS`) gets the
    verdict's class (its colour) instead of the marker, and ``unstable`` where it says so.

    >>> cell("td", "🟩 supported · **unstable**")
    '<td class="v-supported unstable">supported · <b>unstable</b></td>'
    """
    for verdict, mark in MARKS.items():
        if text.startswith(mark + " ") or text == mark:
            cls = "v-" + verdict.replace(" ", "-")
            if "**unstable**" in text:
                cls += " unstable"
            return f'<{tag} class="{cls}">{inline(text[len(mark):].strip())}</{tag}>'
    if text == NA and tag == "td":  # a problem of another kind than the claim's
        return f'<td class="na">{NA}</td>'
    return f"<{tag}>{inline(text)}</{tag}>"


def _image(alt: str, target: str, base: Path) -> str:
    path = base / target
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    if not path.is_file():
        return f'<p class="missing">[figure {html.escape(target)} is missing]</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"></p>'


def markdown_to_html(md: str, base: Path, title: str = "beyondsgd report",
                     standalone: bool = True) -> str:
    """The HTML of ``md``; images are read relative to ``base`` and embedded. ``standalone``:
    a whole page (with ``title`` and the style sheet), else the body's elements only."""
    out: list[str] = []
    in_table = in_list = in_code = False
    para: list[str] = []

    def flush() -> None:
        nonlocal in_table, in_list
        if para:
            out.append(f"<p>{inline(' '.join(para))}</p>")
            para.clear()
        if in_table:
            out.append("</table>")
            in_table = False
        if in_list:
            out.append("</ul>")
            in_list = False

    for line in md.splitlines():
        if line.startswith("```"):
            flush()
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            row = line.strip()[1:]
            row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)]
            if all(c and set(c) <= set("-: ") for c in cells):
                continue
            if not in_table:
                flush()
                out.append("<table>")
                in_table, tag = True, "th"
            else:
                tag = "td"
            out.append("<tr>" + "".join(cell(tag, c) for c in cells) + "</tr>")
            continue
        fold = re.fullmatch(r"\s*(<details(?: open)?>|</details>|<summary>(.*)</summary>)\s*",
                            line)
        if fold:  # a foldable section (as GitHub renders it): the tags pass, the text escaped
            flush()
            out.append(fold.group(1) if fold.group(2) is None
                       else f"<summary>{inline(fold.group(2))}</summary>")
            continue
        m = re.fullmatch(r"\s*!\[(.*?)\]\((.+?)\)\s*", line)
        bullet = re.match(r"\s*[-*] (.*)", line)
        if m:
            flush()
            out.append(_image(m.group(1), m.group(2), base))
        elif line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif bullet:
            if not in_list:
                flush()
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{inline(bullet.group(1))}</li>")
        elif line.strip():
            if in_table or in_list:
                flush()
            para.append(line.strip())
        else:
            flush()
    flush()
    if in_code:
        out.append("</pre>")
    body = "\n".join(out) + "\n"
    if not standalone:
        return body.rstrip("\n")
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + body + "</body></html>\n")
