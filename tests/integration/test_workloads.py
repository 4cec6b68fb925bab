"""The workloads study against a real llama-server on SmolLM2-135M Q8_0 (`make test` provisions
it): an open-loop cell run by `gaplab run` keeps its seeded schedule, the prefix cache shows in
the server's own prompt count, and a long-prompt mix stores what it asked for beside what the
server saw. One scenario, four cells, one trial each, stored in tmp_path."""

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from browser import draw, serve

from gaplab.measure.loadgen import arrival_offsets, open_loop_count
from gaplab.measure.trial import TrialPlan, run_trial
from gaplab.report import speed, workloads
from gaplab.spec.scenario import load_scenario
from gaplab.storage import run_record, store

pytestmark = pytest.mark.slow

MODEL = {"name": "smollm2-135m", "api": "chat", "quants": ["Q8_0"]}
RATE = 4.0
PREFIX, SUFFIX = 256, 16
SHORT, LONG = 32, 384
# A request sent a whole response late is the defect; a core kept busy by another process
# delays sends by a few ms, so 200 ms catches it with room.
LATE_MS = 200
# What the chat template adds to a prompt (SmolLM2's default system message and the role
# markers: about 30 tokens)
TEMPLATE_TOKENS = 40

LLAMA = {"kind": "llamacpp", "parallel": 4, "threads": 1, "ctx_size": 4096}
SCENARIO = {
    "name": "workloads-test",
    "runtimes": [{"name": "llamacpp", **LLAMA, "workloads": ["open", "shared", "mix"]},
                 {"name": "llamacpp-nocache", **LLAMA, "prefix_cache": False, "workloads": ["shared"]}],
    "models": [MODEL],
    "workloads": [
        {"name": "open", "kind": "fixed", "prompt_tokens": 16, "output_tokens": 16, "rates": [RATE]},
        {"name": "shared", "kind": "shared-prefix", "prefix_tokens": PREFIX, "suffix_tokens": SUFFIX,
         "output_tokens": 4, "concurrency": [1]},
        {"name": "mix", "kind": "long-prompt-mix", "short_prompt_tokens": SHORT, "long_prompt_tokens": LONG,
         "long_every": 2, "output_tokens": 4, "concurrency": [2]},
    ],
    "load": {"concurrency": [1], "requests": 6, "min_seconds": 2, "max_seconds": 30, "warmup": 1, "trials": 1,
             "max_trials": 1},
}


