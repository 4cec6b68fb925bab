"""The matrix: every cell of a scenario measured in trials, interleaved in rounds.

Each round runs one trial of every cell that still needs one (stopping.py: its minimum
trials, its precision, the comparisons it takes part in; under a time budget the cells whose
open comparisons are nearest a verdict per second): servers in a seeded random order, and
within a server the cells (concurrency levels) in a seeded random order, so a slow drift of
the machine spreads over all cells instead of masquerading as a difference between them. A
cell that sat out a round skips its trial number, so trial k of a series ran in round k
(metrics.with_round pairs by it). A cell whose items are still open when it reaches its caps,
or when the sweep stops it, is flagged as capped. Each trial is one papermill run of
notebooks/10-measure.ipynb, stored as its own run.

What counts as already measured is read from the store: the trials of this machine's
newest series of each cell, so a killed sweep resumes where it stopped; `force` starts a
new series for every cell. Ctrl-C ends the trial in flight (its finished requests are
kept, marked "interrupted") and the sweep, with one line and exit code 130.

On a Ray cluster (`ray`, cluster.py) each round's server groups run at once as tasks on its
workers, all writing to one shared store; what is measured is then read from every machine's
runs, and the memory bandwidth (roofline) is not measured, as the driver is not where cells run.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from tqdm import tqdm

from gaplab.analysis import metrics, stats, stopping
from gaplab.machine import bandwidth
from gaplab.machine.hardware import machine_id
from gaplab.measure.trial import write_failed
from gaplab.runtimes import Server
from gaplab.spec.config import BUILD_DIR, RAW_DIR
from gaplab.spec.load import LoadSpec
from gaplab.spec.scenario import Cell, load_scenario
from gaplab.storage import partfiles, run_record, store
from gaplab.storage.backend import Root
from gaplab.sweep import cluster
from gaplab.sweep.notebook import CtrlC, MeasureNotebook, summary_path
from gaplab.sweep.servers import ServerPool


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says what was kept."""


@dataclass
class CellTrials:
    """What a cell has in its current series, and whether it needs another trial."""

    cell: Cell
    series_id: str
    values: list[float] = field(default_factory=list)  # aggregate tok/s of its complete trials
    measured_s: float = 0.0
    next_trial: int = 1
    failed: bool = False
    stopped: bool = False  # the sweep gave it no more trials: out of time, or nothing open could close
    rows: list[dict] = field(default_factory=list)  # metrics.trial_summary rows of its complete trials
    wall_s: list[float] = field(default_factory=list)  # seconds each trial of this sweep took, all in

    def state(self, load: LoadSpec, pooled: stats.Pool | None = None, open_items: int = 0) -> str:
        """'needs trials', 'precise' (interval within the target and no open comparison),
        'done' (precision 0) or 'capped'. pooled: the spread pooled over the runtime's cells, as
        the report computes intervals; open_items: the open comparisons it takes part in."""
        if self.failed:
            return "failed"
        if len(self.values) < load.trials:
            return "needs trials"
        if load.precision == 0:
            return "done"
        if not open_items and stopping.precise(self.values, load.precision, pooled):
            return "precise"
        return "capped" if self.room(load) == 0 else "needs trials"

    def room(self, load: LoadSpec) -> int:
        """The trials it may still get under load.max_trials and load.max_cell_seconds."""
        n = len(self.values)
        if self.stopped or self.measured_s >= load.max_cell_seconds:
            return 0
        by_time = math.floor((load.max_cell_seconds - self.measured_s) / (self.measured_s / n)) if n and self.measured_s else load.max_trials
        return max(0, min(load.max_trials - n, max(by_time, 1)))

    def seconds_per_trial(self, load: LoadSpec) -> float:
        """What a trial of it costs, all in: timed in this sweep, else its measured seconds."""
        if self.wall_s:
            return sum(self.wall_s) / len(self.wall_s)
        return self.measured_s / len(self.values) if self.values else load.min_seconds

    def add(self, row: dict) -> None:
        """Count a complete trial: its metrics.trial_summary row (with the workload's kind, which
        tells the matrix's cells from the workloads study's: metrics.in_study)."""
        self.rows.append({**row, "workload_kind": self.cell.workload.kind})
        self.values.append(row["aggregate_tok_s"])
        self.measured_s += row["span_s"]

    def halfwidth_pct(self, pooled: stats.Pool | None = None) -> float | None:
        half = stopping.halfwidth(self.values, pooled)
        return half * 100 if half is not None else None


