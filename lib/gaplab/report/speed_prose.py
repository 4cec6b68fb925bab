"""The throughput and latency page's sentences, rendered from the claims table (claims.py)
and the per-cell estimates (speed.estimates): no comparison is written here that is not a
claim row first, and each carries its interval. Also where and how the figures were
measured, our scaling beside published figures, and where Ollama placed a model."""

from __future__ import annotations

import json

import polars as pl

from gaplab.analysis.metrics import number
from gaplab.report import claims as cl
from gaplab.report.markup import code, plain


def _iv(row: dict, m: str, digits: int = 1) -> str:
    if row.get(f"{m}_lo") is None:
        return f"{row[m]:.{digits}f} (1 trial)"
    return f"{row[m]:.{digits}f} [{row[f'{m}_lo']:.{digits}f}–{row[f'{m}_hi']:.{digits}f}]"


def throughput_story(claims: pl.DataFrame, estimates: pl.DataFrame) -> str:
    """Per model: the comparisons at the most users, flips and overtakes, and how each scales."""
    if estimates.is_empty():
        return "No measured cells yet: run `make report` or `gaplab sweep`."
    hi = int(number(estimates["concurrency"].max()))
    out = []
    for model in estimates["model"].unique(maintain_order=True).to_list():
        parts = [f"**{plain(model)}**, total output tok/s:",
                 cl.render(claims, "faster", "aggregate_tok_s", model, users=hi),
                 cl.render(claims, "flips", "aggregate_tok_s", model),
                 cl.render(claims, "overtakes", "aggregate_tok_s", model),
                 cl.render(claims, "scales", "aggregate_tok_s", model)]
        # a blank line before the bullets: pandoc (Quarto) reads a list only after one
        out.append(parts[0] + "\n\n" + "\n".join(p for p in parts[1:] if p))
    return "\n\n".join(out) + ("\n\nA ranking, flip or crossing is stated only where the 95% interval of the "
                               "ratio excludes 1 at every level it relies on. Two configurations are the same "
                               "within the margin where the whole interval lies inside the equivalence margin, "
                               "and undecided where it reaches past it; each comes with its interval.")


def per_user_story(estimates: pl.DataFrame) -> str:
    """How much decode speed one user keeps as others join, with intervals."""
    if estimates.is_empty():
        return ""
    lo = int(number(estimates["concurrency"].min()))
    out = []
    for key, cell in estimates.group_by(["model", "runtime", "quant"], maintain_order=True):
        cell = cell.sort("concurrency")
        first = cell.row(0, named=True)
        if first["concurrency"] != lo or first["per_user_tok_s"] is None:
            continue
        steps = [f"{_iv(r, 'per_user_tok_s')} at {r['concurrency']} ({r['per_user_tok_s'] / first['per_user_tok_s']:.0%})"
                 for r in cell.iter_rows(named=True) if r["concurrency"] > lo and r["per_user_tok_s"] is not None]
        out.append(f"- {plain(key[0])} {plain(key[2])} on {plain(key[1])}: {_iv(first, 'per_user_tok_s')} tok/s per user alone; "
                   + "; ".join(steps) + ".")
    return ("Decode speed seen by one user once its first token arrived (95% interval over trials). Where the "
            "server has a slot for every user, all of them advance in the same steps, so the drop shows what "
            "one shared step costs against a lone user's.\n\n" + "\n".join(out))


def ttft_story(claims: pl.DataFrame, estimates: pl.DataFrame) -> str:
    """Waiting for the first token: how it grows with users (scales claims on median TTFT) and
    who waits less at the most users."""
    if estimates.is_empty():
        return ""
    hi = int(number(estimates["concurrency"].max()))
    grow = cl.render(claims, "scales", "ttft_p50_ms")
    faster = cl.render(claims, "faster", "ttft_p50_ms", users=hi, only_stated=True)
    return ("How the median wait for the first token changes from the fewest users to the most "
            "(lower is better):\n\n" + grow + (f"\n\nAt {hi} users, where the interval separates them:\n\n" + faster
                                               if faster else "")
            + "\n\nA server with fewer slots than users makes the others wait for whole responses; one with "
              "a slot per user makes them share each decode step, so a first token waits only for the others' "
              "prompts.")


def runtime_story(claims: pl.DataFrame) -> str:
    """Runtime against runtime (different kinds of server on the same model): every level."""
    kinds = claims.filter(pl.col("kind").is_in(["faster", "overtakes", "flips"])
                          & (pl.col("metric") == "aggregate_tok_s"))
    if kinds.is_empty():
        return ""
    different = kinds.filter(pl.col("across_kinds"))
    if different.is_empty():
        return ""
    lines = [cl.render(different, k) for k in ("overtakes", "flips", "faster")]
    return "Total output tok/s, server against server on the same model:\n\n" + "\n".join(x for x in lines if x)


