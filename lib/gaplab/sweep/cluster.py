"""A sweep's server groups as tasks on a Ray cluster: `gaplab sweep FILE --ray ADDRESS`.

Ray places and retries the work; gaplab only says what each task needs (the runtime's `cpus`,
`gpus` and `accelerator`). One task is one server of one round: the cells that share it, one
trial each, measured on the worker exactly as a local sweep measures them (a session opens or
attaches to the server, papermill runs notebooks/10-measure.ipynb per trial) and written to the
shared store (--data-dir: a shared folder or a URL). The cells of an attached server's models
and quants go in one task, so they are never measured at once.

The driver names each trial's run id before sending it, so an attempt that Ray retries after
its worker died skips the trials a dead attempt stored and starts afresh the one it was
measuring. When the retries are spent, what the dead attempt had measured is kept as an
interrupted run and the trial counts as failed; a trial with nothing stored is stored as failed.
The Jupyter kernel of a killed worker exits by itself within a second (ipykernel polls its parent).
"""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from gaplab.storage import backend, partfiles, store
from gaplab.storage.backend import Root

RETRIES = 2  # a group whose worker dies is run again this many times


def _host_port(address: str) -> tuple[str, int]:
    """host and port of 'host:port' or 'ray://host:port' (Ray Client's default port 10001)."""
    if address.startswith(("http://", "https://")):
        raise ValueError(f"--ray: {address} is a dashboard (job submission) address; give the head's own "
                         "address, HOST:6379 (the port 'ray start --head' printed)")
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        default = 10001 if address.startswith("ray://") else 6379
        raise ValueError(f"--ray: {address!r} is not HOST:PORT; give the head's address, e.g. 10.0.0.5:{default}")
    return host, int(port)


def _speaks_grpc(host: str, port: int) -> bool:
    """Whether the port answers an HTTP/2 greeting with its own settings, as Ray's GCS (and Ray
    Client) servers, speaking gRPC, do; a dashboard or another service does not."""
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            frame = conn.recv(9)
    except OSError:
        return False
    return len(frame) >= 4 and frame[3] == 4  # a SETTINGS frame


def connect(address: str) -> None:
    """Join the cluster at address, or stop with one line saying why not. The port is tried first:
    on an address nobody answers, or one that answers but is not a Ray head (its dashboard, say),
    ray.init retries for minutes and then raises an error that differs between Ray versions."""
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
    if not _speaks_grpc(host, port):
        raise ValueError(f"--ray: {host}:{port} answers, but not as a Ray head; give the port 'ray start --head' "
                         "printed (6379 by default; 8265 is the dashboard's)")
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)


def _nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _here() -> str:
    """The node id of the node this driver runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def shared_store_note(raw_dir: Root) -> str | None:
    """A warning when cells may run on another machine than this one and write to a local folder:
    their runs would land on that machine's disk, out of the driver's sight, unless the folder is
    a shared mount."""
    if backend.is_url(raw_dir):
        return None
    here = _here()
    others = [n for n in _nodes() if n.get("NodeID") != here]
    if not others:
        return None
    return (f"gaplab: note: --data-dir {raw_dir} is a local folder and {len(others)} node(s) of the cluster are "
            "other machines; unless they mount it at that path, give a URL (s3://...) or a shared file system")


def needs(runtime) -> dict:
    """The Ray task options that place a server of this runtime. CPUs, unless the runtime says: a
    server gaplab starts takes its threads and the client one more; one it attaches to, the client's."""
    cpus = runtime.cpus if runtime.cpus is not None else (runtime.threads + 1 if runtime.started_here else 1)
    out = {"num_cpus": cpus, "num_gpus": runtime.gpus}
    if runtime.accelerator:
        out["accelerator_type"] = runtime.accelerator
    return out


def check_resources(runtimes) -> None:
    """Every runtime fits on one node of the cluster: a task that asks for more than any node has
    waits forever."""
    nodes = [n.get("Resources", {}) for n in _nodes()]
    for rt in runtimes:
        need = needs(rt)
        acc = f"accelerator_type:{rt.accelerator}" if rt.accelerator else None
        typed = [r for r in nodes if acc is None or acc in r]
        if not typed:
            known = sorted({k.split(":", 1)[1] for r in nodes for k in r if k.startswith("accelerator_type:")})
            raise ValueError(f"runtimes.{rt.name}.accelerator: no node of the cluster has {rt.accelerator!r}; "
                             f"it has {known or 'no named accelerators'}")
        for field, key in (("gpus", "GPU"), ("cpus", "CPU")):
            most = max(r.get(key, 0) for r in typed)
            if need[f"num_{key.lower()}s"] > most:
                raise ValueError(f"runtimes.{rt.name}.{field}: {need[f'num_{key.lower()}s']:g} asked, and the "
                                 f"largest node{' of that accelerator' if acc else ''} has {most:g} {key}s; lower "
                                 "it or add a larger node")
        if not [r for r in typed if r.get("GPU", 0) >= need["num_gpus"] and r.get("CPU", 0) >= need["num_cpus"]]:
            raise ValueError(f"runtimes.{rt.name}: no single node has both {need['num_gpus']:g} GPUs and "
                             f"{need['num_cpus']:g} CPUs; lower gpus or cpus")