def pools(cells: dict[str, CellTrials]) -> dict[str, stats.Pool | None]:
    """runtime name -> the spread of aggregate tok/s pooled over its cells' trials (one machine: this one),
    as the report pools it (stats.runtime_pools)."""
    rows = [{"machine_id": "", "runtime": ct.cell.runtime.name, "cell_key": ct.cell.cell_key, "aggregate_tok_s": v}
            for ct in cells.values() for v in ct.values]
    found = stats.runtime_pools(pl.DataFrame(rows), ["aggregate_tok_s"]) if rows else {}
    return {ct.cell.runtime.name: found.get(("", ct.cell.runtime.name, "aggregate_tok_s")) for ct in cells.values()}


def open_items(cells: dict[str, CellTrials], load: LoadSpec) -> list[stopping.Item]:
    """What more trials could still close (stopping.py): each cell's own precision, and the
    matrix's comparisons between cells that have their minimum trials."""
    if load.precision == 0:
        return []
    p = pools(cells)
    ready = [ct for ct in cells.values() if not ct.failed and len(ct.values) >= load.trials]
    items = [it for ct in ready if (it := stopping.precision_item(ct.cell.cell_key, ct.values, load.precision,
                                                                    p[ct.cell.runtime.name]))]
    rows = [r for ct in ready for r in ct.rows]
    return items + (stopping.comparison_items(pl.DataFrame(rows), load.equivalence_margin) if rows else [])


def states(cells: dict[str, CellTrials], load: LoadSpec, items: list[stopping.Item] | None = None) -> dict[str, str]:
    """cell_key -> CellTrials.state, its open comparisons counted (items: open_items, when at hand)."""
    p = pools(cells)
    # a comparison with a side at its caps is capped, not open
    items = [it for it in (open_items(cells, load) if items is None else items)
             if all(cells[c].room(load) for c in it.cells)]
    return {key: ct.state(load, p[ct.cell.runtime.name], sum(key in it.cells for it in items))
            for key, ct in cells.items()}


def pending(cells: dict[str, CellTrials], load: LoadSpec, budget_s: float | None = None) -> list[CellTrials]:
    """The cells to measure in the next round: those short of their minimum trials, and those
    whose open items stopping.plan picks within budget_s (seconds left; None: no budget)."""
    found = open_items(cells, load)
    state = states(cells, load, found)
    needing = {key: ct for key, ct in cells.items() if state[key] == "needs trials"}
    below = {key for key, ct in needing.items() if len(ct.values) < load.trials}
    if budget_s is not None:  # the minimum trials come first, whatever they cost
        budget_s -= sum((load.trials - len(cells[key].values)) * cells[key].seconds_per_trial(load) for key in below)
    items = [it for it in found if all(c in needing for c in it.cells)]
    picked = stopping.plan(items, {key: ct.seconds_per_trial(load) for key, ct in needing.items()},
                           {key: ct.room(load) for key, ct in needing.items()}, budget_s)
    return [ct for key, ct in needing.items() if key in below or key in picked]


def align_trials(cells, todo: list[CellTrials]) -> None:
    """Number the round's trials by the round: trial k of the cells whose series began together
    ran in round k (metrics.with_round), so a cell that sat out rounds skips their numbers."""
    top: dict[str, int] = {}
    for ct in cells:
        start = metrics.series_start(ct.series_id)
        top[start] = max(top.get(start, 0), ct.next_trial)
    for ct in todo:
        ct.next_trial = top[metrics.series_start(ct.series_id)]


def trial_rows(raw_dir: Root, run_ids: list[str]) -> dict[str, dict]:
    """run_id -> the metrics.trial_summary row of those runs' measured requests."""
    if not run_ids:
        return {}
    # only those runs' files, and of them the columns the summary uses
    req = store.scan_table(raw_dir, "requests", store.run_files(raw_dir, "requests", run_ids)).filter(pl.col("run_id").is_in(run_ids) & ~pl.col("warmup"))
    t = metrics.trial_summary(metrics.with_latencies(metrics.with_run_keys(req)))
    return {r["run_id"]: r for r in t.iter_rows(named=True)}