def precision_story(estimates: pl.DataFrame, precision: float | None) -> str:
    """How precise the cells are, which were capped, and the errors by kind."""
    if estimates.is_empty():
        return ""
    halves = estimates["halfwidth_pct"].drop_nulls()
    text = (f"{estimates.height} cells, {int(estimates['trials'].sum())} trials. ")
    if halves.len():
        text += (f"The 95% interval of aggregate tok/s is within ±{number(halves.median()):.1f}% of the estimate for the "
                 f"median cell (best {number(halves.min()):.1f}%, worst {number(halves.max()):.1f}%).")
    one = estimates.filter(pl.col("trials") == 1)
    if one.height:
        text += f" {one.height} cells have 1 trial and no interval."
    if precision:
        wide = estimates.filter(pl.col("halfwidth_pct") > precision * 100)
        if wide.height:
            text += (f"\n\nCells that stopped at the trial or time cap before reaching ±{precision:.0%}: "
                     + ", ".join(f"{plain(r['runtime'])} · {plain(r['model'])} {plain(r['quant'])} at "
                                 f"{cl.users_text(r['concurrency'])} (±{r['halfwidth_pct']:.1f}%)"
                                 for r in wide.iter_rows(named=True)) + ".")
    errs = estimates.filter(pl.col("errors") > 0)
    if errs.height:
        text += ("\n\nCells with failed requests (never counted in throughput or latency): "
                 + "; ".join(f"{plain(r['runtime'])} · {plain(r['model'])} {plain(r['quant'])} at "
                             f"{cl.users_text(r['concurrency'])}: {r['errors']} ({plain(r['error_kinds'])})"
                             for r in errs.iter_rows(named=True)) + ".")
    else:
        text += " No request failed."
    return text


def background_story(other_cores: list[float]) -> str:
    """One sentence on the other work that ran beside the trials (telemetry.background)."""
    from gaplab.measure.telemetry import CONTENDED_CORES

    v = sorted(other_cores)
    if not v:
        return ""
    text = (f"Other processes kept a median {v[len(v) // 2]:.2f} cores busy beside the {len(v)} trials "
            f"(max {v[-1]:.2f})")
    busy = sum(x > CONTENDED_CORES for x in v)
    if not busy:
        return text + ": the machine was otherwise quiet."
    return (text + f"; {busy} trial(s) shared the machine with more than {CONTENDED_CORES} cores of other work, "
            f"so their cells may read slower than this machine runs them: measure again on a quiet machine "
            f"(`make report FORCE=1`).")


def setup_story(all_runs: pl.DataFrame, machine_id: str, summary: pl.DataFrame) -> str:
    """Where, when and how the figures were measured, and which other machines the store holds.
    all_runs: the store's runs, every machine's (speed.runs)."""
    from gaplab.machine.hardware import machine_id as this_machine

    runs = all_runs.filter(pl.col("machine_id") == machine_id)
    if runs.is_empty():
        return f"No complete runs for machine {code(machine_id)} yet: run `make report` or `gaplab sweep`."
    r = runs.sort("run_id").row(-1, named=True)
    versions = ", ".join(plain(v) for v in sorted(runs["runtime_version"].unique().to_list()))
    derived = runs.filter(pl.col("model_note").str.starts_with("requantized"))["quant"].unique().sort().to_list()
    whose = ("this machine" if machine_id == this_machine() else
             "another machine (reference runs: not measured where this report was built)")
    trials = summary["trials"] if "trials" in summary.columns else pl.Series([1])
    text = (f"Measured on {whose}, {code(machine_id)} of class {code(r['hardware_id'])}: {plain(r['cpu_model'])}, "
            f"{plain(r['cpu_cores'])} cores, {plain(r['memory_gib'])} GiB, between {plain(runs['started_at'].min())} and "
            f"{plain(runs['finished_at'].max())}. {summary.height} cells, {int(trials.sum())} trials "
            f"({int(number(trials.min()))} to {int(number(trials.max()))} per cell), {int(summary['requests'].sum())} measured "
            f"requests, {int(summary['errors'].sum())} errors. Runtime: {versions}.")
    if int(number(trials.max())) == 1:
        text += " Each cell was measured once: 1 trial, no interval."
    background = runs["other_cores"].drop_nulls().to_list()  # speed trials only: quality runs have none
    if background:
        text += " " + background_story(background)
    if derived:
        text += (f" The {', '.join(map(plain, derived))} files were made on this machine with llama-quantize from the "
                 f"4-bit files that ship on PyPI, so they cannot be more faithful than those 4-bit files; "
                 f"their speed is real, their quality is not the original model's.")
    others = (all_runs.filter(pl.col("machine_id") != machine_id).group_by("machine_id", "hardware_id")
              .agg(pl.col("cell_key").n_unique().alias("cells"), pl.col("started_at").min().alias("start"),
                   pl.col("finished_at").max().alias("end")).sort("machine_id"))
    for o in others.iter_rows(named=True):
        text += (f"\n\nThe store also holds reference runs of machine {code(o['machine_id'])} (class "
                 f"{code(o['hardware_id'])}): {o['cells']} cells measured between {plain(o['start'])} and "
                 f"{plain(o['end'])}; "
                 f"set the page's `machine_id` parameter to show them.")
    return text


