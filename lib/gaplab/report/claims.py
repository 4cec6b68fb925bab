"""Claims as data: every comparative sentence the site prints is first a row of this table,
computed from the trials, and the prose is rendered from the rows.

One row per claim (columns in order):
- claim_id     stable key: kind|model|workload|metric|a|b|users (the same comparison in two
               data folders has the same id, so runs can be checked against each other)
- kind         faster: a vs b at one load level; scales: one config at the most users vs at
               the fewest (b); flips: the leader at the fewest users differs from the leader
               at the most; overtakes: the lowest level where a leads after b led below it
- model, workload, metric (an metrics.METRICS name), users (load level of a), users_b (of b)
- a, b         the subjects, "runtime · quant"; across_kinds: a and b are different kinds of
               server (vLLM against llama.cpp, say), not two configurations of one
- value_a, value_b   the estimates (mean over trials)
- ratio, ratio_lo, ratio_hi   a / b and its 95% interval: paired (stats.paired_ratio_interval)
               where a and b have trials in 2 or more of the same sweep rounds (metrics.with_round),
               from those rounds alone; else unpaired (stats.ratio_interval, with each runtime's
               pooled trial-to-trial spread)
- interval_method   "paired" | "unpaired": which of the two the interval is
- trials_a, trials_b
- verdict      "A better" | "B better" (the interval excludes 1) | "the same within 5%" (it lies
               inside the equivalence margin, stats.MARGIN or the scenario's
               load.equivalence_margin: a finding too) | "undecided" (it straddles the margin) |
               "no interval" (a side has one trial); better means higher tok/s, lower latency
- statement    what the row asserts, in a canonical form two runs can compare: the verdict
               for faster and scales, "<a> leads at N, <b> at M" for flips, "<a> overtakes
               <b> at N users" for overtakes
- text         the sentence the site prints, in Markdown (names escaped: markup.plain)
flips and overtakes rows exist only where every level they rely on has a directional verdict.
"""

from __future__ import annotations

import itertools

import polars as pl

from gaplab.analysis import stats
from gaplab.analysis.metrics import HIGHER_IS_BETTER, with_round
from gaplab.report.markup import plain

COLUMNS = ["claim_id", "kind", "model", "workload", "metric", "users", "users_b", "a", "b", "across_kinds", "value_a", "value_b",
           "ratio", "ratio_lo", "ratio_hi", "interval_method", "trials_a", "trials_b", "verdict", "statement", "text"]
STATED = stats.DIRECTIONS
UNITS = {"aggregate_tok_s": "output tok/s (all users)", "per_user_tok_s": "decode tok/s per user",
         "ttft_p50_ms": "median TTFT", "ttft_p99_ms": "p99 TTFT", "e2e_p50_ms": "median E2E latency",
         "itl_mean_ms": "inter-token latency"}
# The comparisons the pages print: throughput and the first token's wait.
COMPARED = ("aggregate_tok_s", "ttft_p50_ms")


def users_text(n: int) -> str:
    return f"{n} user" if n == 1 else f"{n} users"


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


def _ratio_text(r: dict) -> str:
    if r["ratio_lo"] is None:
        return f"×{r['ratio']:.2f} (1 trial, no interval)"
    return f"×{r['ratio']:.2f} [{r['ratio_lo']:.2f}–{r['ratio_hi']:.2f}]"


def _same_rounds(va: list, vb: list, rounds_a: list | None, rounds_b: list | None) -> tuple[list, list] | None:
    """a's and b's values of the rounds both have, in pairs, if there are 2 or more."""
    if not rounds_a or not rounds_b:
        return None
    by_round = {r: v for r, v in zip(rounds_b, vb) if v is not None}
    pairs = [(v, by_round[r]) for r, v in zip(rounds_a, va) if v is not None and r in by_round]
    return ([x for x, _ in pairs], [y for _, y in pairs]) if len(pairs) >= 2 else None


