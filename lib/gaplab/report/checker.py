"""Published claims, tested on this machine's rows (the claims file: claims_file.py).

The test `switch_cuts` is about one switch of a server (its subject: `switch=prefix_cache` or
`switch=chunked_prefill`) and reads the workloads study's pairs of servers with that switch on
and off (report.workloads.switch_rows; anything else that differs is named): on holds when it lowers the metric by at least
`threshold` percent (0: by any amount the interval shows) in every pair.

Verdicts: holds here, does not hold here, mixed here (some comparisons each way), undecided
here (the interval spans the threshold or holds no difference), not testable here (with what
it would take). Every verdict carries the figures and intervals behind it. The equivalence
margin decides too (stats.verdict): a claim that a is faster than b does not hold where the
two are the same within the margin, and a threshold claim holds where its interval lies
within the margin of the threshold (the evidence says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as st

from gaplab.analysis import stats
from gaplab.analysis.metrics import number
from gaplab.report.claims_file import matches
from gaplab.storage import run_record

SIXTEEN_BIT = ("F16", "BF16", "F32")  # what "the 16-bit model" may be measured as
GROWTH_SHARE = 0.5  # linear_in_users: the line's rise over the levels, as a share of the value at the most users
VERDICTS = ("holds here", "does not hold here", "mixed here", "undecided here", "not testable here")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    evidence: str
    unlike: tuple[str, ...] = ()  # the like-for-like checks (fairness.CHECKS) its pairs failed


def _unlike(row: dict) -> tuple[tuple[str, ...], str]:
    """A claims row's failed like-for-like checks (names) and the words for its evidence."""
    if row.get("like_for_like") is not False:
        return (), ""
    checks = row["unlike"].split("; ")
    return tuple(c.split(":")[0] for c in checks), f" [not like for like: {row['unlike']}]"


def _iv(x: stats.Interval | None, fmt: str = ".2f", prefix: str = "×") -> str:
    if x is None:
        return "no value"
    if x.lo is None:
        return f"{prefix}{x.estimate:{fmt}} (one trial, no interval)"
    return f"{prefix}{x.estimate:{fmt}} [{x.lo:{fmt}}–{x.hi:{fmt}}]"


def _threshold(text: str, users_ratio: float) -> float:
    return float(text[:-1]) * users_ratio if text.endswith("n") else float(text)


def _oriented(rows: pl.DataFrame, configs_a: set, configs_b: set):
    """The claims-table rows that compare a configuration of subject a with one of subject b, as
    (row, a's config, b's config, whether a was better: True, False (b better, or the two the
    same within the margin), or None for no direction)."""
    for r in rows.iter_rows(named=True):
        same = stats.is_same(r["verdict"])
        if r["a"] in configs_a and r["b"] in configs_b:
            yield r, r["a"], r["b"], False if same else {"A better": True, "B better": False}.get(r["verdict"])
        elif r["b"] in configs_a and r["a"] in configs_b:
            yield r, r["b"], r["a"], False if same else {"B better": True, "A better": False}.get(r["verdict"])


def _faster(claim: dict, claim_rows: pl.DataFrame, configs_a: set, configs_b: set, users: int) -> Verdict:
    """a better than b on the metric at this load, in every measured pair of their configurations."""
    rows = claim_rows.filter((pl.col("kind") == "faster") & (pl.col("metric") == claim["metric"])
                             & (pl.col("users") == users))
    results, unlike = [], set[str]()
    for r, _, _, a_better in _oriented(rows, configs_a, configs_b):
        outcome = {True: "holds", False: "fails", None: "undecided"}[a_better]
        ratio = (f"×{r['ratio']:.2f} [{r['ratio_lo']:.2f}–{r['ratio_hi']:.2f}]" if r["ratio_lo"] is not None
                 else f"×{r['ratio']:.2f} (no interval)")
        same = f": {r['verdict']}" if stats.is_same(r["verdict"]) else ""
        checks, words = _unlike(r)
        unlike.update(checks)
        results.append((outcome, f"{r['a']} ÷ {r['b']} ({r['model']}) {ratio}{same}{words}"))
    if not results:
        return Verdict("not testable here", "no measured pair of these subjects at this load")
    v = _combine(results, f"{metric_text(claim['metric'])} at {users} user{'s' if users > 1 else ''}")
    return Verdict(v.verdict, v.evidence, tuple(sorted(unlike)))


