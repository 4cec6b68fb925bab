"""What a million output tokens cost at each load, from a price per hour of the machine.

Nothing is priced unless the user gives a price (the throughput page's `price_per_hour`
parameter): gaplab invents no prices. The cost of a cell is price / (aggregate tok/s x
3600) x 1e6, with the interval of its throughput carried over (a higher throughput bound is
a lower cost bound). With a TTFT p99 target, each configuration's best load is the one with
the most throughput whose whole TTFT p99 interval meets the target.
"""

from __future__ import annotations

import polars as pl


def parse_prices(text: str) -> dict[str, float] | float | None:
    """'' -> None; '2.5' -> 2.5 (the page's machine); 'hw-a=2.5, hw-b=0.8' -> per hardware id.
    Anything not a positive number is refused with one line naming the parameter."""
    text = (text or "").strip()
    if not text:
        return None

    def number(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            v = float("nan")
        if not v > 0:
            raise ValueError(f"price_per_hour: {s.strip()!r} is not a positive number of dollars per hour "
                             f"(write 2.5, or hardware_id=2.5 pairs separated by commas)")
        return v

    if "=" not in text:
        return number(text)
    out = {}
    for pair in text.split(","):
        hw, _, price = pair.partition("=")
        out[hw.strip()] = number(price)
    return out


def cost_table(estimates: pl.DataFrame, prices: dict[str, float] | float | None,
               slo_ttft_p99_ms: float = 0) -> pl.DataFrame:
    """Per cell: dollars per million output tokens with its interval, and whether it is its
    configuration's best load within the TTFT p99 target (when one is given)."""
    if prices is None or estimates.is_empty():
        return pl.DataFrame()
    price = (pl.lit(float(prices)) if isinstance(prices, float)
             else pl.col("hardware_id").replace_strict(prices, default=None, return_dtype=pl.Float64))
    per_mtok = lambda tok_s: price / (tok_s * 3600) * 1e6  # noqa: E731
    frame = (estimates.with_columns(price_per_hour=price)
             .filter(pl.col("price_per_hour").is_not_null())
             .with_columns(usd_per_mtok=per_mtok(pl.col("aggregate_tok_s")),
                           usd_lo=per_mtok(pl.col("aggregate_tok_s_hi")),
                           # an interval reaching down to 0 tok/s has no upper cost
                           usd_hi=pl.when(pl.col("aggregate_tok_s_lo") > 0).then(per_mtok(pl.col("aggregate_tok_s_lo")))))
    if slo_ttft_p99_ms <= 0:
        return frame.with_columns(meets_slo=pl.lit(None, pl.Boolean), best_within_slo=pl.lit(False))
    meets = pl.col("ttft_p99_ms_hi") <= slo_ttft_p99_ms  # a cell of one trial has no interval: not shown to meet
    frame = frame.with_columns(meets_slo=meets)
    best = (frame.filter(pl.col("meets_slo")).sort("aggregate_tok_s", descending=True)
            .group_by("model", "workload", "config").agg(pl.col("cell_key").first()))
    return frame.with_columns(best_within_slo=pl.col("cell_key").is_in(best["cell_key"].to_list()))
