"""Measuring a scenario's quality: what is not yet stored for this machine, run and written as quality runs."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from gaplab import provision
from gaplab.measure.records import RunIdentity
from gaplab.provision import SetupError, llama_build, models
from gaplab.quality.ask import Answer, accuracy_rows, ask_all, continue_all
from gaplab.quality.evaltext import EVAL_TEXT, eval_text
from gaplab.quality.perplexity import CHUNKS, CTX, TOOL_THREADS, FidelityResult, ToolOutputError, fidelity, reference_quant
from gaplab.quality.questions import (
    AGREE_PROMPTS,
    AGREE_TOKENS,
    AGREE_WORDS,
    EVAL_SET,
    MAX_TOKENS,
    PROMPT_VERSION,
    continuation_items,
    load_eval_set,
)
from gaplab.runtimes import kinds
from gaplab.spec.config import RAW_DIR
from gaplab.spec.scenario import stable_key

if TYPE_CHECKING:
    from tqdm import tqdm

    from gaplab.spec.scenario import Cell


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _file_facts(model: str, quant: str) -> dict:
    path = models.model_path(model, quant)
    try:
        info = models.model_info(model, quant)
    except SetupError:
        info = {}
    return {"model_file": path.name, "model_sha256": info.get("sha256"),
            "model_bytes": path.stat().st_size if path.exists() else None, "model_note": info.get("note")}


@dataclass
class Part:
    """One run of a server session: what is asked, under which name and digest."""
    kind: str  # "task" (the question set) or "agree" (the continuation prompts)
    eval_name: str
    eval_sha: str
    items: list


@dataclass
class Job:
    """One server session: a runtime cell of one model and quant, and what to ask it."""
    cell: Cell  # its runtime, model and quant (workload and concurrency do not matter here)
    parts: list[Part]
    cost: float = 0.0  # rough seconds, to start the longest jobs first


@dataclass
class QualityResult:
    fidelity_runs: int = 0
    task_runs: int = 0
    agreement_runs: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fidelity_key(model: str, quant: str, reference: str, chunks: int, ctx: int) -> str:
    return stable_key({"kind": "fidelity", "model": model, "quant": quant, "reference": reference,
                      "reference_sha256": _file_facts(model, reference)["model_sha256"],
                      "model_sha256": _file_facts(model, quant)["model_sha256"], "text": EVAL_TEXT.sha256,
                      "chunks": chunks, "ctx": ctx, "llama_cpp": llama_build.LLAMA_CPP_PYTHON})


def _session_cell(cell, kind: str, eval_name: str, eval_sha: str, concurrency: int) -> dict:
    """What a task or agreement run names itself; the rest of its identity is its server cell's."""
    rt = cell.runtime
    workload = f"{kind}:{eval_name}"
    spec = {"kind": kind, "runtime": rt.name, "runtime_kind": rt.kind, "flags": rt.launch_flags(),
            "model": cell.model.name, "api": cell.model.api, "quant": cell.quant, "eval_sha256": eval_sha,
            "concurrency": concurrency,
            "prompt": PROMPT_VERSION if kind == "task" else [AGREE_PROMPTS, AGREE_WORDS, AGREE_TOKENS],
            "max_tokens": MAX_TOKENS if kind == "task" else AGREE_TOKENS}
    return {"cell_id": f"quality/{rt.name}/{cell.model.name}/{cell.quant}/{workload}", "cell_key": stable_key(spec),
            "workload": workload, "concurrency": concurrency}


def _gaplab_version() -> str:
    import gaplab

    return gaplab.__version__


