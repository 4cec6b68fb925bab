"""The quality page's sentences, computed from the frames."""

from __future__ import annotations

import polars as pl

from gaplab.analysis.metrics import number
from gaplab.quality.evaltext import EVAL_TEXT
from gaplab.quality.questions import FEW_SHOT
from gaplab.report.markup import plain


def setup_story(quality: pl.DataFrame) -> str:
    """What was scored and asked, from the stored rows."""
    if quality.is_empty():
        return "No quality runs for this machine yet: run `gaplab quality scenarios/local-cpu.yaml` (`make report` does)."
    fid = quality.filter(pl.col("runtime") == "llama-perplexity")
    task = quality.filter(pl.col("metric") == "task_accuracy_pct")
    parts = []
    if not fid.is_empty():
        tokens = fid["n"].drop_nulls()
        parts.append(f"Fidelity: `llama-perplexity` scored {int(number(tokens.max())) if len(tokens) else 'no'} tokens of "
                     f"{EVAL_TEXT.citation} (its prose chapters and appendices, {EVAL_TEXT.license.split(' (')[0]}, "
                     f"from Debian's {EVAL_TEXT.package} {EVAL_TEXT.version} package, sha256 {EVAL_TEXT.sha256[:12]}…), "
                     "each token with the 256 before it as context, first with each model's highest-precision file, "
                     "then with every other file against the saved distributions.")
    if not task.is_empty():
        sets = ", ".join(plain(s) for s in sorted(set(task["eval_set"].to_list())))
        parts.append(f"Task accuracy: {int(number(task['n'].max()))} questions ({sets}: sums, differences, products, "
                     "the next number, unit conversions, the larger or smaller of four numbers, the letter "
                     f"before or after) asked at temperature 0 through each runtime's API with {len(FEW_SHOT)} "
                     "worked examples first; an answer is right when its number (within the item's tolerance), "
                     "its letter or its exact text matches. Intervals are 95% Wilson intervals.")
    return "\n\n".join(parts)


def derivation_story(frame: pl.DataFrame) -> str:
    """Which files were made here from the shipped 4-bit file (their quality is bounded by it)."""
    out = []
    for (model,), g in frame.group_by(["model"], maintain_order=True):
        made = g.filter(pl.col("model_note").fill_null("").str.starts_with("requantized"))
        shipped = g.filter(~pl.col("model_note").fill_null("").str.starts_with("requantized"))
        if made.is_empty():
            continue
        src = ", ".join(map(plain, shipped["quant"].unique(maintain_order=True).to_list())) or "shipped 4-bit"
        made_quants = ", ".join(map(plain, made["quant"].unique(maintain_order=True).to_list()))
        out.append(f"**{plain(model)}**: {made_quants} were made on this "
                   f"machine from the shipped {src} file, so they cannot hold more than it does; here F16 is the "
                   f"{src} weights widened, not the original model's F16.")
    if not out:
        return ""
    return ("These figures compare files with one another, not with the original models: " + " ".join(out)
            + " A shipped file's distance from F16 therefore measures arithmetic (how activations are "
            "rounded in its matrix products), while a requantized file's distance adds the weights it lost.")


def fidelity_story(frame: pl.DataFrame) -> str:
    out = []
    for (model,), g in frame.group_by(["model"], maintain_order=True):
        g = g.unique(subset=["quant"], keep="first", maintain_order=True)
        ref = g.filter(pl.col("quant") == pl.col("reference"))
        others = g.filter((pl.col("quant") != pl.col("reference")) & pl.col("kld").is_not_null()).sort("kld")
        if ref.is_empty() or others.is_empty():
            continue
        r = ref.row(0, named=True)
        parts = [f"{plain(o['quant'])} KLD {o['kld']:.4f} ± {o['kld_pm']:.4f}, same top token {o['top1_pct']:.1f}% ± "
                 f"{o['top1_pm']:.1f}, perplexity ×{o['ppl_ratio']:.3f} ± {o['ppl_ratio_pm']:.3f}"
                 for o in others.iter_rows(named=True)]
        out.append(f"**{plain(model)}** against its {plain(r['reference'])} file (perplexity {r['ppl']:.2f} ± {r['ppl_pm']:.2f} "
                   f"over {r['tokens']} tokens): " + "; ".join(parts) + ".")
    return "\n\n".join(out)


