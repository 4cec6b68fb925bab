import polars as pl

from gaplab.report import claims


def trials(values: dict) -> pl.DataFrame:
    """values: (runtime, quant, users) -> list of aggregate tok/s per trial (TTFT mirrors it)."""
    rows = []
    for (runtime, quant, users), vals in values.items():
        for t, v in enumerate(vals, 1):
            rows.append({"model": "m", "workload": "w", "runtime": runtime, "runtime_kind": runtime.split("-")[0],
                         "quant": quant, "concurrency": users, "trial": t, "aggregate_tok_s": v,
                         "ttft_p50_ms": 1000 / v})
    return pl.DataFrame(rows)


BATCH_OVERTAKES = {
    ("llamacpp-batch", "Q4", 1): [40, 41, 42], ("llamacpp-single", "Q4", 1): [50, 51, 52],
    ("llamacpp-batch", "Q4", 2): [50, 58, 45], ("llamacpp-single", "Q4", 2): [50, 51, 52],
    ("llamacpp-batch", "Q4", 8): [120, 118, 122], ("llamacpp-single", "Q4", 8): [50, 51, 49],
}


def test_faster_rows_carry_ratio_interval_and_verdict():
    c = claims.claims_table(trials(BATCH_OVERTAKES))
    assert c.columns == claims.COLUMNS
    at8 = c.filter((pl.col("kind") == "faster") & (pl.col("users") == 8) & (pl.col("metric") == "aggregate_tok_s"))
    row = at8.row(0, named=True)
    assert (row["a"], row["b"], row["verdict"]) == ("llamacpp-batch · Q4", "llamacpp-single · Q4", "A better")
    assert row["ratio_lo"] < row["ratio"] < row["ratio_hi"] and row["ratio_lo"] > 1
    at2 = c.filter((pl.col("kind") == "faster") & (pl.col("users") == 2) & (pl.col("metric") == "aggregate_tok_s"))
    assert at2["verdict"].to_list() == ["undecided"]
    assert "undecided" in at2["text"][0]


def test_flip_and_overtake_are_stated_only_where_every_level_supports_them():
    c = claims.claims_table(trials(BATCH_OVERTAKES)).filter(pl.col("metric") == "aggregate_tok_s")
    flips = c.filter(pl.col("kind") == "flips")
    assert flips["statement"].to_list() == ["llamacpp-single · Q4 leads at 1, llamacpp-batch · Q4 at 8"]
    assert "at 1 user **llamacpp-single · Q4** is ahead" in flips["text"][0] and "at 8 users" in flips["text"][0]
    over = c.filter(pl.col("kind") == "overtakes")
    assert over["statement"].to_list() == ["llamacpp-batch · Q4 overtakes llamacpp-single · Q4 at 8 users"]
    noisy = dict(BATCH_OVERTAKES)
    noisy[("llamacpp-batch", "Q4", 1)] = [30, 60, 52]  # 1 user: within noise now
    c = claims.claims_table(trials(noisy)).filter(pl.col("metric") == "aggregate_tok_s")
    assert c.filter(pl.col("kind").is_in(["flips", "overtakes"])).is_empty()


def test_latency_claims_prefer_lower():
    c = claims.claims_table(trials(BATCH_OVERTAKES))
    row = c.filter((pl.col("kind") == "faster") & (pl.col("users") == 8) & (pl.col("metric") == "ttft_p50_ms")).row(
        0, named=True)
    assert row["ratio"] < 1 and row["verdict"] == "A better"


def test_scales_compares_most_users_with_fewest():
    c = claims.claims_table(trials(BATCH_OVERTAKES))
    row = c.filter((pl.col("kind") == "scales") & (pl.col("a") == "llamacpp-batch · Q4")
                   & (pl.col("metric") == "aggregate_tok_s")).row(0, named=True)
    assert (row["users"], row["users_b"], row["verdict"]) == (8, 1, "A better")
    assert abs(row["ratio"] - 120 / 41) < 0.05


def drifting(base_a: float, base_b: float, series: tuple[str, str] = ("20261207T140000Z-aaaaaa",) * 2) -> pl.DataFrame:
    """Two configurations at 4 users over 5 rounds that move together (a shared drift), each
    cell's series started by the sweep named in `series`."""
    drift = [1.0, 1.3, 0.8, 1.15, 0.9]
    noise = [[1.0, 0.99, 1.01, 1.0, 1.005], [1.005, 1.0, 0.99, 1.01, 1.0]]
    rows = []
    for k, (runtime, base) in enumerate((("llamacpp-batch", base_a), ("llamacpp-single", base_b))):
        for t, (d, e) in enumerate(zip(drift, noise[k]), 1):
            v = base * d * e
            rows.append({"model": "m", "workload": "w", "runtime": runtime, "runtime_kind": "llamacpp", "quant": "Q4",
                         "concurrency": 4, "series_id": series[k], "trial": t, "aggregate_tok_s": v,
                         "ttft_p50_ms": 1000 / v})
    return pl.DataFrame(rows)


def faster_row(c: pl.DataFrame) -> dict:
    return c.filter((pl.col("kind") == "faster") & (pl.col("metric") == "aggregate_tok_s")).row(0, named=True)


def test_configurations_measured_in_the_same_rounds_are_compared_paired():
    paired = faster_row(claims.claims_table(drifting(110, 100)))
    assert (paired["interval_method"], paired["verdict"]) == ("paired", "A better")
    assert paired["ratio_lo"] > 1.05
    # the same values from two sweeps: no round in common, so the drift widens the interval
    apart = faster_row(claims.claims_table(drifting(110, 100, ("20261207T140000Z-aaaaaa", "20261207T150000Z-bbbbbb"))))
    assert (apart["interval_method"], apart["verdict"]) == ("unpaired", "undecided")
    assert apart["ratio_hi"] - apart["ratio_lo"] > 5 * (paired["ratio_hi"] - paired["ratio_lo"])
    forced = faster_row(claims.claims_table(drifting(110, 100), paired=False))
    assert forced["interval_method"] == "unpaired" and forced["ratio_lo"] == apart["ratio_lo"]


def test_a_difference_within_the_margin_is_stated_as_the_same():
    row = faster_row(claims.claims_table(drifting(101, 100)))
    assert row["verdict"] == row["statement"] == "the same within 5%"
    assert 1 / 1.05 <= row["ratio_lo"] and row["ratio_hi"] <= 1.05
    assert row["text"].endswith("the same within 5%.")
    assert claims.decided(claims.claims_table(drifting(101, 100))).height == 2  # tok/s and TTFT
    assert claims.stated(claims.claims_table(drifting(101, 100))).is_empty()
    # a margin too narrow for the interval: undecided, since it holds 1
    assert faster_row(claims.claims_table(drifting(101, 100), margin=0.005))["verdict"] == "undecided"


def test_one_cell_makes_an_empty_table_with_the_columns():
    c = claims.claims_table(trials({("llamacpp-batch", "Q4", 1): [40, 41, 42]}))
    assert c.is_empty() and c.columns == claims.COLUMNS
