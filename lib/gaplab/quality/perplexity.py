"""Fidelity: llama-perplexity scores the evaluation text with a reference file, then every quant against it."""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gaplab.provision import SetupError, llama_build, models
from gaplab.quality.evaltext import QUALITY_DIR, eval_text

# llama-perplexity: 4 chunks of 512 tokens score 4 x 255 tokens (the second half of each
# chunk, so every scored token has 256 tokens of context). Gemma's 262k vocabulary makes
# the saved distributions 134 MB per chunk; more chunks narrow the intervals and cost time.
CHUNKS = 4
CTX = 512
TOOL_THREADS = os.cpu_count() or 1  # nothing else runs while llama-perplexity does (2 here)


class ToolOutputError(RuntimeError):
    """llama-perplexity did not print what gaplab reads: its format changed, or the run failed."""


_NUM = r"(-?(?:\d+(?:\.\d*)?|nan|inf))"
_PM = r"\s*(?:±|\+/-)\s*"
# label in the output -> (metric, has a ± value)
KLD_LINES = {
    "Mean PPL(Q)": ("perplexity", True),
    "Mean PPL(base)": ("perplexity_base", True),
    "Mean PPL(Q)/PPL(base)": ("ppl_ratio", True),
    "Mean    KLD": ("kld_mean", True),
    "99.0%   KLD": ("kld_p99", False),
    "RMS Δp": ("rms_dp_pct", True),
    "Same top p": ("top1_agreement_pct", True),
}


def _tail(out: str, n: int = 2) -> str:
    lines = [s.strip() for s in out.strip().splitlines() if s.strip()]
    return " | ".join(lines[-n:])[-300:]


def _value(out: str, label: str, with_pm: bool) -> tuple[float, float | None]:
    pattern = re.escape(label) + r"\s*:\s*" + _NUM + (_PM + _NUM if with_pm else "")
    m = re.search(pattern, out)
    if not m:
        raise ToolOutputError(f"llama-perplexity printed no '{label}' line: its output format changed or the "
                              f"run failed; last lines: {_tail(out)}")
    value = float(m.group(1))
    unc = float(m.group(2)) if with_pm else None
    if not math.isfinite(value):
        raise ToolOutputError(f"llama-perplexity printed {m.group(0).strip()!r}: not a finite number")
    if unc is not None and not math.isfinite(unc):
        unc = None  # a file against itself has zero variance and prints "± -nan": unknown, not zero
    return value, unc


def _scored_tokens(out: str, what: str) -> int:
    m = re.search(what + r": \w+ (?:perplexity )?over (\d+) chunks, n_ctx=(\d+)", out)
    if not m:
        raise ToolOutputError(f"llama-perplexity printed no '{what}: ... over N chunks, n_ctx=C' line; "
                              f"last lines: {_tail(out)}")
    chunks, ctx = int(m.group(1)), int(m.group(2))
    return chunks * (ctx - 1 - ctx // 2)  # it scores the second half of each chunk


def parse_base(out: str) -> dict[str, tuple[float, float | None]]:
    """The reference run (--kl-divergence-base): its own perplexity, with its ± (one standard error)."""
    if "tokenizes to only" in out:
        raise ToolOutputError(f"the evaluation text is too short for the context size: {_tail(out, 1)}")
    m = re.search(r"Final estimate: PPL = " + _NUM + _PM + _NUM, out)
    if not m:
        raise ToolOutputError("llama-perplexity printed no 'Final estimate: PPL = X +/- Y' line: its output "
                              f"format changed or the run failed; last lines: {_tail(out)}")
    ppl, unc = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(ppl) and ppl > 0):
        raise ToolOutputError(f"llama-perplexity printed {m.group(0)!r}: not a usable perplexity")
    return {"perplexity": (ppl, unc), "n_tokens": (_scored_tokens(out, "perplexity"), None)}


