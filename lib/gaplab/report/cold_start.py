"""Cold starts: seconds from a server's process start to healthy, to its model loaded and to
its first token, beside published start-up figures."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from gaplab.analysis.metrics import with_run_keys
from gaplab.storage import store


def cold_starts(raw_dir: Path, machine_id: str | None = None) -> pl.DataFrame:
    """Per server gaplab started: seconds from process start to healthy, to the model loaded (the
    same moment where the server loads it before it answers, later for Ollama, which loads it on
    request), and to the first token of a probe request sent then."""
    runs = with_run_keys(store.read_table(raw_dir, "run"))
    if machine_id:
        runs = runs.filter(pl.col("machine_id") == machine_id)
    servers = {}
    for row in runs.iter_rows(named=True):
        started, healthy, first = row["server_started_ns"], row["server_healthy_ns"], row["server_first_token_ns"]
        loaded = row.get("server_loaded_ns") or healthy  # before schema 8: loaded when healthy
        if started is None and (row["schema_version"] or 1) < 4:  # older runs: only in meta_json
            srv = json.loads(row["meta_json"]).get("server") or {}
            started, healthy, first = srv.get("started_ns"), srv.get("healthy_ns"), srv.get("first_token_ns")
            loaded = healthy
        if started and healthy and first:
            servers[(row["runtime"], started)] = {
                "runtime": row["runtime"], "runtime_kind": row["runtime_kind"], "model": row["model"],
                "quant": row["quant"], "to_healthy_s": (healthy - started) / 1e9,
                "to_loaded_s": (loaded - started) / 1e9, "to_first_token_s": (first - started) / 1e9}
    return pl.DataFrame(list(servers.values())).sort("runtime", "model", "quant") if servers else pl.DataFrame()


def cold_start_table(starts: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """Our cold starts (the slowest start of each runtime, model and quant) beside published ones."""
    rows = []
    if not starts.is_empty():
        worst = starts.group_by("runtime", "model", "quant").agg(pl.col("to_healthy_s").max(),
                                                                 pl.col("to_loaded_s").max(),
                                                                 pl.col("to_first_token_s").max())
        for r in worst.iter_rows(named=True):
            label = f"{r['runtime']} · {r['model']} {r['quant']} (here)"
            phases = [("healthy", r["to_healthy_s"]), ("first token", r["to_first_token_s"])]
            if r["to_loaded_s"] > r["to_healthy_s"]:  # a model loaded on request (Ollama): its own bar
                phases.insert(1, ("model loaded", r["to_loaded_s"]))
            rows += [{"who": "measured here", "label": label, "phase": phase, "seconds": seconds, "source": "gaplab"}
                     for phase, seconds in phases]
    pub = reference.filter(pl.col("metric").is_in(["cold_start_s", "startup_compile_s"]))
    for r in pub.iter_rows(named=True):
        rows.append({"who": "published", "label": f"{r['runtime']} {r['quant']} · {r['model']} · {r['hardware']}",
                     "phase": "published cold start" if r["metric"] == "cold_start_s" else "published compile",
                     "seconds": r["value"], "source": r["source"]})
    return pl.DataFrame(rows)
