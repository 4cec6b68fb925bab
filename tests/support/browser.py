"""Headless Chromium on a site folder served over loopback: what the site tests draw pages with."""

import functools
import http.server
import shutil
import subprocess
import tempfile
import threading

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def serve(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def chromium(args):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed: make test installs Debian's chromium"
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def draw(site, rel: str, httpd) -> tuple[int, int]:
    """(charts the page holds, charts Chromium drew as SVG with marks) for one page of a served site;
    a chart that fell back to its no-Vega text counts as not drawn."""
    import re

    charts = (site / rel).read_text().count('class="gaplab-chart"')
    dom = chromium(["--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{httpd.server_port}/{rel}"]).stdout
    drawn = re.findall(r'id="gaplab-chart-\d+"[^>]*>\s*<svg', dom)
    ok = dom.count("role-mark") >= len(drawn) and '">This chart draws' not in dom
    return charts, len(drawn) if ok else 0
