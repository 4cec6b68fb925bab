"""The measured capability matrix (gaplab.capability.judges's probe runs) beside the feature tables
the articles print by hand (data/reference/capabilities.csv)."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import polars as pl

from gaplab.capability.judges import BROKEN, CAPABILITIES, FAIL, NOT_OFFERED, PASS, UNDECIDED, VERDICTS
from gaplab.report.markup import plain
from gaplab.runtimes import kinds
from gaplab.spec.config import ROOT
from gaplab.storage import store

CAPABILITIES_FILE = ROOT / "data" / "reference" / "capabilities.csv"
COLUMNS = ("seed_file", "source", "runtime", "capability", "says", "words")
KINDS = {name: kind.label for name, kind in kinds().items() if kind.display}  # the runtimes' names, by kind
SAYS = ("yes", "no", "limited")
AGREES = {"yes": {PASS}, "no": {FAIL, NOT_OFFERED}}  # the probe verdicts that agree with each answer
NOT_PROBED = {"speculative decoding": "a draft model or MTP heads, which the small local models lack",
              "OpenAI-compatible parameters": "a list of parameters to try; the probes use a few of them"}


def _probe_runs(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    return (store.read_table(raw_dir, "capability").filter(pl.col("machine_id") == machine_id)
            .with_columns(server=pl.concat_str("runtime", "model", "quant", separator=" / ")))


def measured(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """The newest complete probe run of each server on this machine: one row per capability. A later
    run that could not probe (its server did not start) hides nothing: see `broken`."""
    cap = _probe_runs(raw_dir, machine_id).filter(~pl.col("capability").is_in(BROKEN))
    newest = cap.group_by("cell_key").agg(pl.col("run_id").max())
    return cap.join(newest, on=["cell_key", "run_id"]).sort("runtime", "model", "quant")


def broken(raw_dir: Path, machine_id: str) -> pl.DataFrame:
    """Probe runs that could not probe, newer than their server's newest complete run."""
    cap = _probe_runs(raw_dir, machine_id)
    complete = cap.filter(~pl.col("capability").is_in(BROKEN)).group_by("cell_key").agg(last=pl.col("run_id").max())
    return (cap.filter(pl.col("capability").is_in(BROKEN)).join(complete, on="cell_key", how="left")
            .filter(pl.col("last").is_null() | (pl.col("run_id") > pl.col("last"))).sort("run_id"))


def load_published(path: Path = CAPABILITIES_FILE) -> pl.DataFrame:
    """The articles' feature tables as rows; a file or row that does not fit stops with one line."""
    try:
        frame = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ValueError(f"{path}: cannot be read as CSV ({type(exc).__name__}); columns: {', '.join(COLUMNS)}") \
            from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path.name}: no column {missing[0]!r}; the columns are {', '.join(COLUMNS)}")
    allowed = {"runtime": tuple(KINDS), "says": SAYS, "capability": CAPABILITIES + tuple(NOT_PROBED)}
    for i, row in enumerate(frame.iter_rows(named=True), start=2):  # line 1 is the header
        for field, values in allowed.items():
            if row[field] not in values:
                raise ValueError(f"{path.name}: row {i}: {field} {row[field]!r} is not one of {', '.join(values)}")
    return frame


def beside(found: pl.DataFrame, published: pl.DataFrame) -> pl.DataFrame:
    """One row per article row: what the article says of a runtime, what the probes of that kind of
    runtime found here (each server's verdict), and whether they agree."""
    here = (found.group_by("runtime_kind", "capability")
            .agg(measured=pl.concat_str("runtime", pl.lit(": "), "verdict").sort().str.join("; "),
                 verdicts=pl.col("verdict").unique())
            if not found.is_empty() else
            pl.DataFrame(schema={"runtime_kind": pl.String, "capability": pl.String, "measured": pl.String,
                                 "verdicts": pl.List(pl.String)}))
    rows = []
    joined = published.join(here, left_on=["runtime", "capability"], right_on=["runtime_kind", "capability"],
                            how="left")
    for r in joined.iter_rows(named=True):
        if r["capability"] in NOT_PROBED:
            verdict = f"not probed: it would take {NOT_PROBED[r['capability']]}"
        elif r["measured"] is None:
            verdict = (f"not measured here: no {KINDS[r['runtime']]} runtime was probed (a server attached as "
                       "kind openai is not matched to an article's runtime)")
        elif r["says"] == "limited":
            verdict = "a matter of degree: the throughput page has the figures"
        elif UNDECIDED in r["verdicts"]:
            verdict = "undecided here"
        else:
            verdict = "agrees" if set(r["verdicts"]) <= AGREES[r["says"]] else "differs"
        rows.append({"capability": r["capability"], "runtime": KINDS[r["runtime"]], "article": r["source"],
                     "article says": f"{r['says']}: {r['words']}", "measured here": r["measured"] or "",
                     "verdict": verdict})
    return pl.DataFrame(rows).sort("capability", "runtime", "article")


def matrix_chart(found: pl.DataFrame) -> alt.Chart:
    """Servers across, capabilities down, each cell coloured by its verdict with the evidence on hover."""
    data = found.select("server", "capability", "verdict", "evidence", "request").to_pandas()
    colour = alt.Color("verdict:N", scale=alt.Scale(domain=list(VERDICTS),
                                                    range=["#4c9a6a", "#c8553d", "#b8b8b8", "#e0b040"]),
                       legend=alt.Legend(title="verdict"))
    base = alt.Chart(data).encode(x=alt.X("server:N", title=None, axis=alt.Axis(labelAngle=-20, labelLimit=260)),
                                  y=alt.Y("capability:N", title=None))
    cells = base.mark_rect(stroke="white").encode(color=colour, tooltip=["server", "capability", "verdict",
                                                                         "evidence", "request"])
    return (cells + base.mark_text(fontSize=11).encode(text="verdict:N")).properties(width=alt.Step(170))


def story(found: pl.DataFrame, side: pl.DataFrame, failed: pl.DataFrame | None = None) -> str:
    """The page's opening paragraph: what passed where, where the articles and this machine part,
    and which servers' latest probing could not run (failed: `broken`)."""
    gone = "" if failed is None or failed.is_empty() else " The latest probing of " + "; ".join(
        f"{plain(r['server'])} could not run ({plain(r['evidence'])})" for r in failed.iter_rows(named=True)) + "."
    if found.is_empty():
        return ("No capability probes are stored for this machine: run `gaplab capabilities SCENARIO` "
                "(`make report` does)." + gone)
    lines = []
    for server, rows in found.group_by("server", maintain_order=True):
        verdicts = rows["verdict"].to_list()
        passed = [plain(c) for c in rows.filter(pl.col("verdict") == PASS)["capability"].to_list()]
        lines.append(f"**{plain(server[0])}** passed {len(passed)} of {len(verdicts)} probes"
                     + (f" ({', '.join(passed)})" if passed else ""))
    text = "; ".join(lines) + "."
    differs = side.filter(pl.col("verdict") == "differs")
    if not differs.is_empty():
        text += (" Where this machine and an article part (each server as launched: the evidence says whether a "
                 "flag or the model's chat template decides it): " + "; ".join(
                     f"{plain(r['article'])} says {plain(r['runtime'])} {plain(r['capability'])}: "
                     f"{plain(r['article says'].split(':')[0])}, here {plain(r['measured here'])}"
                     for r in differs.iter_rows(named=True)) + ".")
    return text + gone