def measure(scenario: str | Path, raw_dir: Path = RAW_DIR, force: bool = False, chunks: int = CHUNKS,
            eval_path: Path | None = None, runtimes: list[str] | None = None, task_on_all: bool = False,
            progress: bool = True) -> QualityResult:
    """Measure a scenario's quality, skipping what is already stored for this machine.

    Fidelity for every local llama.cpp model and quant of the scenario; the question set
    through the scenario's first runtime that serves each model and quant (every runtime
    with task_on_all); the continuation prompts through every runtime, for agreement.
    """
    from tqdm import tqdm

    from gaplab.machine.hardware import hardware, machine_id
    from gaplab.spec.scenario import load_scenario
    from gaplab.storage import store

    t_start = time.monotonic()
    sc = load_scenario(scenario)
    items = load_eval_set(eval_path or EVAL_SET)  # a bad file stops here, before anything runs
    hw = {**hardware(), "machine_id": machine_id()}
    cells = sc.cells()
    if runtimes:
        known = {c.runtime.name for c in cells}
        unknown = [r for r in runtimes if r not in known]
        if unknown:
            raise ValueError(f"--runtime: {unknown[0]!r} is not in {scenario} (runtimes: {', '.join(sorted(known))})")
        cells = [c for c in cells if c.runtime.name in runtimes]
    else:
        cells = [c for c in cells if kinds()[c.runtime.kind].quick]  # e.g. not vLLM CPU: minutes to start
    sessions: dict[str, Cell] = {}
    for c in cells:
        sessions.setdefault(c.server_key, c)
    done = set() if force else store.completed_quality(raw_dir, hw["machine_id"])
    eval_file = Path(eval_path or EVAL_SET)
    eval_name, eval_sha = eval_file.stem, provision.sha256(eval_file)
    text = eval_text()
    agree_items = continuation_items(text)
    result = QualityResult()

    # fidelity: llama-perplexity on the local files, one model at a time, -t 2 (nothing else runs)
    local_models: dict[str, list[str]] = {}
    for c in sessions.values():
        if c.runtime.kind == "llamacpp" and c.model.name in models.MODELS and c.quant not in local_models.get(
                c.model.name, []):
            local_models.setdefault(c.model.name, []).append(c.quant)
    if local_models and not llama_build.llama_built():
        raise SetupError("llama-perplexity is not built: run 'gaplab local setup'")
    fid_todo = {}
    for model, quants in local_models.items():
        missing = [q for q in quants if not models.model_path(model, q).exists()]
        if missing:
            raise SetupError(f"model {model} {missing[0]} is not provisioned: run 'gaplab local setup'")
        ref = reference_quant(model, quants)
        todo = [q for q in quants if _fidelity_key(model, q, ref, chunks, CTX) not in done]
        result.skipped += len(quants) - len(todo)
        if todo:
            fid_todo[model] = (ref, todo)
    steps = sum(len(t) + (ref not in t) for ref, t in fid_todo.values())
    with tqdm(total=steps, desc="quality: llama-perplexity", unit="run", disable=not progress or not steps,
              file=sys.stdout, mininterval=1.0) as bar:
        for model, (ref, todo) in fid_todo.items():
            bar.set_postfix_str(model)
            meta = {"gaplab_version": _gaplab_version(), "scenario": sc.name, "text": asdict(EVAL_TEXT),
                    "chunks": chunks, "ctx": CTX}
            try:
                found = fidelity(model, todo, ref, text, chunks, CTX, on_step=lambda q: bar.update())
            except (ToolOutputError, SetupError) as exc:
                result.failed.append(f"fidelity {model}: {exc}"[:400])
                for q in todo:
                    _write_fidelity(raw_dir, sc.name, hw, model, q, ref, chunks, None, meta, str(exc))
                continue
            for r in found:
                _write_fidelity(raw_dir, sc.name, hw, model, r.quant, ref, chunks, r, meta, None)
                result.fidelity_runs += 1

    # task accuracy and agreement: one server session per runtime cell, two at a time
    first_runtime: dict[tuple, str] = {}  # in the scenario's order of runtimes (cells come sorted by name)
    order = {r.name: i for i, r in enumerate(sc.runtimes)}
    for c in sorted(sessions.values(), key=lambda c: order[c.runtime.name]):
        first_runtime.setdefault((c.model.name, c.quant), c.runtime.name)
    # a model's largest file stands for its size: every quant of Gemma 3 pays for its 262k vocabulary
    scale = {m: max((models.model_path(m, c.quant).stat().st_size for c in sessions.values()
                     if c.model.name == m and models.model_path(m, c.quant).exists()), default=5e8)
             for m in {c.model.name for c in sessions.values()}}
    jobs = []
    for c in sessions.values():
        conc = _concurrency(c.runtime)
        wants_task = task_on_all or first_runtime[(c.model.name, c.quant)] == c.runtime.name
        task = wants_task and _session_cell(c, "task", eval_name, eval_sha, conc)["cell_key"] not in done
        agree = _session_cell(c, "agree", EVAL_TEXT.name, EVAL_TEXT.sha256, conc)["cell_key"] not in done
        result.skipped += (wants_task and not task) + (not agree)
        if task or agree:
            parts = ([Part("task", eval_name, eval_sha, items)] if task else []) + \
                    ([Part("agree", EVAL_TEXT.name, EVAL_TEXT.sha256, agree_items)] if agree else [])
            jobs.append(Job(c, parts, cost=(len(items) * task + AGREE_PROMPTS * 4 * agree)
                            * (1 + scale[c.model.name] / 2e8)))
    jobs.sort(key=lambda j: -j.cost)
    total = sum(len(p.items) for j in jobs for p in j.parts)
    with tqdm(total=total, desc="quality: questions", unit="req", disable=not progress or not total,
              file=sys.stdout, mininterval=1.0) as bar:
        _run_jobs(jobs, raw_dir, bar, result, task_on_all)
    result.seconds = time.monotonic() - t_start
    return result


def _concurrency(rt) -> int:
    """Requests in flight: one per slot where gaplab starts the server, so a batching runtime batches."""
    return min(rt.parallel, 8) if rt.started_here else 4


