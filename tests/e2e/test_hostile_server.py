"""A server that answers in markup cannot script the published report: a hostile
OpenAI-compatible server (tests/support/fault_server.py, hostile mode: its model id, version,
streamed and returned text and error bodies are all HOSTILE) attached as `kind: openai`, run
through `gaplab sweep`, `gaplab capabilities`, `gaplab quality` (task accuracy and agreement
through its API, with a question file whose name and questions are markup too) and
`gaplab report`, with each builder. Every page is loaded in headless Chromium: no script of
the server's ran (the title is the page's own), none of its elements exists in the DOM, and
its text is on the pages as text."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from browser import chromium, draw, serve
from bs4 import BeautifulSoup
from fault_server import HOSTILE, serving

from gaplab.report.site import site_pages

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = "q<img src=x onerror=alert(2)>.jsonl"  # a question file someone else wrote: its name shows too
# pages where the server's words must be readable: its version, its completions, its probe answers
SHOWN_ON = ("notebooks/20-throughput-latency.html", "notebooks/30-quality.html",
            "notebooks/60-what-runtimes-can-do.html")


def quarto() -> str | None:
    """The Quarto CLI the report would use: QUARTO_BIN, one on PATH, or ../shared/tools/quarto."""
    shared = ROOT.parent / "shared" / "tools" / "quarto" / "bin" / "quarto"
    for exe in (os.environ.get("QUARTO_BIN"), shutil.which("quarto"), str(shared) if shared.exists() else None):
        if exe and subprocess.run([exe, "--version"], capture_output=True, timeout=120).returncode == 0:
            return exe
    return None


@pytest.fixture(scope="module")
def hostile_raw(tmp_path_factory, gaplab_cli):
    """The hostile server's rows: two runtimes attached to it (so the quality page compares their
    texts), a sweep, capability probes and quality runs, in a data folder of their own."""
    tmp = tmp_path_factory.mktemp("hostile")
    raw = tmp / "raw"
    questions = tmp / QUESTIONS
    questions.write_text("".join(json.dumps(q) + "\n" for q in (
        {"question": f"What is 2+2? {HOSTILE}", "answer": "4"},
        {"question": "Which letter?", "answer": "B", "choices": [HOSTILE, "b"]})))
    with serving(hostile=True) as url:
        scenario = tmp / "hostile.yaml"
        scenario.write_text(yaml.safe_dump({
            "name": "hostile", "runtimes": [{"name": "hostile-a", "kind": "openai", "base_url": url},
                                            {"name": "hostile-b", "kind": "openai", "base_url": url}],
            "models": [{"name": "hostile-model", "api": "chat", "served_name": HOSTILE, "quants": ["as-served"]}],
            "workloads": [{"name": "p8-o4", "prompt_tokens": 8, "output_tokens": 4}],
            "load": {"concurrency": [1, 2], "requests": 4, "min_seconds": 0, "max_seconds": 10, "warmup": 1,
                     "trials": 1, "max_trials": 1, "precision": 0}}))
        # quality one runtime at a time: two sessions at once in one process can trip over the openai SDK's
        # first use on two threads ("partially initialized module 'httpx'"), which is not this test's subject
        quality = ["quality", "--task-on-all", "--eval", str(questions), "--runtime"]
        for args, says in ((["sweep"], "4 trials in 1 rounds"), (["capabilities"], "probed on 2 servers"),
                           ([*quality, "hostile-a"], "1 task and 1 agreement runs"),
                           ([*quality, "hostile-b"], "1 task and 1 agreement runs")):
            res = subprocess.run([*gaplab_cli, *args, str(scenario), "--data-dir", str(raw)],
                                 capture_output=True, text=True)
            assert res.returncode == 0 and says in res.stdout, res.stdout + res.stderr
    return raw


def report_env(builder: str) -> dict:
    """The environment `gaplab report` runs in: with a Quarto CLI found, or with none at all."""
    env = {k: v for k, v in os.environ.items() if k != "QUARTO_BIN"}
    if builder == "quarto":
        exe = quarto()
        if exe is None:
            pytest.skip("no Quarto CLI: none on PATH or in QUARTO_BIN, and ../shared/tools/quarto/bin/quarto does "
                        "not run (its install.sh sets it up)")
        env["QUARTO_BIN"] = exe
        env["PATH"] = f"{Path(exe).parent}{os.pathsep}{env.get('PATH', '')}"
    else:
        env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                      if d and not (Path(d) / "quarto").exists())
    return env


def page_state(site: Path, rel: str, port: int) -> tuple[str, list, str]:
    """(the title after the page's scripts ran, the server's elements found in the DOM, the
    page's visible text) of one page, as Chromium left it."""
    try:
        dom = chromium(["--virtual-time-budget=10000", "--dump-dom", f"http://127.0.0.1:{port}/{rel}"]).stdout
    except subprocess.TimeoutExpired:  # headless Chromium waits forever on a dialog: alert(1) ran
        pytest.fail(f"{rel}: Chromium never finished the page: a script of the server's opened a dialog")
    soup = BeautifulSoup(dom, "html.parser")
    injected = (soup.find_all("img", src="x") + soup.find_all(attrs={"onerror": True})
                + [s for s in soup.find_all("script") if s.get_text().strip() == 'document.title="PWNED"'])
    title = soup.title.get_text() if soup.title else ""
    for hidden in soup(["script", "style", "head"]):
        hidden.decompose()
    return title, injected, soup.get_text(" ")


@pytest.mark.parametrize("builder", ["nbconvert", "quarto"])
def test_hostile_server_text_stays_text_on_every_page(hostile_raw, builder, gaplab_cli, tmp_path):
    res = subprocess.run([*gaplab_cli, "report", "--data-dir", str(hostile_raw), "--out", str(tmp_path / "site"),
                          "--builder", builder], capture_output=True, text=True, env=report_env(builder))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    built = re.search(r"site built with (\w+): open (\S+)/index\.html", res.stdout)
    assert built and built.group(1) == builder, res.stdout
    site = Path(built.group(2))
    pages = [re.sub(r"[.](qmd|ipynb)$", ".html", src) for src, _ in site_pages()]
    httpd = serve(site)
    try:
        texts = {}
        for rel in pages:
            assert (site / rel).exists(), f"{builder} built no {rel}"
            own = BeautifulSoup((site / rel).read_text(), "html.parser").title.get_text()
            title, injected, texts[rel] = page_state(site, rel, httpd.server_port)
            assert title == own and "PWNED" not in title, f"{rel}: a script of the server's ran: title {title!r}"
            assert not injected, f"{rel}: the server's markup became elements: {injected[:3]}"
        for rel in SHOWN_ON:
            assert HOSTILE in texts[rel], f"{rel}: the server's text is not on the page as text"
        assert Path(QUESTIONS).stem in texts[SHOWN_ON[1]]  # the question file's name, in the quality page's setup
        for rel in (SHOWN_ON[0], SHOWN_ON[2]):  # a chart whose data is markup still draws
            charts, drawn = draw(site, rel, httpd)
            assert charts >= 1 and drawn == charts, f"{rel}: {drawn} of {charts} charts drew"
    finally:
        httpd.shutdown()
