"""A small Markdown-to-HTML converter for what the reports contain (headers, tables, images,
paragraphs); images are embedded as base64 so the HTML file is self-contained."""

from __future__ import annotations

from pathlib import Path


def markdown_to_html(md: str, base: Path) -> str:
    """A small converter for what our reports contain (headers, tables, images, paragraphs);
    images are embedded as base64 so the HTML file is self-contained."""
    import base64
    import html
    import re

    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                tag = "th"
            else:
                tag = "td"
            cells = [re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(c)) for c in cells]
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        m = re.match(r"!\[(.*?)\]\((.+?)\)", line)
        if m:
            data = base64.b64encode((base / m.group(2)).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(m.group(1))}" '
                       f'src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("```"):
            continue
        elif line.strip():
            text = re.sub(r"`(.+?)`", r"<code>\1</code>", html.escape(line))
            out.append(f"<p>{text}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0;}"
             "td,th{border:1px solid #ccc;padding:3px 6px;}th{background:#f3f3f3;}"
             "img{max-width:100%;}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>beyondsgd report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")