def cell_trials(cells: list[Cell], raw_dir: Root, force: bool = False, anywhere: bool = False
                ) -> dict[str, CellTrials]:
    """cell_key -> its trials so far on this machine, or on any machine of the store when anywhere
    (a sweep on a cluster); a new, empty series for each with force."""
    runs = metrics.with_run_keys(store.read_table(raw_dir, "run"))
    if not anywhere:
        runs = runs.filter(pl.col("machine_id") == machine_id())
    # series begun together share their start (metrics.series_start): their trial k ran in round k
    start = metrics.series_start(store.new_run_id())
    out = {c.cell_key: CellTrials(c, series_id=start + store.new_run_id()[metrics.SERIES_START:]) for c in cells}
    if force or runs.is_empty():
        return out
    runs = runs.filter(pl.col("cell_key").is_in(list(out)))
    newest = runs.sort("run_id").group_by("cell_key").agg(pl.col("series_id").last())
    series = runs.join(newest, on=["cell_key", "series_id"], how="semi")
    complete = series.filter(pl.col("status") == "complete")
    rows = trial_rows(raw_dir, complete["run_id"].to_list())
    for key, g in series.group_by("cell_key"):
        ct = out[key[0]]
        ct.series_id = g["series_id"][0]
        ct.next_trial = int(metrics.number(g["trial"].max())) + 1
        for run_id in g.filter(pl.col("status") == "complete").sort("trial")["run_id"].to_list():
            if run_id in rows:
                ct.add(rows[run_id])
    return out


@dataclass
class SweepResult:
    cells: int = 0
    skipped: int = 0  # cells that needed nothing
    trials: int = 0  # trials run by this sweep
    rounds: int = 0
    failed: list[str] = field(default_factory=list)
    halfwidths_pct: list[float] = field(default_factory=list)  # per cell with an interval, at the end
    capped: list[str] = field(default_factory=list)
    # the matrix's comparisons (claims table: faster, scales) with an interval at the end, and those
    # decided at the report's 95% (a direction, or the same within the margin): all, and on the same weights
    decided: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: float = 0.0
    run_ids: list[str] = field(default_factory=list)  # the trials this sweep ran
    other_cores: list[float] = field(default_factory=list)  # per trial: cores other work kept busy
    stopped: int = 0  # capped cells the sweep stopped: nothing open could close within the caps or the time left
    cut_requests: int = 0  # requests cut at their trial's end (after its grace) or when it stopped
    dropped_errors: int = 0  # failed requests counted but not stored (guard.MAX_ERROR_ROWS a trial)


