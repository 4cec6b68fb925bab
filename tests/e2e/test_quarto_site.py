"""The site published as its users publish it, with the real Quarto CLI: in a copy of the project's
tracked files (a git repository of its own), `make setup`'s _environment.local, then `quarto render`
with the venv not activated, against the committed data. Then `gaplab report` renders again with
Quarto (and says so) from the freezer, git status is clean, every page exists, every chart draws in
headless Chromium, every navbar link resolves, search finds a runtime by name, and a page that
fails ends `gaplab report` in one line naming it.

Quarto: ../shared/tools/quarto (its install.sh runs first; it skips what is installed), else a
quarto on PATH; without either the test is skipped, saying so."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser import chromium, draw, serve

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SHARED_QUARTO = ROOT.parent / "shared" / "tools" / "quarto"
VENV = Path(sys.executable).parent.parent


@pytest.fixture(scope="module")
def quarto() -> str:
    if (SHARED_QUARTO / "install.sh").exists():
        res = subprocess.run([str(SHARED_QUARTO / "install.sh")], capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        return str(SHARED_QUARTO / "bin" / "quarto")
    if not shutil.which("quarto"):
        pytest.skip("no Quarto CLI: neither ../shared/tools/quarto nor quarto on PATH (https://quarto.org)")
    return shutil.which("quarto")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def _bare_env() -> dict:
    """The environment of a shell where the venv is not activated."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "QUARTO_PYTHON", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != VENV / "bin")
    return env


@pytest.fixture(scope="module")
def published(quarto, tmp_path_factory, gaplab_cli):
    clone = tmp_path_factory.mktemp("quarto") / "gaplab"
    for rel in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split():
        if (ROOT / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, clone / rel)
    _git(clone, "init", "-q")
    _git(clone, "add", "-A")
    _git(clone, "commit", "-qm", "clone")
    env = {**_bare_env(), "GAPLAB_ROOT": str(clone)}
    # make setup's rule, with this venv taken as it is (-o: never reinstalled from the copy)
    subprocess.run(["make", "-o", f"{VENV}/bin/gaplab", "_environment.local", f"VENV={VENV}"], cwd=clone, env=env,
                   check=True, capture_output=True)
    assert (clone / "_environment.local").read_text().strip() == f"QUARTO_PYTHON={VENV}/bin/python"
    first = subprocess.run([quarto, "render"], cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-4000:]
    assert "WARN" not in log and "Traceback" not in log, log
    again = subprocess.run([*gaplab_cli, "report"], cwd=clone, env={**env, "QUARTO_BIN": quarto},
                           capture_output=True, text=True, timeout=1200)
    return clone, log, again


def test_a_render_leaves_the_clone_clean_and_a_second_one_is_frozen(published):
    clone, log, again = published
    assert _git(clone, "status", "--porcelain") == "", "quarto render wrote into tracked files"
    assert log.count("Executing '") >= 6  # every notebook page ran once
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "site built with quarto" in again.stdout and "nbconvert" not in again.stdout
    assert "Executing '" not in again.stdout, "unchanged data and notebooks were executed again"
    assert _git(clone, "status", "--porcelain") == ""


def test_every_page_exists_and_every_chart_draws(published):
    from gaplab.report.site import site_pages

    clone, _, _ = published
    site = clone / "_site"
    pages = [re.sub(r"[.]qmd$", ".html", src) for src, _ in site_pages(clone)]
    assert len(pages) >= 8 and not [p for p in pages if not (site / p).exists()]
    assert not list(site.rglob("*.ipynb")), "the site ships notebooks instead of linking pages"
    httpd = serve(site)
    try:
        total = 0
        for rel in pages:
            if 'class="gaplab-chart"' not in (site / rel).read_text():
                continue
            charts, drawn = draw(site, rel, httpd)
            assert drawn == charts, f"{rel}: {drawn} of {charts} charts drew an SVG"
            total += charts
        assert total >= 10
        for rel, least in (("index.html", 2), ("notebooks/20-throughput-latency.html", 4)):
            assert (site / rel).read_text().count('class="gaplab-chart"') >= least, rel
    finally:
        httpd.shutdown()


def test_every_navbar_link_resolves_to_a_page(published):
    from gaplab.report.site import site_pages

    clone, _, _ = published
    site = clone / "_site"
    wanted = {re.sub(r"[.]qmd$", ".html", src) for src, _ in site_pages(clone)}
    for page in wanted:
        header = re.search(r'<header id="quarto-header".*?</header>', (site / page).read_text(), re.S).group(0)
        hrefs = re.findall(r'<a class="(?:nav-link|dropdown-item)[^"]*" href="([^"#?]+)', header)
        targets = {(site / page).parent.joinpath(h).resolve() for h in hrefs}
        assert {t for t in targets if not t.is_file()} == set(), page
        assert {t.relative_to(site.resolve()).as_posix() for t in targets} >= wanted, page


def test_search_finds_a_runtime_by_name(published):
    clone, _, _ = published
    site = clone / "_site"
    runtime = yaml.safe_load((clone / "scenarios" / "local-cpu.yaml").read_text())["runtimes"][0]["name"]
    httpd = serve(site)
    try:
        def results(query):
            dom = chromium(["--virtual-time-budget=15000", "--dump-dom",
                            f"http://127.0.0.1:{httpd.server_port}/index.html?q={query}&show-results=1"]).stdout
            return re.findall(r'<a href="([^"?#]+)[^"]*" class="search-result-link"', dom)
        found = results(runtime)
        assert found and all((site / h).is_file() for h in found), (runtime, found)
        assert results("zqxjv-no-such-word") == []
    finally:
        httpd.shutdown()


def test_quarto_parameters_reach_the_page(published, quarto):
    clone, _, _ = published
    page = clone / "_site" / "notebooks" / "20-throughput-latency.html"
    assert "No price given" in page.read_text()
    res = subprocess.run([quarto, "render", "notebooks/20-throughput-latency.qmd", "-P", "price_per_hour:2.5"],
                         cwd=clone, env={**_bare_env(), "GAPLAB_ROOT": str(clone)}, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    html = page.read_text()
    assert "No price given" not in html and "per million output tokens" in html


def test_a_page_that_fails_ends_the_report_in_one_line(published, quarto, gaplab_cli):
    import json

    clone, _, _ = published
    nb_path = clone / "notebooks" / "60-what-runtimes-can-do.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                        "source": ["raise ValueError('a broken cell')"]})
    nb_path.write_text(json.dumps(nb))
    try:
        res = subprocess.run([*gaplab_cli, "report"], cwd=clone,
                             env={**_bare_env(), "GAPLAB_ROOT": str(clone), "QUARTO_BIN": quarto},
                             capture_output=True, text=True, timeout=1200)
    finally:
        _git(clone, "checkout", "--", str(nb_path.relative_to(clone)))
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()
    assert len(last) == 1 and "notebooks/60-what-runtimes-can-do.qmd" in last[0] and "a broken cell" in last[0], \
        res.stderr
    assert "Traceback (most recent call last)" not in res.stderr