def server_of(cell) -> str:
    """What a task measures alone: the server a runtime attaches to (its models and quants share
    it, so their cells must not run at once), or the one gaplab starts for the cell's group."""
    return cell.runtime.base_url if not cell.runtime.started_here else cell.server_key


def _scenario_here(path: str, text: str) -> Path:
    """The scenario file on this worker: the driver's path when it holds the same text (a shared
    clone: relative workload files resolve), else a copy of the text."""
    if Path(path).is_file() and Path(path).read_text() == text:
        return Path(path)
    copy = Path(tempfile.mkdtemp(prefix="gaplab-scenario-")) / Path(path).name
    copy.write_text(text)
    return copy


def measure_group(scenario_path: str, scenario_text: str, raw_dir: str, trials: list[dict]) -> list[dict]:
    """On a worker: one trial of each cell (trials: cell_id, trial, series_id, run_id), the cells
    of each server in turn, each server in its own session. Returns per trial its run_id, error
    (None when measured) and whether the run is stored. A trial an earlier attempt stored is not
    measured again; one it left part files of starts afresh."""
    from gaplab.spec.config import BUILD_DIR
    from gaplab.spec.scenario import load_scenario
    from gaplab.sweep.notebook import MeasureNotebook
    from gaplab.sweep.servers import ServerPool

    path = _scenario_here(scenario_path, scenario_text)
    cells = {c.cell_id: c for c in load_scenario(path).cells()}
    raw = backend.location(raw_dir)
    done = store.stored(raw, [t["run_id"] for t in trials])
    outcomes = [{"run_id": t["run_id"], "error": None, "stored": True} for t in trials if t["run_id"] in done]
    by_server: dict[str, list[dict]] = {}
    for t in trials:
        if t["run_id"] not in done:
            partfiles.discard_parts(raw, t["run_id"])
            by_server.setdefault(cells[t["cell_id"]].server_key, []).append(t)
    notebook = MeasureNotebook()

    class Trial:
        def __init__(self, t: dict):
            self.t = t

        def run(self, server) -> None:
            t = self.t
            error = notebook.run_trial(path, cells[t["cell_id"]], raw, server, t["trial"], t["series_id"],
                                       BUILD_DIR / "runs", t["run_id"])
            kept = bool(store.stored(raw, [t["run_id"]]))  # a notebook that could not write stored nothing
            outcomes.append({"run_id": t["run_id"], "stored": kept,
                             "error": error or (None if kept else "the trial's run was not stored")})

        def fail(self, error: str) -> None:
            outcomes.append({"run_id": self.t["run_id"], "error": error, "stored": False})

    try:
        with ServerPool() as server_pool:
            for group in by_server.values():
                server_pool.serve(cells[group[0]["cell_id"]], [Trial(t) for t in group])
    finally:
        notebook.close()
    return outcomes


def run_round(scenario: Path, raw_dir: Root, groups: list[list], settle: Callable) -> None:
    """Send the groups of CellTrials (cells that share a server) to the cluster, those of one
    server (server_of) as one task, and settle(ct, run_id or None when not stored, error) every
    trial as its task ends."""
    import ray

    remote = ray.remote(max_retries=RETRIES, retry_exceptions=False)(measure_group)
    text = scenario.read_text()
    tasks: dict[str, list] = {}
    for group in groups:
        tasks.setdefault(server_of(group[0].cell), []).extend(group)
    running = {}
    for cts in tasks.values():
        trials = [{"cell_id": ct.cell.cell_id, "trial": ct.next_trial, "series_id": ct.series_id,
                   "run_id": store.new_run_id()} for ct in cts]
        ref = remote.options(name=f"gaplab:{cts[0].cell.server_key}", **needs(cts[0].cell.runtime)).remote(
            str(scenario.resolve()), text, str(raw_dir), trials)
        running[ref] = (cts, trials)
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                cts, trials = running.pop(ref)
                for ct, t, outcome in zip(cts, trials, _outcomes(ref, raw_dir, trials)):
                    settle(ct, t["run_id"] if outcome["stored"] else None, outcome["error"])
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        raise


def _outcomes(ref, raw_dir: Root, trials: list[dict]) -> list[dict]:
    """A finished task's outcomes in the order of its trials. When Ray gave up on it, a trial its
    attempts stored counts; one a dead attempt was measuring is kept from its part files as an
    interrupted run and counts as failed; the others failed with nothing stored."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        by_id = {o["run_id"]: o for o in ray.get(ref)}
    except RayError as exc:
        why = (f"on its Ray worker: {type(exc.cause).__name__}: {exc.cause}" if isinstance(exc, RayTaskError)
               else f"its Ray worker died ({type(exc).__name__}) and its {RETRIES} retries were spent")
        ids = [t["run_id"] for t in trials]
        kept = set(partfiles.recover(raw_dir, run_ids=set(ids)))
        have = store.stored(raw_dir, ids)
        by_id = {rid: {"run_id": rid, "stored": rid in have, "error": None if rid in have - kept else why}
                 for rid in ids}
    return [by_id[t["run_id"]] for t in trials]
