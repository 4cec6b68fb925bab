"""Cost per million output tokens: only from a price the user gives, with the throughput's interval."""

import polars as pl
import pytest
from typer.testing import CliRunner

from gaplab.report import cost


def test_prices_parse_or_are_refused_in_one_line():
    assert cost.parse_prices("") is None and cost.parse_prices("2.5") == 2.5
    assert cost.parse_prices("hw-a=2.5, hw-b=0.8") == {"hw-a": 2.5, "hw-b": 0.8}
    for bad in ("-3", "0", "free", "hw-a=abc", "nan"):
        with pytest.raises(ValueError, match="price_per_hour: .* is not a positive number"):
            cost.parse_prices(bad)


def estimates():
    return pl.DataFrame({"hardware_id": ["hw"] * 3, "model": ["m"] * 3, "workload": ["w"] * 3, "config": ["x · Q4"] * 3,
                         "cell_key": ["k1", "k2", "k3"], "concurrency": [1, 4, 8],
                         "aggregate_tok_s": [100.0, 300.0, 400.0], "aggregate_tok_s_lo": [90.0, 280.0, 380.0],
                         "aggregate_tok_s_hi": [110.0, 320.0, 420.0], "ttft_p99_ms": [100.0, 400.0, 900.0],
                         "ttft_p99_ms_hi": [120.0, 450.0, 1100.0]})


def test_cost_is_price_over_throughput_with_its_interval_and_the_best_load_meets_the_target():
    t = cost.cost_table(estimates(), 3.6, slo_ttft_p99_ms=1000)
    first = t.row(0, named=True)
    assert first["usd_per_mtok"] == pytest.approx(3.6 / (100 * 3600) * 1e6)  # $10 per million at 100 tok/s
    assert first["usd_lo"] == pytest.approx(3.6 / (110 * 3600) * 1e6) and first["usd_hi"] > first["usd_per_mtok"]
    assert t["meets_slo"].to_list() == [True, True, False]  # 8 users: p99 up to 1.1 s
    assert t["best_within_slo"].to_list() == [False, True, False]
    assert cost.cost_table(estimates(), None).is_empty()
    assert cost.cost_table(estimates(), {"other-hw": 2.0}).is_empty()  # no price for this machine


def test_the_report_command_refuses_a_bad_price_in_one_line(tmp_path):
    from gaplab.cli import app

    res = CliRunner().invoke(app, ["report", "--data-dir", str(tmp_path), "--price-per-hour", "-2"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "price_per_hour: '-2' is not a positive number" in lines[0], lines
