import itertools

import polars as pl

from gaplab.analysis import metrics
from gaplab.report import charts, markup


def estimates() -> pl.DataFrame:
    rows = []
    for k, (model, runtime, quant, users) in enumerate(itertools.product(["m1", "m2"], ["batch", "single"],
                                                                         ["F16", "Q4"], [1, 2, 4, 8])):
        row = {"model": model, "runtime": runtime, "quant": quant, "concurrency": users, "trials": 3,
               "requests": 12, "errors": 0, "error_kinds": "", "run_ids": f"r{k}a,r{k}b,r{k}c"}
        for m in metrics.METRICS:
            row.update({m: 10.0 + k, f"{m}_lo": 9.0 + k, f"{m}_hi": 11.0 + k, f"{m}_sd": 0.5})
        rows.append(row)
    rows[0].update({"trials": 1, **{f"{m}_{x}": None for m in metrics.METRICS for x in ("lo", "hi", "sd")}})
    return pl.DataFrame(rows, infer_schema_length=None)


def layers(chart) -> list[dict]:
    return chart.to_dict()["spec"]["layer"]


def test_each_point_carries_its_interval_as_a_bar_and_in_the_tooltip():
    spec = layers(charts.by_concurrency(estimates(), "aggregate_tok_s", "t", "tok/s"))
    rules = [lay for lay in spec if lay["mark"]["type"] == "rule"]
    assert len(rules) == 1
    enc = rules[0]["encoding"]
    assert enc["y"]["field"] == "aggregate_tok_s_lo" and enc["y2"]["field"] == "aggregate_tok_s_hi"
    fields = {t["field"] for t in spec[0]["encoding"]["tooltip"]}
    assert {"interval", "aggregate_tok_s_sd", "trials", "run_ids", "error_kinds"} <= fields
    data = charts.by_concurrency(estimates(), "aggregate_tok_s", "t", "tok/s").to_dict()
    values = next(iter(data["datasets"].values()))
    assert values[0]["interval"] == "1 trial, no interval" and values[1]["interval"] == "10.0 – 12.0"


def test_ttft_chart_gets_bars_for_both_percentiles():
    long = charts.ttft_long(estimates())
    assert long.height == 2 * estimates().height and set(long["percentile"]) == {"p50", "p99"}
    assert {"ttft_ms", "ttft_ms_lo", "ttft_ms_hi", "ttft_ms_sd"} <= set(long.columns)
    assert not any(c.startswith("ttft_p") for c in long.columns)
    rules = [lay for lay in layers(charts.by_concurrency(long, "ttft_ms", "t", "ms", row="percentile"))
             if lay["mark"]["type"] == "rule"]
    assert rules[0]["encoding"]["y2"]["field"] == "ttft_ms_hi"


def test_cold_start_axis_is_logarithmic_and_compact():
    table = pl.DataFrame({"who": ["measured here"] * 2 + ["published"], "label": ["llama", "llama", "vllm gpu"],
                          "phase": ["healthy", "first token", "published cold start"], "seconds": [1.2, 1.5, 180.0],
                          "source": ["gaplab", "gaplab", "x"]})
    spec = charts.cold_start_bars(table).to_dict()
    assert spec["encoding"]["x"]["scale"]["type"] == "log"
    assert spec["height"] <= 14 * 2 * 3


def test_tables_have_no_index_and_intervals_read_as_text():
    est = estimates()
    shown = charts.with_intervals(est, ["aggregate_tok_s"])
    assert shown["aggregate_tok_s"].to_list()[:2] == ["10.0 (1 trial)", "11.0 [10.0–12.0]"]
    lines = markup.table(shown.select("model", "aggregate_tok_s").head(2)).data.splitlines()
    assert lines[0] == "| model | aggregate_tok_s |" and len(lines) == 4  # header, rule, two rows
    assert lines[2].endswith("| 10.0 \\(1 trial\\) |")
