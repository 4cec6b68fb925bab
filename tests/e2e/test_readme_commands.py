"""The README's path on a small matrix: `gaplab sweep` (papermill per trial, real
llama-server, two trials per cell in two rounds), a second sweep that skips measured
cells, `gaplab report --builder nbconvert` (papermill and nbconvert, as on a machine without
Quarto; tests/e2e/test_quarto_site.py renders with Quarto), then
headless Chromium draws the charts from a loopback HTTP server."""

import re
import subprocess

import pytest
import yaml
from browser import chromium, draw, serve

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def swept(llama_ready, tmp_path_factory, gaplab_cli):
    tmp = tmp_path_factory.mktemp("e2e")
    scenario = tmp / "small.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "small", "runtimes": [{"name": "batch4", "kind": "llamacpp", "parallel": 4},
                                      {"name": "single", "kind": "llamacpp", "parallel": 1}],
        "models": [{"name": "smollm2-135m", "api": "chat", "quants": ["Q4_1"]}],
        "workloads": [{"name": "p16-o8", "prompt_tokens": 16, "output_tokens": 8}],
        "load": {"concurrency": [1, 2], "requests": 3, "min_seconds": 0, "warmup": 1, "max_seconds": 30,
                 "trials": 2, "max_trials": 2, "precision": 0, "keep_servers": True}}))
    res = subprocess.run([*gaplab_cli, "sweep", str(scenario), "--data-dir", str(tmp / "raw")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"0 already measured on this machine \(m-\w+\), 4 to run", res.stdout)
    assert "8 trials in 2 rounds" in res.stdout
    assert "WARNING" not in res.stdout + res.stderr and "Traceback" not in res.stdout + res.stderr
    return tmp, scenario


def run_files(tmp):
    return sorted((tmp / "raw").rglob("*.run.parquet"))


def test_second_sweep_skips_and_force_reruns(swept, gaplab_cli):
    tmp, scenario = swept
    assert len(run_files(tmp)) == 8
    again = subprocess.run([*gaplab_cli, "sweep", str(scenario), "--data-dir", str(tmp / "raw")],
                           capture_output=True, text=True)
    assert again.returncode == 0 and re.search(r"4 already measured on this machine \(m-\w+\), 0 to run",
                                               again.stdout)
    assert len(run_files(tmp)) == 8
    listed = subprocess.run([*gaplab_cli, "sweep", str(scenario), "--list", "--data-dir", str(tmp / "raw")],
                            capture_output=True, text=True).stdout
    assert listed.count("done: 2 trials") == 4 and "batch4/smollm2-135m/Q4_1/p16-o8/c2" in listed


def test_past_its_time_budget_a_sweep_stops_at_the_minimum_trials(swept, gaplab_cli):
    tmp, scenario = swept
    doc = yaml.safe_load(scenario.read_text())
    doc["load"].update(trials=1, max_trials=4, precision=0.001, max_sweep_seconds=0.001)
    budget = tmp / "budget.yaml"
    budget.write_text(yaml.safe_dump(doc))
    res = subprocess.run([*gaplab_cli, "sweep", str(budget), "--data-dir", str(tmp / "budget-raw")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 trials in 1 rounds" in res.stdout, res.stdout
    assert "4 capped with their interval wider than 0.1% or a comparison open (4 stopped by the sweep" in res.stdout, res.stdout
    assert re.search(r"Other processes kept a median \d\.\d\d cores busy beside the 4 trials", res.stdout)


def test_report_builds_a_site_whose_charts_draw_offline(swept, gaplab_cli, output_dir):
    tmp, scenario = swept
    site = tmp / "site"
    probed = subprocess.run([*gaplab_cli, "capabilities", str(scenario), "--data-dir", str(tmp / "raw")],
                            capture_output=True, text=True)
    assert probed.returncode == 0 and "capabilities probed on 2 servers" in probed.stdout, probed.stdout + probed.stderr
    res = subprocess.run([*gaplab_cli, "report", "--data-dir", str(tmp / "raw"), "--out", str(site),
                          "--builder", "nbconvert"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "site built with nbconvert" in res.stdout
    assert re.search(r"cells: +4 measured on m-\w+ in 8 trials", res.stdout) and re.search(r"errors: +0", res.stdout)
    page = site / "notebooks" / "20-throughput-latency.html"
    html = page.read_text()
    assert "vega@" not in html and "vega-lite@" not in html  # altair's CDN loaders are not used
    httpd = serve(site)
    try:
        claims_page = (site / "notebooks" / "50-published-claims.html").read_text()
        assert "claims from 5 articles" in claims_page  # the verdicts themselves depend on the data
        assert all(f">c{k:02d}</td>" in claims_page for k in range(1, 23)) and "not testable here" in claims_page
        assert "By definition alone" in claims_page
        can_do = (site / "notebooks" / "60-what-runtimes-can-do.html").read_text()
        assert "batch4 / smollm2-135m / Q4_1</strong> passed" in can_do and "Beside the articles" in can_do
        # a matrix without the workloads study: its page says how to measure it, and draws nothing
        studied = (site / "notebooks" / "70-workloads.html").read_text()
        assert "gaplab sweep scenarios/workloads-cpu.yaml" in studied and 'class="gaplab-chart"' not in studied
        for rel, least in (("notebooks/20-throughput-latency.html", 4), ("index.html", 2),
                           ("notebooks/40-where-the-time-goes.html", 2),
                           ("notebooks/60-what-runtimes-can-do.html", 1)):
            charts, drawn = draw(site, rel, httpd)
            assert charts >= least, f"{rel} holds {charts} charts"
            assert drawn == charts, f"{rel}: {drawn} of {charts} charts drew an SVG"
        shot = output_dir / "throughput-latency.png"
        chromium(["--virtual-time-budget=15000", "--window-size=1300,2400", f"--screenshot={shot}",
                   f"http://127.0.0.1:{httpd.server_port}/notebooks/20-throughput-latency.html"])
        assert shot.exists() and shot.stat().st_size > 20_000
    finally:
        httpd.shutdown()