def compare(kind: str, model: str, workload: str, metric: str, a: str, b: str, users: int, users_b: int,
            va: list, vb: list, pa, pb, higher_is_better: bool, across: bool = False,
            rounds: tuple[list, list] | None = None, margin: float = stats.MARGIN,
            round_pools: tuple[stats.Pool | None, stats.Pool | None] = (None, None), level: float = stats.LEVEL) -> dict:
    """A claims row but its text: a's and b's trial values (pa, pb: their runtimes' pooled
    spreads) as estimates, their ratio with its interval, and the verdict within `margin`.
    rounds: the sweep round of each of a's and b's values; where 2 or more are shared the
    ratio's interval is paired (round_pools: the runtimes' spreads with the drift taken out). level: of
    the intervals (the sweep's stopping rule decides at a stricter one than the report states)."""
    ia, ib = stats.mean_interval(va, pa, level), stats.mean_interval(vb, pb, level)
    paired = _same_rounds(va, vb, *rounds) if rounds else None
    ratio = (stats.paired_ratio_interval(*paired, *round_pools, level=level) if paired
             else stats.ratio_interval(va, vb, pa, pb, level=level))
    if ia is None or ib is None or ratio is None:  # every value of a side is null, zero or not finite
        raise ValueError(f"{kind} {metric} of {model}: {a} or {b} has no positive value to compare")
    verdict = stats.verdict(ratio, higher_is_better, margin)
    return {"claim_id": f"{kind}|{model}|{workload}|{metric}|{a}|{b}|{users}", "kind": kind, "model": model,
            "workload": workload, "metric": metric, "users": users, "users_b": users_b, "a": a, "b": b,
            "across_kinds": across, "value_a": ia.estimate, "value_b": ib.estimate, "ratio": ratio.estimate,
            "ratio_lo": ratio.lo, "ratio_hi": ratio.hi, "interval_method": "paired" if paired else "unpaired",
            "trials_a": ia.n, "trials_b": ib.n, "verdict": verdict, "statement": verdict}


def _row(kind: str, model: str, workload: str, metric: str, a: str, b: str, users: int, users_b: int,
         va: list, vb: list, across: bool = False, pools: tuple[dict, dict] = ({}, {}),
         rounds: tuple[list, list] | None = None, margin: float = stats.MARGIN, level: float = stats.LEVEL) -> dict:
    """pools: (runtime, metric) -> its pooled spread, without and with the rounds' drift taken out."""
    pa, pb = (pools[0].get((x.split(" · ")[0], metric)) for x in (a, b))
    ra, rb = (pools[1].get((x.split(" · ")[0], metric)) for x in (a, b))
    row = compare(kind, model, workload, metric, a, b, users, users_b, va, vb, pa, pb, HIGHER_IS_BETTER[metric], across,
                  rounds, margin, (ra, rb), level)
    verdict, value_a, value_b = row["verdict"], row["value_a"], row["value_b"]
    what, a_md, b_md = UNITS[metric], plain(a), plain(b)
    if kind == "faster":
        lead = {"A better": f"**{a_md}** is ahead", "B better": f"**{b_md}** is ahead",
                "no interval": "one trial each, no verdict"}.get(verdict, verdict)
        row["text"] = (f"At {users_text(users)}, {what}: {a_md} {_fmt(value_a)} vs {b_md} {_fmt(value_b)}, "
                       f"{_ratio_text(row)}: {lead}.")
    else:  # scales
        change = {"A better": "better with more users", "B better": "worse with more users",
                  stats.UNDECIDED: "undecided whether better or worse with more users",
                  "no interval": "one trial a side, no verdict"}.get(verdict, f"{verdict} with more users")
        row["text"] = (f"{a_md}: {what} {_fmt(value_b)} at {users_text(users_b)}, {_fmt(value_a)} at {users_text(users)} "
                       f"({_ratio_text(row)}): {change}.")
    return row


def claims_table(trials: pl.DataFrame, compared: tuple[str, ...] = COMPARED,
                 margin: float = stats.MARGIN, paired: bool = True, level: float = stats.LEVEL) -> pl.DataFrame:
    """All claims for the trials of one machine (metrics.trial_summary rows), on the `compared`
    metrics (the site states aggregate tok/s and TTFT; the claims checker asks for others),
    with `margin` the equivalence margin of their verdicts; paired False takes every interval
    unpaired (bench/paired_gain.py measures what pairing gains); level: of the intervals."""
    empty = pl.DataFrame(schema={c: pl.String for c in COLUMNS})
    if trials.is_empty():
        return empty
    trials = with_round(trials)
    values: dict[tuple, dict[str, list]] = {}
    rounds: dict[tuple, list] = {}
    for r in trials.iter_rows(named=True):
        key = (r["model"], r["workload"], f"{r['runtime']} · {r['quant']}", r["concurrency"])
        rounds.setdefault(key, []).append(r["round"])
        for m in compared:
            values.setdefault(key, {}).setdefault(m, []).append(r[m])
    kinds = dict(zip(trials["runtime"], trials["runtime_kind"]))
    per_cell = trials.with_columns(cell=pl.concat_str("model", "workload", "runtime", "quant", "concurrency"))
    pools = {(rt, m): stats.pool([c[m].to_list() for _, c in g.group_by("cell")])
             for (rt,), g in per_cell.group_by("runtime") for m in compared}
    round_pools = {(rt, m): stats.round_pool([dict(zip(c["round"], c[m])) for _, c in g.group_by("cell")])
                   for (rt,), g in per_cell.group_by("runtime") for m in compared}
    rows = []
    for (model, workload), keys in itertools.groupby(sorted(values), key=lambda k: k[:2]):
        group = list(keys)
        configs = sorted({k[2] for k in group})
        levels = sorted({k[3] for k in group})
        for metric in compared:
            for a, b in itertools.combinations(configs, 2):
                ra, rb = a.split(" · ")[0], b.split(" · ")[0]
                same_quant = a.split(" · ")[1] == b.split(" · ")[1]
                if not (same_quant or kinds.get(ra) != kinds.get(rb)):
                    continue  # quant against quant on one runtime is the quality page's question
                pair = []
                for users in levels:
                    ka, kb = (model, workload, a, users), (model, workload, b, users)
                    if ka in values and kb in values:
                        pair.append(_row("faster", model, workload, metric, a, b, users, users,
                                         values[ka][metric], values[kb][metric], kinds.get(ra) != kinds.get(rb),
                                         (pools, round_pools), (rounds[ka], rounds[kb]) if paired else None, margin,
                                         level))
                rows += pair + _derived(pair)
            for c in configs:
                have = [u for u in levels if (model, workload, c, u) in values]
                if len(have) >= 2:
                    lo, hi = (model, workload, c, have[0]), (model, workload, c, have[-1])
                    rows.append(_row("scales", model, workload, metric, c, c, have[-1], have[0],
                                     values[hi][metric], values[lo][metric], pools=(pools, round_pools),
                                     rounds=(rounds[hi], rounds[lo]) if paired else None, margin=margin,
                                     level=level))
    if not rows:  # one config at one level: nothing to compare
        return empty
    return pl.DataFrame(rows, schema_overrides={"ratio_lo": pl.Float64, "ratio_hi": pl.Float64,
                                                "interval_method": pl.String},
                        infer_schema_length=None).select(COLUMNS)


