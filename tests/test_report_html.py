"""``report.html`` as a user sees it: rendered by headless Chromium, every table of the Markdown
report is there and every figure is an image that loaded, at the width of its PNG file.

Chromium (Debian's ``chromium`` package; CI installs it, or set BEYONDSGD_CHROMIUM to a binary)
gets a temporary HOME and profile, and 90 s: a cold start in a busy sandbox is slow. The page is
probed through a copy with a small script appended that writes, once the page has loaded, what
it found into the DOM, which ``--dump-dom`` prints.
"""

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from beyondsgd.bench.report import write_report
from beyondsgd.bench.report.html import inline, markdown_to_html
from beyondsgd.bench.report.matrix import MARKS
from test_figures import hand_made_store


def _chromium() -> str | None:
    for name in (os.environ.get("BEYONDSGD_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found (install Debian's `chromium` package "
    "or set BEYONDSGD_CHROMIUM); CI installs it")

PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const out = {
    images: imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                            height: i.naturalHeight, shown: i.getBoundingClientRect().width})),
    tables: Array.from(document.querySelectorAll("table")).map(t => ({
      rows: t.rows.length, header: Array.from(t.rows[0].cells).map(c => c.textContent)})),
    headings: Array.from(document.querySelectorAll("h1,h2,h3")).map(h => h.textContent),
    page_width: document.documentElement.scrollWidth,
    page_height: document.documentElement.scrollHeight,
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "HOME": str(home)})


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def _markdown_tables(md: str) -> list[list[str]]:
    """The header cells of every table of the Markdown, independently of the converter (a
    verdict cell's marker, an emoji square, becomes the cell's colour in HTML: dropped here)."""
    tables, prev = [], ""
    marks = tuple(m + " " for m in MARKS.values())
    for line in md.splitlines():
        if line.startswith("|") and not prev.startswith("|"):
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            tables.append([c[len(c.split(" ")[0]) + 1:] if c.startswith(marks) else c
                           for c in cells])
        prev = line
    return tables


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(tmp dir, report.md path, what the probe found in Chromium's DOM)."""
    tmp = tmp_path_factory.mktemp("html")
    with hand_made_store(tmp / "store.db") as st:
        md_path = write_report(st, tmp / "report")
    text = (md_path.parent / "report.html").read_text()
    assert text.count("</body>") == 1
    probe_page = tmp / "probe.html"
    probe_page.write_text(text.replace("</body>", PROBE + "</body>"))
    res = _run_chromium(tmp, "--dump-dom", "--virtual-time-budget=10000",
                        "--window-size=1280,1000", probe_page.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"no probe in Chromium's DOM (exit {res.returncode}): {res.stderr[-2000:]}"
    return tmp, md_path, json.loads(html.unescape(m.group(1)))


@needs_chromium
def test_report_html_renders_with_every_table_and_image(rendered):
    tmp, md_path, found = rendered
    md = md_path.read_text()
    # every Markdown table is an HTML table with the same header
    tables = _markdown_tables(md)
    assert len(tables) >= 3
    assert [t["header"] for t in found["tables"]] == tables
    assert all(t["rows"] >= 2 for t in found["tables"])
    # every figure the Markdown links is an image that loaded, at its PNG's size
    links = re.findall(r"!\[(.*?)\]\((.+?)\)", md)
    assert len(links) >= 3 and len(found["images"]) == len(links)
    for (alt, name), img in zip(links, found["images"]):
        assert img["alt"] == alt and img["complete"], img
        assert (img["width"], img["height"]) == _png_size(md_path.parent / name), (name, img)
        assert 0 < img["shown"] <= 1200  # scaled into the page, not cut off
    assert found["page_width"] <= 1280  # no horizontal scrolling at a laptop's width
    assert "beyondsgd report" in found["headings"]
    assert "**" not in md_path.parent.joinpath("report.html").read_text()  # bold rendered


@needs_chromium
def test_report_html_screenshot_shows_text_and_figures(rendered):
    """The whole page as one screenshot (``BEYONDSGD_SCREENSHOT``: also copy it there)."""
    tmp, md_path, found = rendered
    shot = tmp / "report.png"
    height = min(int(found["page_height"]), 16000)
    res = _run_chromium(tmp, f"--screenshot={shot}", f"--window-size=1280,{height}",
                        "--virtual-time-budget=10000", (md_path.parent / "report.html").as_uri())
    assert shot.exists(), f"no screenshot (exit {res.returncode}): {res.stderr[-2000:]}"
    if os.environ.get("BEYONDSGD_SCREENSHOT"):
        shutil.copy(shot, os.environ["BEYONDSGD_SCREENSHOT"])
    assert _png_size(shot) == (1280, height)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    dark = (pixels.mean(axis=2) < 0.5).mean()  # text, table borders, curves
    assert 0.005 < dark < 0.5, dark
    coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 0.3).mean()  # the figures' lines
    assert coloured > 0.001, coloured


# ---- the converter itself (no browser needed) -------------------------------------------
def test_converter_escapes_and_renders_inline_markup():
    assert inline("a <b> & **c** `<d>` *e* [f](g.html)") == (
        'a &lt;b&gt; &amp; <b>c</b> <code>&lt;d&gt;</code> <i>e</i> <a href="g.html">f</a>')
    assert inline("2 * 3 * 4, x_1*y") == "2 * 3 * 4, x_1*y"  # no italics from arithmetic


def test_converter_blocks(tmp_path):
    (tmp_path / "f.png").write_bytes(b"\x89PNG\r\n\x1a\nrest")
    md = "\n".join([
        "# Title", "", "first line", "second line", "", "- one", "- **two**", "",
        "| a | b \\| c |", "|---|---|", "| 1 | <2> |", "", "![fig](f.png)", "![gone](no.png)",
        "", "<details>", "<summary>all *rows*</summary>", "", "text", "</details>", "",
        "```", "x < y", "```"])
    body = markdown_to_html(md, tmp_path, standalone=False).splitlines()
    assert body == [
        "<h1>Title</h1>", "<p>first line second line</p>", "<ul>", "<li>one</li>",
        "<li><b>two</b></li>", "</ul>", "<table>", "<tr><th>a</th><th>b | c</th></tr>",
        "<tr><td>1</td><td>&lt;2&gt;</td></tr>", "</table>",
        '<p><img alt="fig" src="data:image/png;base64,iVBORw0KGgpyZXN0"></p>',
        '<p class="missing">[figure no.png is missing]</p>', "<details>",
        "<summary>all <i>rows</i></summary>", "<p>text</p>", "</details>", "<pre>", "x &lt; y",
        "</pre>"]
    page = markdown_to_html(md, tmp_path, title="T <1>")
    assert page.startswith("<!doctype html>") and "<title>T &lt;1&gt;</title>" in page
    assert page.rstrip().endswith("</body></html>")
