"""The figures "Where the time goes" and "Published claims" draw, printed as text.

    .venv/bin/python bench/explain.py [DATA_DIR] [MACHINE_ID]      (default: data/raw, the page's machine)

Prints, from the same frames the pages use: the decomposition check (server decode time
against the client's span, the unexplained remainder), the waterfalls of the largest stated
gaps, every bandwidth run's figures per device (to compare runs), each cell's share of the
bandwidth bound with its interval and the figure it used, the capability probes with their
evidence and how they compare with the articles' tables, every published claim's verdict
with its evidence, and how far other tools' definitions move the figures. For closing notes
and for reading a sweep without building the site.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.analysis import metrics  # noqa: E402
from gaplab.report import (  # noqa: E402
    capability,
    checker,
    claims,
    claims_file,
    claims_prose,
    cold_start,
    decompose,
    definitions,
    over_time,
    quality,
    roofline,
    speed,
    time_prose,
)

RAW = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "data" / "raw"
machine = speed.pick_machine(RAW, sys.argv[2] if len(sys.argv) > 2 else "")
pl.Config.set_tbl_rows(100)
pl.Config.set_tbl_cols(20)
pl.Config.set_tbl_width_chars(200)

requests = speed.measured_requests(RAW, machine)
trials = metrics.trial_summary(requests)
estimates = speed.estimates(trials)
print(f"{RAW}, machine {machine}: {trials.height} trials, {requests.height} measured requests\n")

print("## Where the time goes")
print(time_prose.decomposition_check(decompose.check(requests)))
parts = decompose.trial_parts(requests, RAW)
for p in decompose.pairs(claims.claims_table(trials)):
    frame = decompose.waterfall(parts, p["model"], p["workload"], p["users"], p["a"], p["b"], p["metric"])
    print("- " + time_prose.waterfall_story(frame))

print("\n## How close to the limit")
bw = roofline.bandwidth(RAW, machine)
roof = roofline.roofline(estimates, requests, RAW, machine)
print(time_prose.roofline_story(roof, bw))
# every bandwidth run, each figure per device and thread count with its repeats, so runs can be compared
for (run_id,), run in roofline.bandwidth_runs(RAW, machine).group_by("run_id", maintain_order=True):
    figures = [f"{roofline.figure_name(r['device'], r['threads_used'])} " + " / ".join(f"{v:.1f}" for v in r["gb_s"])
               + " GB/s" + (f" ({r['method']})" if r["device"] != "cpu" else "") for r in run.iter_rows(named=True)]
    print(f"- bandwidth run {run_id} ({run['measured_at'][0]}): " + "; ".join(figures))
if not roof.is_empty():
    print(roof.select("runtime", "quant", "model", "concurrency", "batch", "bandwidth_source", "gb_s", "weight_mb",
                      "kv_kb_per_token", "context", "bound_tok_s", "decode_tok_s", "pct", "pct_lo", "pct_hi")
          .with_columns(pl.col(pl.Float64).round(1)))

print("\n## What runtimes can do")
found = capability.measured(RAW, machine)
side = capability.beside(found, capability.load_published())
print(capability.story(found, side))
for r in found.iter_rows(named=True):
    print(f"- {r['server']}: {r['capability']}: {r['verdict']} ({r['evidence']})")
print(side.group_by("verdict").len().sort("verdict"))

print("\n## Published claims")
with_rss = trials.join(over_time.rss_mb(RAW, trials["run_id"].to_list()), on="run_id", how="left")
scores, _ = quality.read_quality(RAW, machine)
recovery = (quality.recovery(quality.quality_speed_size(scores, estimates)) if not scores.is_empty()
            else pl.DataFrame())
result = checker.check(claims_file.load_claims(), with_rss, cold_start.cold_starts(RAW, machine), recovery)
print(claims_prose.published_story(result))
for r in result.iter_rows(named=True):
    print(f"- {r['claim_id']} ({r['seed_file'][:3]}) {r['verdict']}: {r['claim']}\n    {r['evidence']}")

print("\n## Whose definition")
print(claims_prose.definitions_story(definitions.shifts(definitions.per_request(requests, RAW))))