@pytest.fixture(scope="module")
def measured(llama_ready, gaplab_cli, tmp_path_factory):
    """Every cell measured once: the open-loop one by `gaplab run`, the others by run_trial."""
    if not llama_ready.model_path(MODEL["name"], "Q8_0").exists():
        pytest.fail("SmolLM2 Q8_0 is not provisioned: run 'make test' (or '.venv/bin/gaplab local setup "
                    "--model smollm2-135m --quant Q8_0 --runtime llamacpp')")
    tmp = tmp_path_factory.mktemp("workloads")
    path, raw = tmp / "scenario.yaml", tmp / "raw"
    path.write_text(yaml.safe_dump(SCENARIO))
    cells = {c.cell_id: c for c in load_scenario(path).cells()}
    assert len(cells) == 4
    for cell_id, cell in cells.items():
        if cell.rate is not None:
            res = subprocess.run([*gaplab_cli, "run", str(path), "--cell", cell_id, "--data-dir", str(raw)],
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stderr[-2000:]
            summary = json.loads(res.stdout.strip().splitlines()[-1])
            # measured by the measure notebook, left executed where the sweep leaves its trials'
            cells_run = {c["id"]: c for c in json.loads(Path(summary["notebook"]).read_text())["cells"]}
            assert cells_run["10-02"]["outputs"], summary
        else:
            summary = run_trial(TrialPlan(scenario=path, cell_id=cell_id, data_dir=str(raw)), progress=False)
        assert summary["status"] == "complete" and summary["errors"] == 0, summary
    return raw, {c.workload.name + ("-nocache" if not c.runtime.prefix_cache else ""): c for c in cells.values()}


def rows_of(raw, cell):
    return store.read_table(raw, "requests").filter(pl.col("cell_key") == cell.cell_key).sort("request_index")


def test_an_open_loop_cell_keeps_its_seeded_schedule(measured):
    raw, cells = measured
    cell = cells["open"]
    req = rows_of(raw, cell)
    warm, rows = req.filter(pl.col("warmup")), req.filter(~pl.col("warmup"))
    assert warm.height == 1 and warm["request_index"].to_list() == [0]
    load = cell.load
    n = open_loop_count(RATE, load.requests, load.min_seconds, load.max_seconds)
    assert rows.height == n and rows["request_index"].to_list() == list(range(1, n + 1))
    assert rows["error"].null_count() == n
    # the schedule `gaplab run` drew: the cell's seed, salted with its key and the trial
    offsets = arrival_offsets(RATE, n, load.arrival, f"{cell.seed}:{cell.cell_key}:1", load.burstiness)
    due = rows["scheduled_ns"].to_list()
    assert all(b > a for a, b in zip(due, due[1:]))
    assert [d - due[0] for d in due] == [int(o * 1e9) - int(offsets[0] * 1e9) for o in offsets]
    assert set(rows["rate"]) == {RATE} and req["concurrency"].null_count() == req.height
    assert set(rows["workload_kind"]) == {"fixed"} and set(rows["tag"]) == {"fixed"}
    lag_ms = (rows["sent_ns"] - rows["scheduled_ns"]) / 1e6
    assert lag_ms.min() >= 0 and np.percentile(lag_ms.to_numpy(), 99) < LATE_MS, lag_ms.to_list()
    # the page reads it as a workloads-study trial that offered the drawn rate
    trial = workloads.trials(speed.measured_requests(raw, study="workloads"), workloads.run_settings(raw))
    row = trial.filter(pl.col("cell_key") == cell.cell_key).row(0, named=True)
    assert row["requests"] == n and row["offered_rps"] == pytest.approx((n - 1) / (offsets[-1] - offsets[0]))
    assert row["rate"] == RATE and row["concurrency"] is None
    assert speed.measured_requests(raw, study="matrix").filter(pl.col("cell_key") == cell.cell_key).is_empty()


def test_the_prefix_cache_shows_in_the_servers_own_prompt_count(measured):
    raw, cells = measured
    trial = workloads.trials(speed.measured_requests(raw, study="workloads"), workloads.run_settings(raw))
    computed = {}
    for name in ("shared", "shared-nocache"):
        rows = rows_of(raw, cells[name]).filter(~pl.col("warmup"))
        assert rows.height >= 2 and set(rows["tag"]) == {"shared"}
        assert set(rows["target_prompt_tokens"]) == {PREFIX + SUFFIX}
        computed[name] = trial.filter(pl.col("cell_key") == cells[name].cell_key)["prompt_computed"][0]
        print(f"\n{name}: server computed {computed[name]:.2f} of the prompt tokens it saw")
    assert computed["shared"] < 0.7  # the 256-token prefix was found in the cache
    assert computed["shared-nocache"] > 0.9  # cache_prompt false: every prompt computed whole
    # the two runtimes differ in one flag, and the run says which
    flags = {run_record.flag_values(r["flags"]).get("prefix_cache", True)
             for r in trial.filter(pl.col("workload") == "shared").iter_rows(named=True)}
    assert flags == {True, False}


def test_a_long_prompt_mix_stores_each_requests_class_and_the_length_asked(measured):
    raw, cells = measured
    rows = rows_of(raw, cells["mix"])
    assert rows["error"].null_count() == rows.height and rows.filter(~pl.col("warmup")).height >= 2
    for r in rows.iter_rows(named=True):
        long_ = r["request_index"] % 2 == 0  # long_every: 2
        assert r["tag"] == ("long" if long_ else "short")
        target = LONG if long_ else SHORT
        assert r["target_prompt_tokens"] == target
        assert abs(r["prompt_tokens"] - target) <= 0.3 * target + TEMPLATE_TOKENS, r
    measured_tags = set(rows.filter(~pl.col("warmup"))["tag"])
    assert measured_tags == {"long", "short"}
    trial = workloads.trials(speed.measured_requests(raw, study="workloads"), workloads.run_settings(raw))
    row = trial.filter(pl.col("cell_key") == cells["mix"].cell_key).row(0, named=True)
    assert row["short_ttft_p50_ms"] > 0 and row["long_ttft_p50_ms"] > 0
    assert row["prompt_seen"] == pytest.approx(
        rows.filter(~pl.col("warmup"))["prompt_tokens"].sum() / rows.filter(~pl.col("warmup"))["target_prompt_tokens"].sum())


def test_the_site_draws_the_workloads_page_from_these_runs_alone(measured, gaplab_cli, tmp_path):
    # a store holding only the workloads study: every page builds, and this one draws its charts
    raw, _ = measured
    site = tmp_path / "site"
    res = subprocess.run([*gaplab_cli, "report", "--data-dir", str(raw), "--out", str(site), "--builder", "nbconvert"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert re.search(r"workloads: +4 cells in 4 trials", res.stdout) and re.search(r"cells: +0 measured", res.stdout), \
        res.stdout
    html = (site / "notebooks" / "70-workloads.html").read_text()
    # one trial per cell: figures are printed, no verdict is
    assert f"{RATE:g} req/s one trial, no verdict" in html and "(prefix cache off)" in html
    assert "no verdict" in html and "is better" not in html
    httpd = serve(site)
    try:
        charts, drawn = draw(site, "notebooks/70-workloads.html", httpd)
    finally:
        httpd.shutdown()
    assert charts == 2 and drawn == 2  # the rate sweep and the cache on/off pair (the mix has no pair)
