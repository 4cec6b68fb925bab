"""The analyst's loop: `gaplab lab` (what `make lab` runs) serves JupyterLab on a copy of the project,
and headless Chromium, driven by Playwright, opens notebooks/20-throughput-latency.ipynb, runs all
its cells against the committed data in the project's kernel, and finds its charts drawn."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/20-throughput-latency.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, gaplab_cli):
    # a copy: the notebook is run (and could be autosaved) there, never in the clone's own notebooks
    clone = tmp_path_factory.mktemp("lab") / "gaplab"
    for rel in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split():
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    port, token = _free_port(), os.urandom(12).hex()
    jupyter = tmp_path_factory.mktemp("jupyter")
    env = {**os.environ, "GAPLAB_ROOT": str(clone), "JUPYTER_TOKEN": token,
           "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(jupyter / "ws")}
    server = subprocess.Popen([*gaplab_cli, "lab", "--no-browser", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not answer within 120 s"
                time.sleep(0.5)
        yield base, token, clone
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_lab_runs_a_notebook_and_draws_its_charts(lab):
    from playwright.sync_api import sync_playwright

    base, token, clone = lab
    specs = json.load(urllib.request.urlopen(f"{base}/api/kernelspecs?token={token}"))
    assert specs["default"] == "python3"
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is not installed: make test installs Debian's chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            _wait_for_idle_kernel(base, token)
            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item[data-command='runmenu:run-all']")
            charts = page.locator(".jp-OutputArea-output .gaplab-chart svg .role-mark")
            charts.first.wait_for(timeout=300_000)
            # every code cell ran: no cell is left without its execution count, and none failed
            page.wait_for_function("""() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                                          .every(p => /\\[\\d+\\]/.test(p.textContent))""", timeout=300_000)
            assert page.locator("[data-mime-type='application/vnd.jupyter.error']").count() == 0, \
                page.locator(".jp-OutputArea-output").all_inner_texts()[-3:]
            drawn = page.locator(".jp-OutputArea-output .gaplab-chart svg").count()
            assert drawn >= 4, f"{drawn} charts drew"
            assert page.locator(".gaplab-chart:has-text('This chart draws')").count() == 0
        finally:
            browser.close()


def _wait_for_idle_kernel(base: str, token: str) -> None:
    """The notebook's session has a kernel of the project's kernelspec, started and idle."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        sessions = json.load(urllib.request.urlopen(f"{base}/api/sessions?token={token}"))
        if sessions and sessions[0]["kernel"]["execution_state"] == "idle":
            assert [s["kernel"]["name"] for s in sessions] == ["python3"]
            assert sessions[0]["path"] == NOTEBOOK
            return
        time.sleep(0.5)
    raise AssertionError("the notebook's kernel did not start within 120 s")