def pick_story(frame: pl.DataFrame, max_ppl_increase_pct: float = 2.0) -> str:
    """Per model: the fastest quant at one user whose perplexity stays within max_ppl_increase_pct of
    the reference file's and whose task accuracy is not clearly below it; and why the others lose."""
    out = []
    for (model,), g in frame.group_by(["model"], maintain_order=True):
        g = g.drop_nulls("decode_tok_s").unique(subset=["quant"], keep="first", maintain_order=True)
        ref = g.filter(pl.col("quant") == pl.col("reference"))
        if ref.is_empty():
            continue
        r = ref.row(0, named=True)
        limit = 1 + max_ppl_increase_pct / 100
        ref_quant = plain(r["quant"])

        def fails(row: dict) -> str | None:
            if row["ppl_ratio"] is not None and row["ppl_ratio"] > limit:
                return f"its perplexity is {100 * (row['ppl_ratio'] - 1):+.1f}% against {ref_quant}'s"
            if row["acc_high"] is not None and r["accuracy_pct"] is not None and row["acc_high"] < r["accuracy_pct"]:
                return (f"its task accuracy ({row['accuracy_pct']:.1f}%, 95% interval up to {row['acc_high']:.1f}%) "
                        f"is below {ref_quant}'s {r['accuracy_pct']:.1f}%")
            return None

        ok = [row for row in g.sort("decode_tok_s", descending=True).iter_rows(named=True) if fails(row) is None]
        if not ok:
            continue
        best = ok[0]
        text = f"**{plain(model)}**: pick **{plain(best['quant'])}** on this machine"
        if best["quant"] == r["quant"]:
            text += (f": it is the fastest acceptable file ({best['decode_tok_s']:.1f} tok/s at one user, "
                     f"{best['size_mb']:.0f} MB).")
        else:
            text += (f". At one user it decodes {best['decode_tok_s']:.1f} tok/s, {best['decode_tok_s'] / r['decode_tok_s']:.2f}× "
                     f"{ref_quant}'s {r['decode_tok_s']:.1f}, from a {best['size_mb']:.0f} MB file instead of "
                     f"{r['size_mb']:.0f} MB; its perplexity is {100 * (best['ppl_ratio'] - 1):+.1f}% against "
                     f"{ref_quant}'s (KLD {best['kld']:.4f}, same top token {best['top1_pct']:.1f}%)")
            if best["accuracy_pct"] is not None and r["accuracy_pct"] is not None:
                text += (f" and its task accuracy is {best['accuracy_pct']:.1f}% [{best['acc_low']:.1f}–"
                         f"{best['acc_high']:.1f}] against {r['accuracy_pct']:.1f}%")
            text += "."
        faster = [row for row in g.iter_rows(named=True)
                  if row["decode_tok_s"] > best["decode_tok_s"] and fails(row)]
        for row in faster:
            text += f" {plain(row['quant'])} is faster ({row['decode_tok_s']:.1f} tok/s) but {fails(row)}."
        out.append(text)
    if not out:
        return "No model has both quality and speed figures yet: run `gaplab sweep` and `gaplab quality`."
    return (f"The rule: the fastest file at one user whose perplexity is within {max_ppl_increase_pct:g}% of the "
            "highest-precision file's and whose task accuracy is not clearly lower (its 95% interval reaches the "
            "reference's accuracy).\n\n" + "\n\n".join(out))


def agreement_story(table: pl.DataFrame) -> str:
    t = table.filter(pl.col("workload").str.starts_with("agree:"))
    if t.is_empty():
        return ""
    out = []
    for row in t.iter_rows(named=True):
        # an attached server may return no token ids: then no common prefix is counted
        prefix = ("." if row["mean_prefix_tokens"] is None or row["mean_tokens"] is None else
                  f"; on average the first {row['mean_prefix_tokens']:.1f} of {row['mean_tokens']:.1f} tokens match.")
        out.append(f"{plain(row['model'])} {plain(row['quant'])}: {plain(row['runtime_a'])} and {plain(row['runtime_b'])} wrote identical "
                   f"continuations for {row['identical_pct']:.0f}% of {row['prompts']} prompts" + prefix)
    diff = t.filter(pl.col("identical_pct") < 100)
    tail = ("Every pair matched token for token." if diff.is_empty() else
            "Once two continuations part they rarely meet again: at that token the two runtimes' arithmetic "
            "(a sequence decoded in a batch with others, or alone, with its prompt cached or not) ranked two "
            "near-equal candidates differently, and greedy decoding follows whichever came first.")
    return "- " + "\n- ".join(out) + "\n\n" + tail


def example_pair(table: pl.DataFrame) -> str:
    """The continuations of one prompt where two runtimes differ (the pair that agrees least)."""
    t = table.filter(pl.col("example_a").is_not_null() & pl.col("workload").str.starts_with("agree:"))
    if t.is_empty():
        return ""
    r = t.sort("identical_pct").row(0, named=True)
    tail = " ".join(r["example_prompt"].split()[-12:])
    shared = ("differ" if r["example_diverges_at"] is None else  # no token ids from the server
              f"share their first {r['example_diverges_at']} tokens")
    return (f"An example ({plain(r['model'])} {plain(r['quant'])}): the passage ends “…{plain(tail)}” and the two "
            f"continuations {shared}.\n\n"
            f"- **{plain(r['runtime_a'])}**: “{plain(r['example_a'])}”\n"
            f"- **{plain(r['runtime_b'])}**: “{plain(r['example_b'])}”")