def _write_fidelity(raw_dir, scenario: str, hw: dict, model: str, quant: str, ref: str, chunks: int,
                    res: FidelityResult | None, meta: dict, error: str | None) -> None:
    from gaplab.storage import store
    run_id = store.new_run_id()
    # a tool run on a file, not a server cell: no sessions.run_identity(cell, ...) to start from
    ident = RunIdentity(
        run_id=run_id, machine_id=hw["machine_id"], series_id=run_id, trial=1,
        cell_id=f"quality/llama-perplexity/{model}/{quant}/text:{EVAL_TEXT.name}",
        cell_key=_fidelity_key(model, quant, ref, chunks, CTX), scenario=scenario, hardware_id=hw["hardware_id"],
        runtime="llama-perplexity", runtime_kind="llamacpp", runtime_version=llama_build.llama_version(),
        model=model, quant=quant, workload=f"text:{EVAL_TEXT.name}", concurrency=1, threads=TOOL_THREADS,
        parallel=1)
    common = {**_file_facts(model, quant), "reference": ref, "eval_set": EVAL_TEXT.name,
              "eval_sha256": EVAL_TEXT.sha256, "gaplab_version": meta["gaplab_version"], "measured_at": _now()}
    if res is None:
        rows = [{**common, "status": "failed", "error": error}]
    else:
        n = int(res.metrics["n_tokens"][0])
        units = {"perplexity": "", "perplexity_base": "", "ppl_ratio": "", "kld_mean": "nats", "kld_p99": "nats",
                 "rms_dp_pct": "%", "top1_agreement_pct": "%"}
        rows = [{**common, "metric": m, "value": v, "uncertainty": u, "n": n, "unit": units[m], "status": "complete",
                 "command": res.command} for m, (v, u) in res.metrics.items() if m != "n_tokens"]
    store.write_quality(raw_dir, ident, rows, {**meta, "status": rows[0]["status"]})


@dataclass
class Asking:
    """One part of a quality session as a measurement: ask the server, store the run."""
    cell: Cell
    part: Part
    raw_dir: Path
    bar: tqdm  # one step per answer
    result: QualityResult
    tally: threading.Lock  # sessions run on two threads; each updates the result under it
    token_ids: bool = False  # also ask for the completions' token ids (task_on_all)

    def run(self, srv) -> None:
        fn = ask_all if self.part.kind == "task" else continue_all
        extra = {"token_ids": self.token_ids} if self.part.kind == "task" else {}
        try:
            got = asyncio.run(fn(srv.openai_url, srv.served_model, self.cell.model.api, self.part.items,
                                 _concurrency(self.cell.runtime), srv.api_key, on_done=lambda a: self.bar.update(),
                                 **extra))
        except Exception as exc:  # the server died mid-way: this run fails, the others go on
            self._store(srv, None, f"{type(exc).__name__}: {exc}"[:500])
            return
        self._store(srv, got, None)

    def fail(self, error: str) -> None:
        self._store(None, None, error[:500])

    def _store(self, srv, got: list[Answer] | None, error: str | None) -> None:
        from gaplab.storage import store
        from gaplab.sweep.servers import run_identity

        c, part = self.cell, self.part
        kind, name, sha = part.kind, part.eval_name, part.eval_sha
        ident = run_identity(c, srv, store.new_run_id(), **_session_cell(c, kind, name, sha,
                                                                         _concurrency(c.runtime)))
        facts = _file_facts(c.model.name, c.quant) if c.runtime.kind == "llamacpp" else {}
        if srv is not None:
            facts = {**facts, "model_file": srv.model_file or facts.get("model_file"),
                     "model_sha256": srv.model_sha256 or facts.get("model_sha256")}
        common = {**facts, "eval_set": name, "eval_sha256": sha, "measured_at": _now(),
                  "gaplab_version": _gaplab_version(), "command": srv.launch_command if srv else None}
        errors = sum(a.error is not None for a in got) if got else 0
        if got is None or errors == len(got):
            why = error or (got[0].error if got else "not run")
            rows = [{**common, "status": "failed", "error": why}]
            with self.tally:
                self.result.failed.append(f"{kind} {c.server_key}: {why}"[:400])
        elif kind == "task":
            rows = [{**common, **r, "status": "complete"} for r in accuracy_rows(got)]
        else:
            rows = [{**common, "metric": "continuations", "value": float(len(got) - errors), "n": len(got),
                     "unit": "prompts", "status": "complete"}]
        meta = {"gaplab_version": _gaplab_version(), "status": rows[0]["status"],
                "server": srv.to_dict() if srv else None}
        store.write_quality(self.raw_dir, ident, rows, meta, answers=[a.row() for a in got] if got else [])
        with self.tally:
            if rows[0]["status"] == "complete":
                self.result.task_runs += kind == "task"
                self.result.agreement_runs += kind == "agree"


def _run_jobs(jobs: list[Job], raw_dir: Path, bar, result: QualityResult, task_on_all: bool) -> None:
    """Two server sessions at a time: with -t 1 servers, that keeps both cores busy."""
    from concurrent.futures import ThreadPoolExecutor

    from gaplab.sweep.servers import ServerPool

    tally = threading.Lock()
    pool = ThreadPoolExecutor(max_workers=2)
    with ServerPool() as server_pool:
        try:
            for f in [pool.submit(server_pool.serve, j.cell,
                                  [Asking(j.cell, p, raw_dir, bar, result, tally, task_on_all) for p in j.parts])
                      for j in jobs]:
                f.result()
        finally:  # on Ctrl-C, start no new session; the running ones stop their servers as they end
            pool.shutdown(wait=True, cancel_futures=True)
