"""From a scenario to stored rows: run one cell, or sweep the whole matrix.

`sweep` starts each server once for the cells that share it and runs
notebooks/10-measure.ipynb once per cell with papermill; the notebook calls
`run_cell`, which drives the load and writes the run's Parquet files.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tqdm import tqdm

import gaplab
from gaplab import store
from gaplab.client import StreamClient
from gaplab.config import BUILD_DIR, NOTEBOOKS_DIR, RAW_DIR, ROOT
from gaplab.hardware import hardware
from gaplab.load import closed_loop, run_sync
from gaplab.runtimes import Server, ollama, open_server
from gaplab.scenario import Cell, ScenarioError, load_scenario
from gaplab.telemetry import Sampler
from gaplab.workload import make_prompts

PACKAGES = ("openai", "orjson", "polars", "pyarrow", "altair", "papermill")


def find_cell(cells: list[Cell], cell_id: str) -> Cell:
    if not cell_id:
        return cells[0]
    for cell in cells:
        if cell.cell_id == cell_id:
            return cell
    raise ScenarioError(f"cell_id: {cell_id!r} is not in the scenario; "
                        f"'gaplab sweep FILE --list' shows the cells (e.g. {cells[0].cell_id})")


def _versions() -> dict:
    out = {"python": sys.version.split()[0], "gaplab": gaplab.__version__}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _identity(cell: Cell, server: Server | None, run_id: str) -> dict:
    rt = cell.runtime
    return {"run_id": run_id, "cell_id": cell.cell_id, "cell_key": cell.cell_key, "scenario": cell.scenario,
            "hardware_id": hardware()["hardware_id"], "runtime": rt.name, "runtime_kind": rt.kind,
            "runtime_version": server.runtime_version if server else "unknown", "model": cell.model.name,
            "quant": cell.quant, "workload": cell.workload.name, "concurrency": cell.concurrency,
            "threads": rt.threads if rt.started_here else None,
            "parallel": rt.parallel if rt.started_here else None}


def _meta(cell: Cell, server: Server | None, started: str, status: str, error: str | None) -> dict:
    hw = hardware()
    return {"status": status, "error": error, "started_at": started,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gaplab_version": gaplab.__version__, "cpu_model": hw["cpu_model"], "cpu_cores": hw["cpu_cores"],
            "memory_gib": hw["memory_gib"], "hardware": hw, "versions": _versions(),
            "cell": cell.identity(), "server": server.to_dict() if server else None,
            "model_file": server.model_file if server else None,
            "model_sha256": server.model_sha256 if server else None,
            "model_note": server.model_note if server else None,
            "launch_command": server.launch_command if server else None}


async def _drive(cell: Cell, server: Server, progress: bool, records: list) -> list:
    total = cell.load.warmup + cell.load.requests
    prompts = make_prompts(cell.workload, total, cell.seed, salt=cell.cell_key)
    async with StreamClient(server.base_url, cell.model.api, server.api_key, cell.load.request_timeout,
                            protocol=server.protocol) as client:
        payloads = [client.body(p, cell.workload.output_tokens, server.served_model, server.extra_body)
                    for p in prompts]
        with tqdm(total=total, desc=cell.cell_id, unit="req", disable=not progress, file=sys.stdout) as bar:
            return await closed_loop(client, payloads, cell.concurrency, cell.load.warmup,
                                     cell.load.max_seconds, records, on_done=lambda r: bar.update())


def run_cell(scenario: str | Path, cell_id: str = "", server: str | dict | None = None,
             raw_dir: Path = RAW_DIR, progress: bool = True) -> dict:
    """Measure one cell and store it; returns a short summary.

    server: a running server (JSON or dict, as `sweep` passes it); None starts one.
    Interrupted or failed runs are stored too, with their status.
    """
    cell = find_cell(load_scenario(scenario).cells(), cell_id)
    attach = json.loads(server) if isinstance(server, str) and server else server or None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_id = store.new_run_id()
    records: list = []
    srv: Server | None = None
    sampler: Sampler | None = None
    placement: dict = {}
    status, error = "complete", None
    try:
        with open_server(cell, attach=attach) as srv:
            if srv.protocol == "ollama":
                placement["before"] = ollama.placement(srv.base_url, srv.served_model)
            sampler = Sampler(srv.metrics_url, srv.slots_url, srv.pid, cell.load.telemetry_interval)
            with sampler:
                run_sync(lambda: _drive(cell, srv, progress, records))
            if srv.protocol == "ollama":
                placement["after"] = ollama.placement(srv.base_url, srv.served_model)
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted by the user"
        raise
    except Exception as exc:  # a server that will not start is a failed run, stored as such
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        meta = _meta(cell, srv, started, status, error)
        if placement:
            meta["ollama_placement"] = placement
        store.write_run(raw_dir, _identity(cell, srv, run_id), meta, records,
                        telemetry=sampler.stop() if sampler else None)
    measured = [r for r in records if not r.warmup]
    return {"cell_id": cell.cell_id, "run_id": run_id, "status": status, "requests": len(measured),
            "errors": sum(r.error is not None for r in measured)}


@dataclass
class SweepResult:
    cells: int = 0
    skipped: int = 0
    ran: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _notebook_name(cell: Cell) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cell.cell_id) + ".ipynb"


def sweep(scenario: str | Path, force: bool = False, raw_dir: Path = RAW_DIR,
          out_dir: Path = BUILD_DIR / "runs") -> SweepResult:
    """Run every cell not yet measured on this machine (all of them with force)."""
    import papermill as pm

    t0 = time.monotonic()
    scenario = Path(scenario)
    cells = load_scenario(scenario).cells()
    done = set() if force else store.completed_cells(raw_dir, hardware()["hardware_id"])
    todo = [c for c in cells if c.cell_key not in done]
    result = SweepResult(cells=len(cells), skipped=len(cells) - len(todo))
    print(f"gaplab: {len(cells)} cells in {scenario}; {result.skipped} already measured on this machine, "
          f"{len(todo)} to run", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc="sweep", unit="cell", file=sys.stdout)
    for _, group in itertools.groupby(todo, key=lambda c: c.server_key):
        group = list(group)
        try:
            with open_server(group[0]) as srv:
                for cell in group:
                    bar.set_postfix_str(cell.cell_id)
                    params = {"scenario": str(scenario), "cell_id": cell.cell_id,
                              "server": json.dumps(srv.to_dict()), "data_dir": str(raw_dir)}
                    try:
                        pm.execute_notebook(str(NOTEBOOKS_DIR / "10-measure.ipynb"),
                                            str(out_dir / _notebook_name(cell)), parameters=params,
                                            cwd=str(ROOT), progress_bar=False, log_output=False)
                        result.ran += 1
                    except pm.PapermillExecutionError as exc:
                        result.failed.append(f"{cell.cell_id}: {exc.ename}: {exc.evalue}"[:300])
                    bar.update()
        except RuntimeError as exc:  # the server would not start: every cell of the group fails
            for cell in group:
                if not any(f.startswith(cell.cell_id + ":") for f in result.failed):
                    result.failed.append(f"{cell.cell_id}: {exc}"[:300])
                    run_id = store.new_run_id()
                    store.write_run(raw_dir, _identity(cell, None, run_id),
                                    _meta(cell, None, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                          "failed", str(exc)), [])
            bar.update(len(group))
    bar.close()
    result.seconds = time.monotonic() - t0
    return result