def sweep(scenario: str | Path, force: bool = False, raw_dir: Root = RAW_DIR,
          out_dir: Path = BUILD_DIR / "runs", progress: bool = True, ray: str | None = None) -> SweepResult:
    """Measure every cell of the scenario that still needs trials on this machine, or, with ray
    (a cluster's address), every cell the store lacks, each server group as a task on the cluster."""
    t0 = time.monotonic()
    scenario = Path(scenario)
    sc = load_scenario(scenario)
    load = sc.load
    cells = sc.cells()
    if ray:  # before anything runs: an unreachable cluster or a runtime no node can place stops here
        cluster.connect(ray)
        cluster.check_resources({c.runtime.name: c.runtime for c in cells}.values())
        note = cluster.shared_store_note(raw_dir)
        if note:
            print(note, flush=True)
    recovered = partfiles.recover(raw_dir, machine_id=machine_id())  # others may be measuring now
    progress_by_key = cell_trials(cells, raw_dir, force, anywhere=bool(ray))
    result = SweepResult(cells=len(cells))
    todo = pending(progress_by_key, load)
    result.skipped = len(cells) - len(todo)
    need = sum(max(load.trials - len(ct.values), 1) for ct in todo)
    where = "in the store" if ray else f"on this machine ({machine_id()})"
    print(f"gaplab: {len(cells)} cells in {scenario}; {result.skipped} already measured {where}, "
          f"{len(todo)} to run: at least {need} trials in rounds" + (f" on the Ray cluster at {ray}" if ray else "")
          + (f"; {len(recovered)} killed run(s) kept as interrupted" if recovered else ""), flush=True)
    if todo and not ray:  # what bounds every decode step here, measured beside the trials (report: roofline)
        print(f"gaplab: memory bandwidth here: {bandwidth.summary(bandwidth.record(raw_dir, sc.name))}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=need, desc="sweep", unit="trial", file=sys.stdout, disable=not progress)
    notebook = MeasureNotebook()

    def budget_s() -> float | None:
        return None if load.max_sweep_seconds is None else load.max_sweep_seconds - (time.monotonic() - t0)

    def out_of_time(ct: CellTrials) -> bool:
        """Past load.max_sweep_seconds a cell with its minimum trials gets no more."""
        left = budget_s()
        if left is None or left >= 0 or len(ct.values) < load.trials:
            return False
        ct.stopped = True
        bar.total -= 1
        return True

    def trial_summary(run_id: str) -> dict | None:
        """The trial's summary row as its notebook left it, else (a trial run elsewhere, as on a
        Ray cluster's workers) read from the store."""
        path = summary_path(out_dir, run_id)
        if path.exists():
            rows = pl.read_json(path)
            path.unlink()
            return rows.row(0, named=True) if rows.height else None
        return trial_rows(raw_dir, [run_id]).get(run_id)

    def settle(ct: CellTrials, run_id: str | None, error: str | None, server_died: bool = False) -> None:
        """Count one trial of ct. run_id None: nothing was stored (its server never started), so
        the trial is stored here as a failed run with the reason. server_died: the trial failed
        because its server died; the cell goes on, on a server started again (ServerPool)."""
        if error is None:
            assert run_id is not None  # only a trial that never ran (fail) has no run, and it has an error
            got = trial_summary(run_id)
            result.trials += 1
            result.run_ids.append(run_id)
            if got:
                ct.add(got)
            else:
                error = f"trial {ct.next_trial} measured nothing"
        if error is not None:
            if run_id is None:
                write_failed(raw_dir, ct.cell, error, ct.next_trial, ct.series_id)
            ct.failed = ct.failed or not server_died
            result.failed.append(f"{ct.cell.cell_id}: {error}"[:300])
        ct.next_trial += 1
        bar.update()

    current: CellTrials | None = None  # the cell being measured (Ctrl-C's message names it)

    class Trial:
        """The next trial of a cell, as a measurement of the server session."""

        def __init__(self, ct: CellTrials):
            self.ct = ct

        def run(self, server: Server) -> None:
            nonlocal current
            ct = current = self.ct
            bar.set_postfix_str(f"round {result.rounds} · {ct.cell.cell_id}")
            run_id, started = store.new_run_id(), time.monotonic()
            error = notebook.run_trial(scenario, ct.cell, raw_dir, server, ct.next_trial, ct.series_id, out_dir, run_id)
            ct.wall_s.append(time.monotonic() - started)
            if error and ctrl_c.pressed:
                raise KeyboardInterrupt
            settle(ct, run_id, error, server_died=error is not None and server_pool.dead(ct.cell) is not None)
            current = None
            if ctrl_c.pressed:
                raise KeyboardInterrupt

        def fail(self, error: str) -> None:
            settle(self.ct, None, error)

    try:
        with CtrlC() as ctrl_c, ServerPool(keep=load.keep_servers, max_restarts=load.max_restarts) as server_pool:
            while True:
                todo = [ct for ct in pending(progress_by_key, load, budget_s()) if not out_of_time(ct)]
                if not todo:
                    break
                result.rounds += 1
                align_trials(progress_by_key.values(), todo)
                bar.total = bar.n + sum(max(load.trials - len(ct.values), 1) for ct in todo)
                bar.refresh()
                rng = random.Random(f"{sc.seed}:round:{result.rounds}")
                groups: dict[str, list[CellTrials]] = {}
                for ct in todo:
                    groups.setdefault(ct.cell.server_key, []).append(ct)
                order = sorted(groups)
                rng.shuffle(order)
                if ray:
                    bar.set_postfix_str(f"round {result.rounds} · {len(order)} server groups on the cluster")
                    cluster.run_round(scenario, raw_dir, [groups[key] for key in order], settle)
                    continue
                for key in order:
                    group = groups[key]
                    rng.shuffle(group)
                    group = [ct for ct in group if not out_of_time(ct)]  # before its server starts
                    if group:
                        server_pool.serve(group[0].cell, [Trial(ct) for ct in group])
    except KeyboardInterrupt:
        bar.close()
        where = f"; trial {current.next_trial} of {current.cell.cell_id} kept as interrupted" if current else ""
        raise Interrupted(f"interrupted after {result.trials} trials in {time.monotonic() - t0:.0f} s{where}; "
                          f"every finished trial is stored: run the same command again to resume") from None
    finally:
        notebook.close()
    bar.close()
    final, state = pools(progress_by_key), states(progress_by_key, load)
    for key, ct in progress_by_key.items():
        if state[key] == "needs trials":  # open, yet the plan gave it no trial: stopped by the sweep
            ct.stopped = True
            state[key] = "capped"
        half = ct.halfwidth_pct(final[ct.cell.runtime.name])
        if half is not None:
            result.halfwidths_pct.append(half)
        if state[key] == "capped":
            result.capped.append(ct.cell.cell_id)
            result.stopped += ct.stopped
    result.decided = stopping.decided_share(
        [r for ct in progress_by_key.values() if not ct.failed for r in ct.rows], load.equivalence_margin)
    if result.run_ids:
        runs = store.read_table(raw_dir, "run").filter(pl.col("run_id").is_in(result.run_ids))
        result.other_cores = runs["other_cores"].drop_nulls().to_list()
        guarded = run_record.settings(runs)
        result.cut_requests += int(guarded["cut_requests"].sum())
        result.dropped_errors += int(guarded["dropped_errors"].sum())
    result.seconds = time.monotonic() - t0
    return result
