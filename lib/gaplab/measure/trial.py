"""Measure one trial of one cell and store it: what notebooks/10-measure.ipynb runs
(papermill, once per trial, from `gaplab sweep`, whose server session passes the server in, and
from `gaplab run`, where the trial starts the cell's own server).

The run is written while it is measured: finished requests go to part files every
`load.flush_seconds`, and the run's tables replace them at the end, with its status
("complete", "interrupted" by Ctrl-C, or "failed").
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

import gaplab
from gaplab.machine.hardware import hardware
from gaplab.measure.client import ClientArgs, StreamClient
from gaplab.measure.client_processes import Job, Requests, drive_processes
from gaplab.measure.guard import Rules, TrialGuard, TrialStopped
from gaplab.measure.loadgen import arrival_offsets, closed_loop, one_by_one, open_loop, open_loop_count, run_sync
from gaplab.measure.telemetry import Sampler, background
from gaplab.runtimes import Server, kinds, open_server
from gaplab.spec.config import RAW_DIR
from gaplab.spec.scenario import Cell, ScenarioError, load_scenario
from gaplab.storage import backend, partfiles, store
from gaplab.sweep.servers import run_identity

PACKAGES = ("openai", "orjson", "polars", "pyarrow", "altair", "papermill")


class TrialPlan(BaseModel):
    """One trial to measure: what the sweep hands the measure notebook as its papermill parameters,
    checked once, where the notebook builds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: Path  # the matrix file
    cell_id: str = ""  # which cell; empty: the first one
    server: Server | None = None  # a server already running (the sweep's); None: start the cell's own
    data_dir: str = ""  # a folder or a URL (s3://...); empty: $GAPLAB_DATA_DIR/raw, else this clone's data/raw
    trial: int = Field(1, ge=1)  # which trial of the cell this is
    series_id: str = ""  # the series its trials belong to; empty: a series of its own
    run_id: str = ""  # the run's id (a sweep on Ray names it ahead); empty: a new one
    summary_path: Path | None = None  # where the notebook writes the trial's summary as JSON (the sweep reads it)

    def parameters(self) -> dict:
        """The measure notebook's papermill parameters for this plan: plain values papermill can write."""
        return {"scenario": str(self.scenario), "cell_id": self.cell_id,
                "server": self.server.to_dict() if self.server else {}, "data_dir": self.data_dir,
                "trial": self.trial, "series_id": self.series_id, "run_id": self.run_id,
                "summary_path": str(self.summary_path or "")}


def find_cell(cells: list[Cell], cell_id: str) -> Cell:
    if not cell_id:
        return cells[0]
    for cell in cells:
        if cell.cell_id == cell_id:
            return cell
    raise ScenarioError(f"cell_id: {cell_id!r} is not in the scenario; "
                        f"'gaplab sweep FILE --list' shows the cells (e.g. {cells[0].cell_id})")


def _versions() -> dict:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "gaplab": gaplab.__version__}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_meta(cell: Cell, server: Server | None, started: str, status: str, error: str | None) -> dict:
    hw = hardware()
    return {"status": status, "error": error, "started_at": started,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gaplab_version": gaplab.__version__, "cpu_model": hw["cpu_model"], "cpu_cores": hw["cpu_cores"],
            "memory_gib": hw["memory_gib"], "hardware": hw, "versions": _versions(),
            "cell": cell.identity(), "load": cell.load.model_dump(), "ablations": cell.ablations,
            "server": server.to_dict() if server else None,
            "model_file": server.model_file if server else None,
            "model_sha256": server.model_sha256 if server else None,
            "model_note": server.model_note if server else None,
            "launch_command": server.launch_command if server else None,
            "server_started_ns": server.started_ns if server else None,
            "server_healthy_ns": server.healthy_ns if server else None,
            "server_first_token_ns": server.first_token_ns if server else None,
            "server_loaded_ns": server.loaded_ns if server else None,
            "engine_version": server.engine_version if server else None,
            "engine": server.engine if server else None,
            "weight_bytes": server.weight_bytes if server else None,
            "kv_bytes_per_token": server.kv_bytes_per_token if server else None}


def write_failed(raw_dir: backend.Root, cell: Cell, error: str, trial: int = 1, series_id: str = "") -> None:
    """A run whose server never started: stored, with no requests."""
    run_id = store.new_run_id()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.write_run(raw_dir, run_identity(cell, None, run_id, trial, series_id),
                    run_meta(cell, None, now, "failed", error), [])


def guard_rules(cell: Cell, server: Server) -> Rules:
    """What the trial's guard watches: the load's bounds, and the processes of a server gaplab started."""
    load = cell.load
    return Rules(load.max_seconds, load.grace_seconds, load.stop_after_errors, tuple(server.watch_pids),
                 server.log_file)


