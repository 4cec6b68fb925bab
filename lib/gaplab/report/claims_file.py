"""The claims file: data/reference/claims.csv, read and checked (report.checker tests it).

data/reference/claims.csv holds the claims the seed articles make, one per row, in our own
words: which article, what is claimed, the test that decides it here, its subjects, metric,
load level and threshold, and for a claim gaplab cannot test here what it would take.

Subjects are selectors over the measured cells, since the articles' "Ollama" and "vLLM" are
roles here: `kind=vllm`, `kind=llamacpp;slots=1` (a single-slot llama.cpp server, the
stand-in for a single-stream server), `slots>1` (any batching server), `quant=Q8_0`,
`runtime=<name>`; `;` joins conditions, `|` gives alternatives (the first that matches a
measured cell is used, so `kind=ollama;slots=1|kind=llamacpp;slots=1` takes a real Ollama
where there is one). A claim that names Ollama has `kind=ollama` alone: without an Ollama
server it is not testable, never tested on a stand-in. Users: 1, a number, or empty (every
level, or the fewest and the most).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gaplab.analysis.metrics import METRICS
from gaplab.spec.config import REFERENCE_DIR

CLAIMS_FILE = REFERENCE_DIR / "claims.csv"
COLUMNS = ["claim_id", "seed_file", "source", "claim", "test", "a", "b", "metric", "users", "threshold", "needs"]
TESTS = ("faster", "leads_from", "scales_at_least", "scales_at_most", "linear_in_users", "more_stable",
         "starts_slower", "recovers", "switch_cuts", "not_testable")
SWITCHES = ("prefix_cache", "chunked_prefill")  # the launch switches switch_cuts can name
EXTRA_METRICS = ("rss_mb", "cold_start_s", "recovery_pct")
FIELDS = ("kind", "slots", "quant", "runtime")
THRESHOLD_NEEDED = ("scales_at_least", "scales_at_most", "leads_from", "recovers", "switch_cuts")


class ClaimsError(ValueError):
    """A claims file row that cannot be tested as written."""


def _check_selector(where: str, text: str) -> None:
    for alt in text.split("|"):
        for cond in alt.split(";"):
            field = cond.replace(">", "=").split("=")[0].strip()
            if field not in FIELDS or ("=" not in cond and ">" not in cond):
                raise ClaimsError(f"{where}: {cond!r} is not a condition; write field=value or slots>1 "
                                  f"with field one of {', '.join(FIELDS)}")


def _check_switch(where: str, r: dict) -> None:
    from gaplab.report.workloads import COMPARED

    switch = r["a"].removeprefix("switch=")
    if not r["a"].startswith("switch=") or switch not in SWITCHES:
        raise ClaimsError(f"{where}: a: {r['a']!r}: the test switch_cuts needs switch=NAME with NAME one of "
                          f"{', '.join(SWITCHES)}")
    compared = sorted({m for ms in COMPARED.values() for m in ms if m.endswith("_ms")})
    if r["metric"] not in compared:
        raise ClaimsError(f"{where}: metric: {r['metric']!r}: the workloads study compares switches on "
                          f"{', '.join(compared)}")
    try:
        float(r["threshold"])
    except ValueError:
        raise ClaimsError(f"{where}: threshold: {r['threshold']!r} is not a percentage (40 for 40% lower)") from None


def load_claims(path: Path | None = None) -> pl.DataFrame:
    """The claims file (default: CLAIMS_FILE), checked: a row naming an unknown test, metric,
    subject field or load level stops here with one line naming the file, row and field."""
    path = path or CLAIMS_FILE
    frame = pl.read_csv(path, infer_schema=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ClaimsError(f"{path}: the header lacks {', '.join(missing)}")
    frame = frame.with_columns(pl.col(c).fill_null("") for c in COLUMNS)
    for k, r in enumerate(frame.iter_rows(named=True), 2):  # row 1 is the header
        where = f"{path} row {k}"
        if r["test"] not in TESTS:
            raise ClaimsError(f"{where}: test: {r['test']!r} is not one of {', '.join(TESTS)}")
        if r["test"] == "not_testable":
            if not r["needs"]:
                raise ClaimsError(f"{where}: needs: say what it would take to test this claim")
            continue
        if not r["a"]:
            raise ClaimsError(f"{where}: a: the claim needs a subject")
        if r["test"] == "switch_cuts":
            _check_switch(where, r)
            continue
        if r["metric"] not in METRICS + list(EXTRA_METRICS):
            raise ClaimsError(f"{where}: metric: {r['metric']!r} is not one of {', '.join(METRICS + list(EXTRA_METRICS))}")
        for col in ("a", "b"):
            if r[col]:
                _check_selector(f"{where}: {col}", r[col])
        if r["users"] and not r["users"].isdigit():
            raise ClaimsError(f"{where}: users: {r['users']!r} is not a number of users (or empty)")
        if r["test"] in THRESHOLD_NEEDED and not r["threshold"]:
            raise ClaimsError(f"{where}: threshold: the test {r['test']} needs one")
        if r["threshold"]:
            try:
                float(r["threshold"].removesuffix("n"))
            except ValueError:
                raise ClaimsError(f"{where}: threshold: {r['threshold']!r} is not a number "
                                  f"(a trailing n means times the users)") from None
    return frame


def matches(cells: pl.DataFrame, selector: str) -> pl.DataFrame:
    """The cells (rows with runtime_kind, parallel, quant, runtime) the selector picks: its first
    alternative that picks any."""
    for alt in selector.split("|"):
        expr = pl.lit(True)
        for cond in alt.split(";"):
            if ">" in cond:
                field, value = cond.split(">")
                expr &= pl.col("parallel") > int(value)
                continue
            field, value = (s.strip() for s in cond.split("="))
            col = {"kind": "runtime_kind", "slots": "parallel", "quant": "quant", "runtime": "runtime"}[field]
            expr &= (pl.col(col) == int(value)) if field == "slots" else (pl.col(col) == value)
        picked = cells.filter(expr)
        if not picked.is_empty():
            return picked
    return cells.clear()
