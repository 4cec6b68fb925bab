"""The sentences of the page on where the time goes: how far the server's own times and the client's
agree, each waterfall's gap in words, and what the roofline says of each cell."""

from __future__ import annotations

import polars as pl

from gaplab.report import claims as cl
from gaplab.report.markup import plain


def decomposition_check(check: dict) -> str:
    """How well the server's own times and the client's agree, for the requests the server timed."""
    if not check:
        return "No runtime here reports its own per-request times, so every part below is the client's."
    return (f"For the {check['requests']} requests whose server timed them itself, the server's decode time "
            f"is within {check['decode_vs_span_pct']:.2f}% of the client's first-to-last-token span (median), "
            f"and the part neither side explains (after the last token, plus any disagreement) is "
            f"{check['tail_pct']:.2f}% of the latency; prompt processing is {check['prompt_in_ttft_pct']:.0f}% "
            f"of their time to first token.")


def waterfall_story(frame: pl.DataFrame) -> str:
    """Which parts carry the difference between two configurations (decompose.waterfall)."""
    if frame.is_empty():
        return ""
    a, b, total = plain(frame["step"][0]), plain(frame["step"][-1]), frame.row(-1, named=True)
    metric, pair = plain(frame["metric"][0]), plain(frame["pair"][0])
    ms = lambda x: f"{abs(x):,.0f} ms" if abs(x) >= 10 else f"{abs(x):.1f} ms"  # noqa: E731
    def iv(r: dict) -> str:
        if r["lo"] is None:
            return "(no interval)"
        digits = 0 if max(abs(r["lo"]), abs(r["hi"])) >= 10 else 1
        return f"[{r['lo']:+,.{digits}f} to {r['hi']:+,.{digits}f} ms]"

    if total["lo"] is not None and total["lo"] <= 0 <= total["hi"]:
        text = (f"**{pair}**: the means of {metric} do not separate {b} from {a} "
                f"{iv(total)} (the claims table compares medians, with the spread pooled over each runtime's "
                f"cells). ")
    else:
        text = (f"**{pair}**: {b}'s mean {metric} is {ms(total['delta'])} "
                f"{'lower' if total['delta'] < 0 else 'higher'} than {a}'s {iv(total)}. ")
    parts = frame.filter((pl.col("kind") == "part") & ((pl.col("lo") > 0) | (pl.col("hi") < 0)))
    parts = parts.sort(pl.col("delta").abs(), descending=True)
    if parts.is_empty():
        return text + "No single part differs beyond its interval."
    items = [f"{plain(r['step'])} {'+' if r['delta'] > 0 else '−'}{ms(r['delta'])} {iv(r)}"
             for r in parts.iter_rows(named=True)]
    return text + "Parts that differ beyond their intervals, largest first: " + "; ".join(items) + "."


def roofline_story(frame: pl.DataFrame, bandwidth: pl.DataFrame) -> str:
    """The bandwidth the bound uses, and how far from it each configuration's decode stays."""
    if bandwidth.is_empty():
        return ("No memory bandwidth is stored for this machine yet: `gaplab sweep` measures it before its "
                "first trial.")
    cpu = bandwidth.filter(pl.col("device") == "cpu")  # roofline.bandwidth names the device of older rows
    by = cpu.group_by("threads_used").agg(pl.col("gb_s")).sort("threads_used")
    bw = "; ".join(f"{r['threads_used']} thread{'s' if r['threads_used'] > 1 else ''}: "
                   + " and ".join(f"{v:.1f}" for v in r["gb_s"]) + " GB/s" for r in by.iter_rows(named=True))
    text = (f"Memory bandwidth measured here ({plain(cpu['method'][0])}), one figure per repeat: {bw}."
            if not cpu.is_empty() else "")
    text += "".join(f" {plain(r['device'])}: {r['gb_s']:.0f} GB/s, its peak ({plain(r['method'])})."
                    for r in bandwidth.filter(pl.col("device") != "cpu").iter_rows(named=True))
    if frame.is_empty():
        return text + " No cell of this machine stored the bytes its model reads per step (runs before schema 5)."
    parts = []
    for key, g in frame.group_by("runtime", "quant", "model", maintain_order=True):
        one, most = g.row(0, named=True), g.row(-1, named=True)
        iv = f"[{one['pct_lo']:.0f}–{one['pct_hi']:.0f}]" if one["pct_lo"] is not None else "(one trial)"
        parts.append(f"{plain(key[0])} {plain(key[1])} ({plain(key[2])}) {one['pct']:.0f}% {iv} "
                     f"at {cl.users_text(one['concurrency'])}, {most['pct']:.0f}% at {cl.users_text(most['concurrency'])}")
    return (text + " Share of the bandwidth-bound decode speed reached: " + "; ".join(parts) + ". "
            "A file that reads fewer bytes per step raises the bound; only kernels that keep up with "
            "memory turn that into speed.")