def metric_text(metric: str) -> str:
    from gaplab.report.claims import UNITS
    from gaplab.report.workloads import UNITS as WORKLOAD_UNITS

    return {**WORKLOAD_UNITS, **UNITS, "rss_mb": "server memory (MB, resident)", "cold_start_s": "seconds to the first token",
            "recovery_pct": "task accuracy kept (%)"}.get(metric, metric.replace("_", " "))


def _per_config(trials: pl.DataFrame, configs: set, metric: str) -> dict[str, dict[int, list[float]]]:
    """"config (model, workload)" -> users -> its trials' values of metric."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in trials.filter(pl.col("config").is_in(list(configs))).iter_rows(named=True):
        if r.get(metric) is not None:
            out.setdefault(f"{r['config']} ({r['model']}, {r['workload']})", {}).setdefault(
                r["concurrency"], []).append(r[metric])
    return out


def _against(ratio: stats.Interval, limit: float, at_least: bool, margin: float) -> tuple[str, str]:
    """A threshold claim's outcome from a ratio's interval, and a note when the margin decided
    it: an interval inside [limit/(1+m), limit*(1+m)] is the threshold within the margin, so
    the claim holds even if the interval lies just on the wrong side."""
    if ratio.lo is None or ratio.hi is None:
        return "undecided", ""
    if at_least and ratio.lo >= limit or not at_least and ratio.hi <= limit:
        return "holds", ""
    # as for two configurations, the margin comes before a direction: a miss by less is no miss
    if limit / (1 + margin) <= ratio.lo and ratio.hi <= limit * (1 + margin):
        return "holds", f", the threshold within {margin * 100:g}%"
    if at_least and ratio.hi < limit or not at_least and ratio.lo > limit:
        return "fails", ""
    return "undecided", ""


def _scales(claim: dict, trials: pl.DataFrame, configs: set, margin: float = stats.MARGIN) -> Verdict:
    values = _per_config(trials, configs, claim["metric"])
    results = []
    for name, by_users in values.items():
        if len(by_users) < 2:
            continue
        lo_u, hi_u = min(by_users), max(by_users)
        ratio = stats.ratio_interval(by_users[hi_u], by_users[lo_u])
        limit = _threshold(claim["threshold"], hi_u / lo_u)
        if ratio is None:
            continue
        outcome, note = _against(ratio, limit, claim["test"] == "scales_at_least", margin)
        results.append((outcome, f"{name}: {lo_u}→{hi_u} users {_iv(ratio)} (threshold ×{limit:.2f}{note})"))
    return _combine(results, f"{metric_text(claim['metric'])}, most users ÷ fewest")


def _combine(results: list[tuple[str, str]], what: str) -> Verdict:
    """One verdict from the outcomes ("holds", "fails", "undecided") of each comparison a claim
    covers: holds if all hold, does not hold if none holds and one fails, undecided if all are,
    mixed otherwise."""
    if not results:
        return Verdict("not testable here", f"{what}: no subject measured at two load levels")
    outcomes = {o for o, _ in results}
    if outcomes == {"holds"}:
        verdict = "holds here"
    elif "holds" not in outcomes and "fails" in outcomes:
        verdict = "does not hold here"
    elif outcomes == {"undecided"}:
        verdict = "undecided here"
    else:
        verdict = "mixed here"
    rank = {"fails": 0, "holds": 1, "undecided": 2}  # what decided the verdict first
    results = sorted(results, key=lambda r: rank[r[0]] if verdict == "mixed here" else 0)
    shown = "; ".join(e for _, e in results[:8]) + (f" (and {len(results) - 8} more)" if len(results) > 8 else "")
    return Verdict(verdict, f"{what}: {shown}")


def _linear(claim: dict, trials: pl.DataFrame, configs: set) -> Verdict:
    results = []
    need = float(claim["threshold"] or 0.95)
    for name, by_users in _per_config(trials, configs, claim["metric"]).items():
        if len(by_users) < 3:
            continue
        x = np.array([u for u, vs in by_users.items() for _ in vs], dtype=float)
        y = np.array([v for vs in by_users.values() for v in vs], dtype=float)
        fit = st.linregress(x, y)
        half = float(st.t.ppf(0.975, len(x) - 2)) * fit.stderr
        levels = sorted(by_users)
        means = np.array([np.mean(by_users[u]) for u in levels])
        pred = fit.intercept + fit.slope * np.array(levels, dtype=float)
        r2 = 1 - float(((means - pred) ** 2).sum() / ((means - means.mean()) ** 2).sum())
        # in proportion: a line, rising, whose rise makes up most of the value at the most users
        share = fit.slope * (levels[-1] - levels[0]) / means[-1] if means[-1] else 0.0
        ok = fit.slope - half > 0 and r2 >= need and share >= GROWTH_SHARE
        outcome = "holds" if ok else "fails" if (fit.slope + half < 0 or r2 < need or share < GROWTH_SHARE) \
            else "undecided"
        results.append((outcome, f"{name}: {fit.slope:+,.0f} per user [{fit.slope - half:+,.0f} to "
                                 f"{fit.slope + half:+,.0f}], R² of the means {r2:.3f} (needs {need}), the rise "
                                 f"{share:.0%} of the value at {levels[-1]} users (needs {GROWTH_SHARE:.0%})"))
    return _combine(results, f"{metric_text(claim['metric'])} against users")


def _more_stable(claim: dict, trials: pl.DataFrame, configs_a: set, configs_b: set) -> Verdict:
    def pooled(configs: set) -> stats.Pool | None:
        groups = [v for by_users in _per_config(trials, configs, claim["metric"]).values() for v in by_users.values()]
        return stats.pool(groups)

    pa_, pb = pooled(configs_a), pooled(configs_b)
    if pa_ is None or pb is None:
        return Verdict("not testable here", "a subject has no cell with two trials")
    if pa_.log_sd == 0 or pb.log_sd == 0:  # a spread of exactly zero: nothing to test against
        f = math.inf if pb.log_sd > 0 else 0.0 if pa_.log_sd > 0 else 1.0
    else:
        f = (pb.log_sd / pa_.log_sd) ** 2
    if f > st.f.ppf(0.95, pb.df, pa_.df):
        verdict = "holds here"
    elif f < 1 / st.f.ppf(0.95, pa_.df, pb.df):
        verdict = "does not hold here"
    else:
        verdict = "undecided here"
    return Verdict(verdict, f"{metric_text(claim['metric'])}, trial-to-trial sd pooled over each side's cells: "
                            f"±{pa_.log_sd * 100:.1f}% ({pa_.df} df) against ±{pb.log_sd * 100:.1f}% ({pb.df} df); "
                            f"F = {f:.2f}")


def _starts_slower(claim: dict, starts: pl.DataFrame, cells: pl.DataFrame, margin: float = stats.MARGIN) -> Verdict:
    if starts.is_empty():
        return Verdict("not testable here", "no cold start stored (servers gaplab starts record theirs)")
    slots = cells.group_by("runtime").agg(pl.col("parallel").first())
    s = starts.join(slots, on="runtime", how="left")
    a, b = matches(s, claim["a"]), matches(s, claim["b"])
    if a.is_empty() or b.is_empty():
        return Verdict("not testable here", "a subject started no server here")
    ratio = stats.ratio_interval(a["to_first_token_s"].to_list(), b["to_first_token_s"].to_list())
    if ratio is None:
        return Verdict("not testable here", "a subject stored no positive time to its first token")
    limit = float(claim["threshold"] or 1)
    note = ""
    if ratio.lo is None:
        verdict = "holds here" if ratio.estimate >= limit and min(a["to_first_token_s"]) > max(
            b["to_first_token_s"]) * limit else "undecided here"
    else:
        outcome, note = _against(ratio, limit, True, margin)
        verdict = {"holds": "holds here", "fails": "does not hold here", "undecided": "undecided here"}[outcome]
    return Verdict(verdict, f"seconds from launch to the first token: {number(a['to_first_token_s'].median()):.1f} s "
                            f"({a.height} starts) against {number(b['to_first_token_s'].median()):.1f} s ({b.height} starts), "
                            f"ratio {_iv(ratio)} (threshold ×{limit:g}{note})")


def _recovers(claim: dict, recovery: pl.DataFrame) -> Verdict:
    if "recovery_pct" not in recovery.columns:  # no task accuracy stored for this machine
        return Verdict("not testable here", claim["needs"] or "no task accuracy stored here")
    rows = matches(recovery.with_columns(runtime_kind=pl.lit(""), parallel=pl.lit(None, pl.Int64)), claim["a"])
    rows = rows.filter(pl.col("recovery_pct").is_not_null() & (pl.col("quant") != pl.col("reference"))
                       & pl.col("reference").is_in(SIXTEEN_BIT))
    if rows.is_empty():
        return Verdict("not testable here", claim["needs"] or "no task accuracy of such a file against a 16-bit one")
    ref = recovery.filter(pl.col("quant") == pl.col("reference")).select(
        "model", "runtime", ref_low="acc_low", ref_high="acc_high")
    rows = rows.join(ref, on=["model", "runtime"], how="left")
    need = float(claim["threshold"])
    results = []
    for r in rows.iter_rows(named=True):
        if not r["ref_low"] or r["ref_high"] is None:
            continue
        # both accuracies carry their own interval: the ratio's widest bounds (conservative)
        lo, hi = 100 * r["acc_low"] / r["ref_high"], 100 * r["acc_high"] / r["ref_low"]
        outcome = "holds" if lo >= need else "fails" if hi < need else "undecided"
        results.append((outcome, f"{r['model']} {r['quant']}: {r['recovery_pct']:.1f}% [{lo:.1f}–{hi:.1f}] of "
                                 f"{r['reference']}"))
    return _combine(results, "task accuracy as a share of the reference file's")


def _switch_cuts(claim: dict, workload_trials: pl.DataFrame | None) -> Verdict:
    """The switch on against off, in every pair of the workloads study that differs in it alone:
    the metric lower by at least `threshold` percent (0: lower by any amount)."""
    from gaplab.report import workloads

    switch = claim["a"].removeprefix("switch=")
    if workload_trials is None or workload_trials.is_empty():
        return Verdict("not testable here", f"no workloads study stored here; run a scenario whose runtimes come in "
                                            f"pairs with {switch} on and off (scenarios/workloads-cpu.yaml)")
    flags = {r: run_record.flag_values(f) for r, f in workload_trials.select("runtime", "flags").unique().iter_rows()}
    limit = 1 - float(claim["threshold"]) / 100
    results = []
    for r in (r for r in workloads.switch_rows(workload_trials) if r["metric"] == claim["metric"]):
        on, off = flags[r["a"].split(" · ")[0]], flags[r["b"].split(" · ")[0]]
        if on.get(switch, True) is not True or off.get(switch) is not False:
            continue  # a pair about another switch
        # what else differs is named (vLLM without chunked prefill needs a batch as long as a prompt)
        also = sorted(k for k in set(on) | set(off) if k != switch and on.get(k) != off.get(k))
        if r["ratio_lo"] is None:
            outcome = "undecided"
        elif limit < 1:
            outcome = "holds" if r["ratio_hi"] <= limit else "fails" if r["ratio_lo"] > limit else "undecided"
        else:
            outcome = "fails" if stats.is_same(r["verdict"]) else {"A better": "holds", "B better": "fails"}.get(
                r["verdict"], "undecided")
        results.append((outcome, f"{r['a']} against {r['b']} ({r['workload']}, {r['users']} users) "
                                 f"{_iv(stats.Interval(r['ratio'], r['ratio_lo'], r['ratio_hi'], None, 0))}"
                                 + (f" (the pair also differs in {', '.join(also)})" if also else "")))
    if not results:
        return Verdict("not testable here", f"no pair of servers measured here with {switch} on and off "
                                            f"on a workload compared on {metric_text(claim['metric'])}")
    need = f"at most ×{limit:.2f}" if limit < 1 else "below ×1"
    return _combine(results, f"{metric_text(claim['metric'])}, {switch.replace('_', ' ')} on ÷ off (needs {need})")


def check(claims: pl.DataFrame, trials: pl.DataFrame, starts: pl.DataFrame, recovery: pl.DataFrame,
          workload_trials: pl.DataFrame | None = None, margin: float = stats.MARGIN,
          cells_facts: pl.DataFrame | None = None) -> pl.DataFrame:
    """Each claim with its verdict and the figures behind it.

    trials: metrics.trial_summary rows (with `rss_mb` where telemetry sampled it); starts:
    cold_start.cold_starts; recovery: quality.recovery; workload_trials: report.workloads.trials
    of the workloads study, for switch_cuts. Comparisons between configurations are rows of the
    claims table (claims.claims_table) on the claim's metric; margin: the equivalence margin
    (speed.equivalence_margin); cells_facts: fairness.facts, to gate each compared pair (the
    column like_for_like: "yes", "no: " and the checks some pair failed, or empty where the
    claim compares no two configurations)."""
    from gaplab.report.claims import claims_table
    from gaplab.report.fairness import gate

    cells = trials.select("runtime", "runtime_kind", "parallel", "quant", "config").unique()
    compared: dict[str, pl.DataFrame] = {}
    max_users = int(number(trials["concurrency"].max())) if not trials.is_empty() else 0
    out = []
    for c in claims.iter_rows(named=True):
        if c["test"] == "not_testable":
            v = Verdict("not testable here", f"needs {c['needs']}")
        elif c["users"] and int(c["users"]) > max_users:
            v = Verdict("not testable here", f"needs {c['users']} users; the most measured here is {max_users}"
                        + (f"; {c['needs']}" if c["needs"] else ""))
        else:
            configs_a = set(matches(cells, c["a"])["config"]) if c["a"] and c["test"] != "switch_cuts" else set()
            configs_b = set(matches(cells, c["b"])["config"]) if c["b"] else set()
            if c["test"] == "switch_cuts":
                v = _switch_cuts(c, workload_trials)
            elif c["test"] == "recovers":
                v = _recovers(c, recovery)
            elif c["test"] == "starts_slower":
                v = _starts_slower(c, starts, trials, margin)
            elif not configs_a or (c["b"] and not configs_b):
                v = Verdict("not testable here", "no measured cell matches " + (c["a"] if not configs_a else c["b"]))
            elif c["test"] in ("faster", "leads_from"):
                if c["metric"] not in compared:
                    compared[c["metric"]] = claims_table(trials, (c["metric"],), margin)
                    if cells_facts is not None:
                        compared[c["metric"]] = gate(compared[c["metric"]], cells_facts)
                v = (_faster(c, compared[c["metric"]], configs_a, configs_b, int(c["users"] or 1))
                     if c["test"] == "faster" else _leads_from(c, compared[c["metric"]], configs_a, configs_b))
            elif c["test"] in ("scales_at_least", "scales_at_most"):
                v = _scales(c, trials, configs_a, margin)
            elif c["test"] == "linear_in_users":
                v = _linear(c, trials, configs_a)
            else:
                v = _more_stable(c, trials, configs_a, configs_b)
        gated = cells_facts is not None and c["test"] in ("faster", "leads_from") and v.verdict != "not testable here"
        out.append({**{k: c[k] for k in ("claim_id", "seed_file", "source", "claim", "test")},
                    "verdict": v.verdict, "evidence": v.evidence,
                    "like_for_like": ("no: " + ", ".join(v.unlike) if v.unlike else "yes") if gated else ""})
    return pl.DataFrame(out)


def _leads_from(claim: dict, claim_rows: pl.DataFrame, configs_a: set, configs_b: set) -> Verdict:
    """a is better than b at every measured level from `threshold` users up."""
    limit = int(float(claim["threshold"]))
    rows = claim_rows.filter((pl.col("kind") == "faster") & (pl.col("metric") == claim["metric"]))
    pairs: dict[tuple, dict[int, bool | None]] = {}
    unlike: dict[tuple, set] = {}
    for r, a, b, a_better in _oriented(rows, configs_a, configs_b):
        pairs.setdefault((a, b, r["model"], r["workload"]), {})[r["users"]] = a_better
        unlike.setdefault((a, b, r["model"], r["workload"]), set()).update(_unlike(r)[0])
    results = []
    for (a, b, model, workload), by_users in sorted(pairs.items()):
        levels = sorted(by_users)
        from_ = next((u for u in levels if all(by_users[v] for v in levels if v >= u)), None)
        at_and_above = [by_users[u] for u in levels if u >= limit]
        outcome = "holds" if at_and_above and all(at_and_above) else "fails" if any(
            x is False for x in at_and_above) else "undecided"
        where = f"leads from {from_} users" if from_ is not None else "does not lead at the most users"
        failed = unlike[(a, b, model, workload)]
        results.append((outcome, f"{a} against {b} ({model}): {where}"
                                 + (f" [not like for like: {', '.join(sorted(failed))}]" if failed else "")))
    v = _combine(results, f"{metric_text(claim['metric'])}, from {limit} users up")
    return Verdict(v.verdict, v.evidence, tuple(sorted(set().union(*unlike.values()))))
