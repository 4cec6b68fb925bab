"""A sweep's server groups as tasks on a Ray cluster: `gaplab sweep FILE --ray ADDRESS`.

Ray places and retries the work; gaplab only says what each task needs (the runtime's `cpus`,
`gpus` and `accelerator`). One task is one server group of one round: the cells that share a
server, one trial each, measured on the worker exactly as a local sweep measures them (a
session opens or attaches to the server, papermill runs notebooks/10-measure.ipynb per trial)
and written to the shared store (--data-dir: a shared folder or a URL).

The driver names each trial's run id before sending it, so an attempt that Ray retries after
its worker died skips the trials the dead attempt had stored; a group that still fails after
RETRIES retries gets its unstored trials recorded as failed runs by the driver. The Jupyter
kernel of a killed worker exits by itself within a second (ipykernel polls its parent).
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from gaplab import storage, store
from gaplab.storage import Root

RETRIES = 2  # a group whose worker dies is run again this many times


def _host_port(address: str) -> tuple[str, int]:
    """host and port of 'host:port' or 'ray://host:port' (Ray Client's default port 10001)."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        default = 10001 if address.startswith("ray://") else 6379
        raise ValueError(f"--ray: {address!r} is not HOST:PORT; give the head's address, e.g. 10.0.0.5:{default}")
    return host, int(port)


def connect(address: str) -> None:
    """Join the cluster at address, or stop with one line saying why not. The port is tried first:
    ray.init on an address nobody answers waits up to a minute and then raises an error that
    differs between Ray versions."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray: Ray is not installed here; pip install 'ray[default]' "
                         "(the same version as the cluster's)") from None
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ValueError(f"--ray: nothing answers at {host}:{port} ({exc.strerror or exc}); start the cluster "
                         f"there ('ray start --head --port {port}') or fix the address") from None
    if not ray.is_initialized():
        ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)


def shared_store_note(raw_dir: Root) -> str | None:
    """A warning when a cluster of several nodes would write to a local folder: each node's runs
    would land on its own disk, out of the driver's sight, unless the folder is a shared mount."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if storage.is_url(raw_dir) or nodes < 2:
        return None
    return (f"gaplab: note: --data-dir {raw_dir} is a local folder and the cluster has {nodes} nodes; unless every "
            "node mounts it at that path, give a URL (s3://...) or a shared file system")


def needs(runtime) -> dict:
    """The Ray task options that place a server of this runtime."""
    out = {"num_cpus": runtime.cpus, "num_gpus": runtime.gpus}
    if runtime.accelerator:
        out["accelerator_type"] = runtime.accelerator
    return out


def check_resources(runtimes) -> None:
    """Every runtime fits on the cluster: a task that asks for more than any node has waits forever."""
    import ray

    have = ray.cluster_resources()
    for rt in runtimes:
        if rt.gpus > have.get("GPU", 0):
            raise ValueError(f"runtimes.{rt.name}.gpus: {rt.gpus:g} asked, the cluster has {have.get('GPU', 0):g} GPUs; "
                             "lower it or add GPU nodes")
        if rt.cpus > have.get("CPU", 0):
            raise ValueError(f"runtimes.{rt.name}.cpus: {rt.cpus:g} asked, the cluster has {have.get('CPU', 0):g} CPUs")
        if rt.accelerator and f"accelerator_type:{rt.accelerator}" not in have:
            known = sorted(k.split(":", 1)[1] for k in have if k.startswith("accelerator_type:"))
            raise ValueError(f"runtimes.{rt.name}.accelerator: no node of the cluster has {rt.accelerator!r}; "
                             f"it has {known or 'no named accelerators'}")


def _scenario_here(path: str, text: str) -> Path:
    """The scenario file on this worker: the driver's path when it holds the same text (a shared
    clone: relative workload files resolve), else a copy of the text."""
    if Path(path).is_file() and Path(path).read_text() == text:
        return Path(path)
    copy = Path(tempfile.mkdtemp(prefix="gaplab-scenario-")) / Path(path).name
    copy.write_text(text)
    return copy


def _run_path(raw_dir: Root, cell, run_id: str) -> Root:
    """Where this worker stores the run table of a trial of cell."""
    from gaplab.hardware import hardware

    ident = {"hardware_id": hardware()["hardware_id"], "runtime": cell.runtime.name, "model": cell.model.name,
             "quant": cell.quant}
    return storage.join(store.run_dir(raw_dir, ident, run_id), f"{run_id}.run.parquet")


def measure_group(scenario_path: str, scenario_text: str, raw_dir: str, trials: list[dict]) -> list[dict]:
    """On a worker: one trial of each cell of a server group (trials: cell_id, trial, series_id,
    run_id), against one server session. Returns per trial its run_id, error (None when measured)
    and whether the run is stored."""
    from gaplab.config import BUILD_DIR
    from gaplab.kernel import Kernel, trial_outcome
    from gaplab.scenario import load_scenario
    from gaplab.sessions import Sessions

    path = _scenario_here(scenario_path, scenario_text)
    cells = {c.cell_id: c for c in load_scenario(path).cells()}
    raw = storage.location(raw_dir)
    outcomes: list[dict] = []
    todo = []
    for t in trials:
        if storage.exists(_run_path(raw, cells[t["cell_id"]], t["run_id"])):  # stored by an attempt that died
            outcomes.append({"run_id": t["run_id"], "error": None, "stored": True})
        else:
            todo.append(t)
    kernel = [Kernel()]

    class Trial:
        def __init__(self, t: dict):
            self.t = t

        def run(self, server) -> None:
            t = self.t
            kernel[0], error = trial_outcome(kernel[0], path, cells[t["cell_id"]], raw, server, t["trial"],
                                             t["series_id"], BUILD_DIR / "runs", t["run_id"])
            outcomes.append({"run_id": t["run_id"], "error": error, "stored": True})

        def fail(self, error: str) -> None:
            outcomes.append({"run_id": self.t["run_id"], "error": error, "stored": False})

    try:
        if todo:
            with Sessions() as sessions:
                sessions.serve(cells[todo[0]["cell_id"]], [Trial(t) for t in todo])
    finally:
        kernel[0].close()
    return outcomes


def run_round(scenario: Path, raw_dir: Root, groups: list[list], settle: Callable) -> None:
    """Send each group of CellTrials (cells that share a server) to the cluster as one task, and
    settle(ct, run_id or None when not stored, error) every trial as its task ends."""
    import ray

    remote = ray.remote(max_retries=RETRIES, retry_exceptions=False)(measure_group)
    text = scenario.read_text()
    running = {}
    for group in groups:
        trials = [{"cell_id": ct.cell.cell_id, "trial": ct.next_trial, "series_id": ct.series_id,
                   "run_id": store.new_run_id()} for ct in group]
        ref = remote.options(name=f"gaplab:{group[0].cell.server_key}", **needs(group[0].cell.runtime)).remote(
            str(scenario.resolve()), text, str(raw_dir), trials)
        running[ref] = (group, trials)
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                group, trials = running.pop(ref)
                for ct, t, outcome in zip(group, trials, _outcomes(ref, raw_dir, trials)):
                    settle(ct, t["run_id"] if outcome["stored"] else None, outcome["error"])
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        raise


def _outcomes(ref, raw_dir: Root, trials: list[dict]) -> list[dict]:
    """A finished task's outcomes in the order of its trials; when Ray gave up on it, the trials
    its attempts stored count, the others failed."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        by_id = {o["run_id"]: o for o in ray.get(ref)}
    except RayError as exc:
        why = (f"on its Ray worker: {type(exc.cause).__name__}: {exc.cause}" if isinstance(exc, RayTaskError)
               else f"its Ray worker died ({type(exc).__name__}) and its {RETRIES} retries were spent")
        stored = {storage.name(p).split(".")[0] for t in trials
                  for p in storage.glob(raw_dir, f"**/{t['run_id']}.run.parquet")}
        by_id = {t["run_id"]: {"run_id": t["run_id"], "stored": t["run_id"] in stored,
                               "error": None if t["run_id"] in stored else why} for t in trials}
    return [by_id[t["run_id"]] for t in trials]
