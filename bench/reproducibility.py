"""Do two sweeps of one scenario tell the same story? Compare two data folders.

    .venv/bin/python bench/reproducibility.py DATA_A DATA_B [--machine ID]

Prints, for the cells both hold (same cell key):
- how far their estimates differ (median, p90 and max of |B - A| / A) per headline metric;
- the share of cells whose two 95% intervals overlap, per metric;
- the share of the claims that A states (an interval that excludes parity) which B states
  the same way; a claim that B finds "undecided" or "the same within 5%", or that B lacks,
  counts as a disagreement; the same from B's side; and the disagreements themselves;
- the median ratio B / A per metric, and the overlap once B is divided by it: a machine that
  ran uniformly slower during one sweep (shared hosts do) moves every cell the same way,
  which no interval from one sweep can foresee, while the comparisons within a sweep hold;
- each folder's distribution of interval half-widths on aggregate tok/s, and the other work
  that ran beside its trials (schema 3 runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.analysis import metrics  # noqa: E402
from gaplab.report import claims, speed  # noqa: E402
from gaplab.storage import store


def load(folder: Path, machine: str | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    req = speed.measured_requests(folder, machine)
    if req.is_empty():
        sys.exit(f"reproducibility: {folder} holds no measured requests")
    trials = metrics.trial_summary(req)
    return speed.estimates(trials), claims.claims_table(trials)


def background(folder: Path, machine: str | None) -> str:
    runs = store.read_table(folder, "run")
    if machine:
        runs = runs.filter(pl.col("machine_id") == machine)
    other = sorted(runs["other_cores"].drop_nulls().to_list())
    if not other:
        return "other work beside the trials not recorded (runs before schema 3)"
    return (f"other work beside the trials: median {other[len(other) // 2]:.2f} cores, max {other[-1]:.2f}; "
            f"steal median {runs['steal_cores'].drop_nulls().median():.2f} cores")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def agreement(a: pl.DataFrame, b: pl.DataFrame) -> tuple[int, int, list[str]]:
    said = claims.stated(a).select("claim_id", "statement", "text")
    other = dict(zip(b["claim_id"], zip(b["statement"], b["verdict"])))
    same, lines = 0, []
    for cid, statement, text in said.iter_rows():
        got = other.get(cid)
        if got and got[0] == statement:
            same += 1
        else:
            lines.append(f"  {statement}  <->  {got[0] if got else 'not in the other run'}  [{cid}]")
    return same, said.height, lines


def overlap_share(rows: pl.DataFrame, m: str, scale: float) -> str:
    """How many cells' A interval overlaps B's interval divided by scale."""
    if rows.is_empty():
        return "no intervals"
    hit = rows.filter((pl.col(f"{m}_lo") <= pl.col(f"{m}_hi_b") / scale)
                      & (pl.col(f"{m}_lo_b") / scale <= pl.col(f"{m}_hi"))).height
    return f"{hit}/{rows.height} = {hit / rows.height:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--machine", default=None, help="only this machine's runs (default: all)")
    args = ap.parse_args()
    (ea, ca), (eb, cb) = load(args.a, args.machine), load(args.b, args.machine)
    both = ea.join(eb, on="cell_key", suffix="_b")
    print(f"cells: {ea.height} in A, {eb.height} in B, {both.height} in both")
    print("metric              |B-A|/A: median    p90    max    intervals overlap   B/A median   overlap / that")
    for m in metrics.METRICS:
        rows = both.drop_nulls([m, f"{m}_b"])
        if rows.is_empty():
            continue
        diff = [abs(x - y) / x * 100 for x, y in zip(rows[m], rows[f"{m}_b"]) if x]
        has = rows.drop_nulls([f"{m}_lo", f"{m}_lo_b"])
        shift = pct([y / x for x, y in zip(rows[m], rows[f"{m}_b"]) if x], 0.5)
        print(f"{m:20s} {pct(diff, 0.5):12.1f}% {pct(diff, 0.9):6.1f}% {max(diff):6.1f}%    "
              f"{overlap_share(has, m, 1.0):18s} {shift:9.3f}   {overlap_share(has, m, shift)}")
    for name, x, y in (("A", ca, cb), ("B", cb, ca)):
        same, n, lines = agreement(x, y)
        other = "B" if name == "A" else "A"
        print(f"claims {name} states: {n} of {x.height}; {other} states {same} of them the same way"
              + (f" = {same / n:.1%}" if n else ""))
        for line in lines:
            print(line)
    for name, e in (("A", ea), ("B", eb)):
        h = e["halfwidth_pct"].drop_nulls().to_list()
        if h:
            print(f"{name}: half-width of the 95% interval on aggregate tok/s over {len(h)} cells: median "
                  f"{pct(h, 0.5):.1f}%, p90 {pct(h, 0.9):.1f}%, max {max(h):.1f}%; "
                  f"{sum(x <= 5 for x in h)} cells within 5%; trials per cell {e['trials'].min()} to {e['trials'].max()}")
    for name, folder in (("A", args.a), ("B", args.b)):
        print(f"{name}: {background(folder, args.machine)}")


if __name__ == "__main__":
    main()