def scaling_story(table: pl.DataFrame) -> str:
    ours = table.filter(pl.col("who") == "measured here")
    pub = table.filter(pl.col("who") == "published")
    if ours.is_empty() or pub.is_empty():
        return ""
    best_pub, worst_pub = pub.row(0, named=True), pub.row(-1, named=True)
    parts = []
    for rt in ours["runtime"].unique(maintain_order=True):
        r = ours.filter(pl.col("runtime") == rt)
        parts.append(f"{plain(rt)} ×{number(r['scaling'].min()):.2f} to ×{number(r['scaling'].max()):.2f}")
    return (f"Going from one user to many multiplies total throughput by "
            f"×{best_pub['scaling']:.1f} for {plain(best_pub['runtime'])} {plain(best_pub['quant'])} on "
            f"{plain(best_pub['hardware'])} ({best_pub['users']} users, {plain(best_pub['source'])}) but only "
            f"×{worst_pub['scaling']:.2f} for {plain(worst_pub['runtime'])} {plain(worst_pub['quant'])} on "
            f"{plain(worst_pub['hardware'])}. "
            f"Here, from 1 to {number(ours['users'].max())} users: " + "; ".join(parts) + ". "
            "Adding users multiplies throughput only when one decode step serves many sequences for "
            "little more than the cost of one: true while the step is bound by reading the weights "
            "from memory, as on a GPU at small batch sizes; the cost of a batched step on this machine "
            "is in the per-user section above.")


def placement_story(runs: pl.DataFrame, machine_id: str | None = None) -> str:
    """Plain words for every cell whose model was not wholly in GPU memory (Ollama's /api/ps).
    runs: the store's runs (speed.runs)."""
    from gaplab.runtimes.ollama import describe, where

    if machine_id:
        runs = runs.filter(pl.col("machine_id") == machine_id)
    lines: dict[tuple[str, int], str] = {}  # one line a cell
    on_cpu: set[str] = set()
    for row in runs.sort("cell_id").iter_rows(named=True):
        size, vram = row["model_bytes_loaded"], row["model_bytes_gpu"]
        if size is None and (row["schema_version"] or 1) < 4:  # older runs: only in meta_json
            after = (json.loads(row["meta_json"]).get("ollama_placement") or {}).get("after") or {}
            size, vram = after.get("size"), after.get("size_vram")
        if not size:
            continue
        after = where(size, vram or 0)
        where_ = f"**{plain(row['model'])} {plain(row['quant'])} on {plain(row['runtime'])}**"
        meta = json.loads(row["meta_json"] or "{}")
        no_gpu = not (meta.get("hardware") or {}).get("gpus") and not (row["launch_command"] or "").startswith("attached")
        if after["cpu_only"] and no_gpu:  # a server started here, on a machine with no GPU to miss
            on_cpu.add(plain(row["runtime"]))
        elif after["split"] or after["cpu_only"]:  # one line a cell, however many trials
            lines.setdefault((where_, row["concurrency"]), f"- {where_} at {cl.users_text(row['concurrency'])}: the "
                                                            f"model was {describe(after)}. Its speed is not the GPU's.")
    text = ("Cells where Ollama did not hold the whole model in GPU memory:\n\n" + "\n".join(lines.values())
            if lines else "")
    if on_cpu:
        text += (("\n\n" if text else "") + f"Ollama ({', '.join(sorted(on_cpu))}) held every model on the CPU, "
                 "by its own account (/api/ps), as a machine without a GPU must.")
    return text


def cost_story(table: pl.DataFrame, slo_ttft_p99_ms: float) -> str:
    """The cheapest configuration per model, at its best load within the target when one is given."""
    if table.is_empty():
        return ("No price given: set the page's `price_per_hour` parameter (dollars per hour of this machine) "
                "to see what a million output tokens cost at each load.")
    rows = table.filter(pl.col("best_within_slo")) if slo_ttft_p99_ms > 0 else table
    if rows.is_empty():
        return f"No configuration meets a TTFT p99 of {slo_ttft_p99_ms:g} ms within its interval at any load measured."
    out = []
    for (model,), g in rows.group_by("model", maintain_order=True):
        r = g.sort("usd_per_mtok").row(0, named=True)
        iv = (f"[{r['usd_lo']:,.2f}–{r['usd_hi']:,.2f}]" if r["usd_lo"] is not None and r["usd_hi"] is not None
              else "(no interval)")
        out.append(f"for {plain(model)}, {plain(r['config'])} at {cl.users_text(r['concurrency'])}: ${r['usd_per_mtok']:,.2f} "
                   f"{iv} per million output tokens")
    within = f" among loads whose TTFT p99 stays under {slo_ttft_p99_ms:g} ms" if slo_ttft_p99_ms > 0 else ""
    return "Cheapest" + within + ": " + "; ".join(out) + "."