async def _drive(cell: Cell, server: Server, salt: str, progress: bool, records: list, guard: TrialGuard) -> list:
    load = cell.load
    requests = Requests(cell.workload, cell.seed, salt, server.served_model, server.extra_body)
    client_args: ClientArgs = {"base_url": server.base_url, "api": cell.model.api, "api_key": server.api_key,
                   "timeout": load.request_timeout, "protocol": server.protocol}
    offsets = None
    if cell.rate is not None:  # open loop: the seeded schedule, its own per trial (salt)
        n = open_loop_count(cell.rate, load.requests, load.min_seconds, load.max_seconds)
        offsets = arrival_offsets(cell.rate, n, load.arrival, f"{cell.seed}:{salt}", load.burstiness)
    job = Job(client_args, requests, load.warmup, cell.concurrency, load.requests, load.min_seconds,
              load.max_seconds, offsets, guard.rules)
    with tqdm(desc=cell.cell_id, unit="req", disable=not progress, file=sys.stdout,
              total=None if offsets is None else load.warmup + len(offsets)) as bar:
        done = lambda r: bar.update()  # noqa: E731
        if job.parts(load.processes) > 1:  # users (arrivals) split across client processes
            return await drive_processes(job, load.processes, records, on_done=done, guard=guard)
        async with StreamClient(**client_args) as client:
            payload = requests.payload(client)
            if offsets is None:
                assert cell.concurrency is not None  # a cell without a rate has users (Cell._one_level)
                return await closed_loop(client, payload, cell.concurrency, load.warmup, load.requests,
                                         load.min_seconds, load.max_seconds, records, on_done=done, guard=guard)
            # open loop: warmup one by one, then the schedule
            await one_by_one(client, payload, load.warmup, records, on_done=done, guard=guard)
            return await open_loop(client, payload, offsets, records, on_done=done, first_index=load.warmup,
                                   guard=guard)


def run_trial(plan: TrialPlan, progress: bool = True) -> dict:
    """Measure the plan's trial and store it as a run; returns a short summary (with the run's
    folder, so its tables are read back without listing the store). Interrupted or failed runs
    are stored too, with their status."""
    cell = find_cell(load_scenario(plan.scenario).cells(), plan.cell_id)
    raw_dir, trial, series_id = backend.location(plan.data_dir or None, RAW_DIR), plan.trial, plan.series_id
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_id = plan.run_id or store.new_run_id()
    records: list = []
    srv: Server | None = None
    sampler: Sampler | None = None
    kind = kinds()[cell.runtime.kind]
    facts: dict = {}  # what the runtime kind reads beside a trial (Ollama: where the model sits)
    status, error = "complete", None
    guard: TrialGuard | None = None
    try:
        with open_server(cell, attach=plan.server) as srv:
            writer = partfiles.RunWriter(raw_dir, run_identity(cell, srv, run_id, trial, series_id),
                                     run_meta(cell, srv, started, "interrupted", "the process was killed"))
            if kind.trial_facts:
                facts["before"] = kind.trial_facts(srv)
            sampler = Sampler(srv.metrics_url, srv.slots_url, srv.pid, cell.load.telemetry_interval)
            guard = TrialGuard(guard_rules(cell, srv))
            with sampler:
                run_sync(lambda: _drive(cell, srv, f"{cell.cell_key}:{trial}", progress, records, guard),
                         tick=lambda: writer.flush(records), tick_seconds=cell.load.flush_seconds)
            if guard.failure:
                raise TrialStopped(guard.failure)
            if kind.trial_facts:
                facts["after"] = kind.trial_facts(srv)
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    except Exception as exc:  # a server that will not start, or died, is a failed run, stored as such
        status, error = "failed", str(exc) if isinstance(exc, TrialStopped) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        meta = run_meta(cell, srv, started, status, error)
        if facts:
            meta[kind.facts_key] = facts
            after = facts.get("after") or {}
            meta.update(model_bytes_loaded=after.get("size"), model_bytes_gpu=after.get("size_vram"))
        rows = sampler.stop() if sampler else None
        meta.update(background(rows or []))
        if sampler:
            meta["energy_unmeasured"] = sampler.energy_unmeasured
        if guard:
            meta["guard"] = guard.summary()
        folder = backend.parent(store.write_run(raw_dir, run_identity(cell, srv, run_id, trial, series_id), meta,
                                                records, telemetry=rows))
    measured = [r for r in records if not r.warmup]
    return {"cell_id": cell.cell_id, "run_id": run_id, "trial": trial, "status": status,
            "requests": len(measured), "errors": sum(r.error is not None for r in measured), "folder": str(folder)}