def _derived(pair: list[dict]) -> list[dict]:
    """flips and overtakes rows from one pair's faster rows (ordered by load)."""
    if len(pair) < 2:
        return []
    out = []
    first, last = pair[0], pair[-1]
    lead = {"A better": "a", "B better": "b"}
    if first["verdict"] in STATED and last["verdict"] in STATED and first["verdict"] != last["verdict"]:
        at_lo, at_hi = first[lead[first["verdict"]]], last[lead[last["verdict"]]]
        out.append({**last, "kind": "flips", "claim_id": last["claim_id"].replace("faster|", "flips|", 1),
                    "users_b": first["users"], "statement": f"{at_lo} leads at {first['users']}, {at_hi} at {last['users']}",
                    "text": (f"The ranking flips: at {users_text(first['users'])} **{plain(at_lo)}** is ahead "
                             f"({_ratio_text(first)} {plain(first['a'])} ÷ {plain(first['b'])}), at "
                             f"{users_text(last['users'])} **{plain(at_hi)}** ({_ratio_text(last)}).")})
    for who, other in (("A better", "B better"), ("B better", "A better")):
        behind = [r for r in pair if r["verdict"] == other]
        if not behind:
            continue
        ahead = [r for r in pair if r["verdict"] == who and r["users"] > behind[0]["users"]]
        if ahead:
            r = ahead[0]
            below = [x for x in behind if x["users"] < r["users"]][-1]
            winner, loser = (r["a"], r["b"]) if who == "A better" else (r["b"], r["a"])
            out.append({**r, "kind": "overtakes", "claim_id": r["claim_id"].replace("faster|", "overtakes|", 1)
                        .rsplit("|", 1)[0] + f"|{winner}", "users_b": below["users"],
                        "statement": f"{winner} overtakes {loser} at {r['users']} users",
                        "text": (f"**{plain(winner)}** overtakes {plain(loser)} at {users_text(r['users'])} "
                                 f"({_ratio_text(r)} {plain(r['a'])} ÷ {plain(r['b'])}); at "
                                 f"{users_text(below['users'])} {plain(loser)} was ahead ({_ratio_text(below)}).")})
    return out


def stated(claims: pl.DataFrame) -> pl.DataFrame:
    """The claims whose interval supports a direction."""
    return claims.filter(pl.col("verdict").is_in(STATED))


def decided(claims: pl.DataFrame) -> pl.DataFrame:
    """The claims that state a finding: a direction, or the same within the margin."""
    return claims.filter(pl.col("verdict").is_in(STATED) | pl.col("verdict").str.starts_with(stats.SAME))


def render(claims: pl.DataFrame, kind: str, metric: str | None = None, model: str | None = None,
           users: int | None = None, only_stated: bool = False) -> str:
    """Markdown bullets, one per claim row that matches."""
    rows = claims.filter(pl.col("kind") == kind)
    for col, val in (("metric", metric), ("model", model), ("users", users)):
        if val is not None:
            rows = rows.filter(pl.col(col) == val)
    if only_stated:
        rows = stated(rows)
    return "\n".join(f"- {t}" for t in rows["text"].to_list())