def parse_kld(out: str) -> dict[str, tuple[float, float | None]]:
    """A --kl-divergence run: every figure of KLD_LINES with its ± where printed."""
    res = {metric: _value(out, label, pm) for label, (metric, pm) in KLD_LINES.items()}
    res["n_tokens"] = (_scored_tokens(out, "kl_divergence"), None)
    return res


def perplexity_command(model_file: Path, logits: Path, text: Path | None, chunks: int = CHUNKS,
                       ctx: int = CTX, threads: int = TOOL_THREADS) -> list[str]:
    """text given: score it and save the distributions (the reference); None: compare with them."""
    cmd = [str(llama_build.tool_path("llama-perplexity")), "-m", str(model_file), "-c", str(ctx), "-t", str(threads),
           "--kl-divergence-base", str(logits)]
    if text is not None:
        return cmd + ["-f", str(text), "--chunks", str(chunks)]
    return cmd + ["--kl-divergence"]


def _run_tool(cmd: list[str], timeout: float = 900) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ToolOutputError(f"llama-perplexity took more than {timeout:.0f} s; use fewer --chunks") from None
    out = res.stdout + "\n" + res.stderr
    if res.returncode != 0:
        raise ToolOutputError(f"llama-perplexity exited with code {res.returncode}: {_tail(out)}")
    return out


def reference_quant(model: str, quants: list[str]) -> str:
    """The highest-precision file of a model: the largest one (F32 > F16 > Q8_0 > ... )."""
    return max(quants, key=lambda q: models.model_path(model, q).stat().st_size)


@dataclass
class FidelityResult:
    quant: str
    reference: str
    metrics: dict[str, tuple[float, float | None]]
    command: str
    seconds: float


def fidelity(model: str, quants: list[str], reference: str | None = None, text: Path | None = None,
             chunks: int = CHUNKS, ctx: int = CTX, self_check: bool = False, on_step=None) -> list[FidelityResult]:
    """Score every quant of one local model against its highest-precision file.

    quants may lack the reference: it is scored first all the same, since the others need
    its saved distributions. self_check also compares the reference with itself (KLD ~ 0).
    The distributions file (n_vocab x scored tokens x 2 bytes) is deleted at the end.
    """
    for q in quants + ([reference] if reference else []):
        if not models.model_path(model, q).exists():
            raise SetupError(f"model {model} {q} is not provisioned: run 'gaplab local setup --model {model}'")
    if not llama_build.llama_built():
        raise SetupError("llama-perplexity is not built: run 'gaplab local setup'")
    reference = reference or reference_quant(model, quants)
    text = text or eval_text()
    QUALITY_DIR.mkdir(parents=True, exist_ok=True)
    logits = QUALITY_DIR / f"{model}-{reference}-{os.getpid()}.logits"
    results = []
    try:
        cmd = perplexity_command(models.model_path(model, reference), logits, text, chunks, ctx)
        t0 = time.monotonic()
        base = parse_base(_run_tool(cmd))
        if reference in quants and not self_check:
            results.append(FidelityResult(reference, reference, base, " ".join(cmd), time.monotonic() - t0))
        if on_step:
            on_step(reference)
        for q in quants:
            if q == reference and not self_check:
                continue
            cmd = perplexity_command(models.model_path(model, q), logits, None, chunks, ctx)
            t0 = time.monotonic()
            res = parse_kld(_run_tool(cmd))
            if abs(res["perplexity_base"][0] - base["perplexity"][0]) > 1e-3 * base["perplexity"][0]:
                # both runs scored the same tokens; a mismatch means the file was not the one we wrote
                raise ToolOutputError(f"{model} {q}: reference perplexity {res['perplexity_base'][0]} differs "
                                      f"from the reference run's {base['perplexity'][0]}")
            results.append(FidelityResult(q, reference, res, " ".join(cmd), time.monotonic() - t0))
            if on_step:
                on_step(q)
    finally:
        logits.unlink(missing_ok=True)
    return results
