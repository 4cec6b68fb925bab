"""Altair chart builders used by the notebooks. They read small aggregates from
the report frames (speed.py, quality.py, ...), never raw rows, and every mark carries a tooltip.

`use_site_renderer()` makes charts draw with the Vega bundle that the site ships
in every page's head (site.py), so pages work with no internet; the spec, whose data holds
names and errors from servers, is inlined through markup.script_json. Vega draws titles and
labels as SVG text, and vega-embed's tooltips escape what they show. Tables: markup.table.
"""

from __future__ import annotations

import itertools

import altair as alt
import polars as pl

from gaplab.analysis import stats
from gaplab.report.markup import script_json

_ids = itertools.count()


def _site_html(spec: dict, **_) -> dict:
    """A chart as HTML that draws with the Vega bundle of the page (the site's pages load it in their
    head). In JupyterLab, which has no such bundle, it loads the one `gaplab lab` writes into build/vega
    from the Lab server's files/ route, once per page."""
    div = f"gaplab-chart-{next(_ids)}"
    html = (f'<div id="{div}" class="gaplab-chart"></div>\n<script>(function () {{\n'
            f'  var spec = {script_json(spec)};\n'
            f'  function draw() {{ vegaEmbed("#{div}", spec, {{actions: false, renderer: "svg"}}); }}\n'
            f'  var lab = document.getElementById("jupyter-config-data");\n'
            f'  if (window.vegaEmbed) {{ draw(); }}\n'
            f'  else if (lab) {{\n'
            f'    window.gaplabVega = window.gaplabVega || new Promise(function (loaded) {{\n'
            f'      var s = document.createElement("script"); s.onload = loaded;\n'
            f'      s.src = JSON.parse(lab.textContent).baseUrl + "files/build/vega/vega.js";\n'
            f'      document.head.appendChild(s); }});\n'
            f'    window.gaplabVega.then(draw); }}\n'
            f'  else {{ document.getElementById("{div}").textContent = "This chart draws in the gaplab site '
            f'(make report) and in JupyterLab (make lab); elsewhere run alt.renderers.enable(\'default\')."; }}\n'
            f'}})();</script>')
    return {"text/html": html}


def use_site_renderer() -> None:
    alt.renderers.register("gaplab-site", _site_html)
    alt.renderers.enable("gaplab-site")


def _concurrency_axis(levels: list[int]) -> alt.X:
    return alt.X("concurrency:Q", title="concurrent users",
                 scale=alt.Scale(type="log", base=2, domain=[min(levels or [1]), max(levels or [1])]),
                 axis=alt.Axis(values=levels, format="d"))


def _tooltip(metric: str, y_title: str) -> list:
    return [alt.Tooltip("model:N"), alt.Tooltip("runtime:N"), alt.Tooltip("quant:N"),
            alt.Tooltip("concurrency:Q", title="users"),
            alt.Tooltip(f"{metric}:Q", title=f"{y_title} (mean of trials)", format=",.1f"),
            alt.Tooltip("interval:N", title="95% interval"),
            alt.Tooltip(f"{metric}_sd:Q", title="± (sd across trials)", format=",.2f"),
            alt.Tooltip("trials:Q"), alt.Tooltip("requests:Q", title="measured requests"), alt.Tooltip("errors:Q"),
            alt.Tooltip("error_kinds:N", title="errors by kind"),
            alt.Tooltip("run_ids:N", title="runs (raw rows in data/raw)")]


def _interval_text(frame: pl.DataFrame, metric: str) -> pl.Expr:
    lo, hi = pl.col(f"{metric}_lo"), pl.col(f"{metric}_hi")
    return (pl.when(lo.is_null()).then(pl.lit("1 trial, no interval"))
            .otherwise(lo.round(1).cast(pl.String) + " – " + hi.round(1).cast(pl.String)))


def by_concurrency(summary: pl.DataFrame, metric: str, title: str, y_title: str,
                   row: str | None = None) -> alt.FacetChart:
    """One line per runtime config x quant (colour: runtime, dash: quant), one panel per model
    (and per value of `row` when given), against concurrency; each point's 95% interval as
    a bar (none for a cell with one trial)."""
    df = summary.with_columns(interval=_interval_text(summary, metric)).to_pandas()
    levels = sorted(df["concurrency"].unique().tolist())
    base = alt.Chart(df).encode(
        x=_concurrency_axis(levels), color=alt.Color("runtime:N", title="runtime"),
        tooltip=_tooltip(metric, y_title))
    y = alt.Y(f"{metric}:Q", title=y_title)
    layered = (base.mark_line().encode(y=y, strokeDash=alt.StrokeDash("quant:N", title="quant"))
               + base.mark_rule(strokeWidth=2, opacity=0.6).encode(y=alt.Y(f"{metric}_lo:Q", title=y_title),
                                                                   y2=f"{metric}_hi:Q", detail="quant:N")
               + base.mark_point(filled=True, size=50).encode(y=y, detail="quant:N"))
    facet: dict[str, alt.Column | alt.Row] = {"column": alt.Column("model:N", title=None)}
    if row:
        facet["row"] = alt.Row(f"{row}:N", title=None)
    return layered.properties(width=300, height=220).facet(**facet).properties(title=title).resolve_scale(
        y="independent")


def ttft_long(summary: pl.DataFrame) -> pl.DataFrame:
    """TTFT p50 and p99 as rows (ttft_ms with its _lo, _hi, _sd), for one chart with a panel
    row per percentile."""
    parts = []
    for p in ("p50", "p99"):
        m = f"ttft_{p}_ms"
        parts.append(summary.rename({m: "ttft_ms", f"{m}_lo": "ttft_ms_lo", f"{m}_hi": "ttft_ms_hi",
                                     f"{m}_sd": "ttft_ms_sd"})
                     .select(pl.exclude(r"^ttft_p\d+_ms.*$")).with_columns(percentile=pl.lit(p)))
    return pl.concat(parts)


def with_intervals(frame: pl.DataFrame, metrics: list[str], digits: int = 1) -> pl.DataFrame:
    """Each metric as one text column, "12.3 [11.8–12.9]" (or "12.3 (1 trial)"), for tables."""
    def text(m: str) -> pl.Expr:
        # cast first: a column of one-trial cells' bounds is all null, of no numeric type
        r = lambda c: pl.col(c).cast(pl.Float64).round(digits).cast(pl.String)  # noqa: E731
        return (pl.when(pl.col(f"{m}_lo").is_null()).then(r(m) + " (1 trial)")
                .otherwise(r(m) + " [" + r(f"{m}_lo") + "–" + r(f"{m}_hi") + "]")).alias(m)
    return frame.with_columns(text(m) for m in metrics)


def scaling_bars(table: pl.DataFrame) -> alt.Chart:
    """Throughput multiplier from one user to many: ours beside published figures."""
    df = table.to_pandas()
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("scaling:Q", title="total tok/s at N users ÷ tok/s for one user"),
        y=alt.Y("label:N", sort="-x", title=None, axis=alt.Axis(labelLimit=420)),
        color=alt.Color("who:N", title=None, scale=alt.Scale(domain=["measured here", "published"],
                                                             range=["#d95f02", "#7570b3"])),
        tooltip=[alt.Tooltip("who:N"), alt.Tooltip("source:N"), alt.Tooltip("hardware:N"), alt.Tooltip("model:N"),
                 alt.Tooltip("runtime:N"), alt.Tooltip("quant:N"), alt.Tooltip("users:Q", title="N users"),
                 alt.Tooltip("tok_s_1:Q", title="tok/s, 1 user", format=",.1f"),
                 alt.Tooltip("tok_s_n:Q", title="tok/s, N users", format=",.1f"),
                 alt.Tooltip("scaling:Q", title="multiplier", format=".2f")],
    ).properties(width=420, title="What adding users buys: published figures and this machine")


def timeline(frame: pl.DataFrame, title: str) -> alt.FacetChart:
    """One run over time: one panel per series (requests in flight, queue, KV cache, CPU)."""
    df = frame.to_pandas()
    base = alt.Chart(df).encode(
        x=alt.X("t_s:Q", title="seconds since the first request"),
        y=alt.Y("value:Q", title=None),
        color=alt.Color("series:N", legend=None),
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("t_s:Q", title="t (s)", format=".2f"),
                 alt.Tooltip("value:Q", format=",.1f")])
    return (base.mark_line(interpolate="step-after") + base.mark_point(size=12, filled=True)).properties(
        width=620, height=90).facet(row=alt.Row("series:N", title=None, header=alt.Header(labelAngle=0,
                                                                                         labelAlign="left")),
                                    title=title).resolve_scale(y="independent")


def cold_start_bars(table: pl.DataFrame) -> alt.Chart:
    """Seconds from process start to healthy and to the first token, ours beside published; a
    log axis, since llama.cpp's seconds and vLLM's minutes must both be readable."""
    df = table.to_pandas()
    bars = df["label"].nunique() * max(1, df["phase"].nunique())
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("seconds:Q", title="seconds from process start (log scale)", scale=alt.Scale(type="log")),
        y=alt.Y("label:N", sort="-x", title=None, axis=alt.Axis(labelLimit=420)),
        color=alt.Color("phase:N", title=None, legend=alt.Legend(orient="bottom")),
        yOffset="phase:N",
        tooltip=[alt.Tooltip("who:N"), alt.Tooltip("label:N", title="server"), alt.Tooltip("phase:N"),
                 alt.Tooltip("seconds:Q", format=",.1f"), alt.Tooltip("source:N")],
    ).properties(width=420, height=min(14 * bars, 600),
                 title="Cold start: until the server answers, and until its first token")


def waterfall(frame: pl.DataFrame, unit: str = "ms") -> alt.LayerChart:
    """decompose.waterfall as bars: a's total, each part's change (its 95% interval as a rule),
    b's total (with the interval of the whole difference)."""
    df = frame.with_columns(sign=pl.when(pl.col("kind") == "total").then(pl.lit("total"))
                            .when(pl.col("delta") > 0).then(pl.lit("adds time"))
                            .otherwise(pl.lit("saves time"))).to_pandas()
    order = list(df.sort_values("order")["step"])
    x = alt.X("step:N", sort=order, title=None, axis=alt.Axis(labelAngle=-30, labelLimit=220))
    tip = [alt.Tooltip("step:N"), alt.Tooltip("delta:Q", title=f"change ({unit})", format=",.1f"),
           alt.Tooltip("lo:Q", title="95% interval from", format=",.1f"),
           alt.Tooltip("hi:Q", title="to", format=",.1f"), alt.Tooltip("end:Q", title=f"level ({unit})", format=",.1f")]
    bars = alt.Chart(df).mark_bar().encode(
        x=x, y=alt.Y("start:Q", title=f"{df['metric'][0]} ({unit})"), y2="end:Q",
        color=alt.Color("sign:N", title=None, scale=alt.Scale(domain=["total", "adds time", "saves time"],
                                                              range=["#7570b3", "#d95f02", "#1b9e77"])),
        tooltip=tip)
    rules = alt.Chart(df).mark_rule(strokeWidth=2, color="black").encode(x=x, y="err_lo:Q", y2="err_hi:Q",
                                                                          tooltip=tip)
    return (bars + rules).properties(width=420, height=240, title=df["pair"][0])


def parts_bars(trials: pl.DataFrame) -> alt.Chart:
    """Each cell's mean latency split into its parts (decompose.trial_parts), one bar per cell."""
    from gaplab.report.decompose import LABELS, PARTS

    cells = (trials.group_by("config", "model", "concurrency").agg(pl.col(PARTS).mean())
             .unpivot(index=["config", "model", "concurrency"], on=PARTS, variable_name="part", value_name="ms")
             .with_columns(part=pl.col("part").replace_strict(LABELS), k=pl.col("part").replace_strict(
                 {p: i for i, p in enumerate(PARTS)}, return_dtype=pl.Int32))
             .with_columns(ms=pl.col("ms").fill_null(0).clip(lower_bound=0)))
    return alt.Chart(cells.to_pandas()).mark_bar().encode(
        x=alt.X("ms:Q", title="mean ms from scheduled to the end of the response", stack="zero"),
        y=alt.Y("config:N", title=None, axis=alt.Axis(labelLimit=260)),
        color=alt.Color("part:N", sort=[LABELS[p] for p in PARTS], title=None,
                        legend=alt.Legend(orient="bottom", columns=4)),
        order=alt.Order("k:Q"),
        tooltip=[alt.Tooltip("config:N"), alt.Tooltip("concurrency:Q", title="users"), alt.Tooltip("part:N"),
                 alt.Tooltip("ms:Q", format=",.1f")],
    ).properties(width=380, height=alt.Step(14)).facet(
        row=alt.Row("concurrency:O", title="users"), column=alt.Column("model:N", title=None)
    ).resolve_scale(y="independent")


# ---------------------------------------------------------------- quality (gaplab.quality, notebooks/30-quality)


def _quality_tooltip() -> list:
    return [alt.Tooltip("model:N"), alt.Tooltip("quant:N"), alt.Tooltip("reference:N", title="compared with"),
            alt.Tooltip("size_mb:Q", title="file (MB)", format=",.0f"),
            alt.Tooltip("decode_tok_s:Q", title="decode tok/s, 1 user", format=",.1f"),
            alt.Tooltip("runtime:N", title="speed and accuracy on"),
            alt.Tooltip("top1_pct:Q", title="same top token (%)", format=".2f"),
            alt.Tooltip("top1_pm:Q", title="± (same top token)", format=".2f"),
            alt.Tooltip("kld:Q", title="mean KL divergence", format=".5f"),
            alt.Tooltip("ppl:Q", title="perplexity", format=".3f"),
            alt.Tooltip("ppl_ratio:Q", title="perplexity ÷ reference", format=".4f"),
            alt.Tooltip("accuracy_pct:Q", title="task accuracy (%)", format=".1f"),
            alt.Tooltip("acc_low:Q", title="95% interval from", format=".1f"),
            alt.Tooltip("acc_high:Q", title="95% interval to", format=".1f"),
            alt.Tooltip("tokens:Q", title="scored tokens"), alt.Tooltip("speed_run:N", title="speed run")]


def quality_size_speed(points: pl.DataFrame) -> alt.LayerChart:
    """Same-top-token agreement with the reference file against file size, a point per quant
    (its area: decode tok/s at one user), a line per model; whiskers are the tool's ±."""
    df = points.to_pandas()
    base = alt.Chart(df).encode(
        x=alt.X("size_mb:Q", title="file size (MB)", scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", title="model", legend=alt.Legend(orient="bottom")),
        tooltip=_quality_tooltip())
    y = alt.Y("top1_plot:Q", title="same top token as the reference file (%)", scale=alt.Scale(zero=False))
    line = base.mark_line().encode(y=y, detail="model:N", order="size_mb:Q")
    whiskers = base.mark_rule().encode(y=alt.Y("top1_lo:Q"), y2="top1_hi:Q")
    dots = base.mark_point(filled=True, opacity=0.9).encode(
        y=y, size=alt.Size("decode_tok_s:Q", title="decode tok/s, 1 user", scale=alt.Scale(range=[40, 400]),
                           legend=alt.Legend(orient="bottom")))
    labels = base.mark_text(align="left", dx=9, dy=-6, fontSize=11).encode(y=y, text="label:N")
    return (line + whiskers + dots + labels).properties(
        width=520, height=300, title="What each quant keeps, what it weighs, how fast it decodes")


# ---------------------------------------------------------------- workloads (report/workloads.py, notebooks/70-workloads)


def rate_sweep(panels: pl.DataFrame) -> alt.FacetChart:
    """workloads.sweep_panels as one row of panels per figure against the offered rate: a line
    per runtime, each point's 95% interval as a rule, and the figure's bound (keep-up's 0.9, an
    SLO objective's max_ms) as a dashed line."""
    df = panels.to_pandas()
    base = alt.Chart(df).encode(
        x=alt.X("rate:Q", title="offered rate (requests per second)"),
        color=alt.Color("runtime:N", title="runtime"),
        tooltip=[alt.Tooltip("runtime:N"), alt.Tooltip("model:N"), alt.Tooltip("workload:N"),
                 alt.Tooltip("rate:Q", title="offered req/s"), alt.Tooltip("panel:N", title="figure"),
                 alt.Tooltip("value:Q", title="mean of trials", format=",.2f"),
                 alt.Tooltip("interval:N", title="95% interval"), alt.Tooltip("verdict:N"),
                 alt.Tooltip("trials:Q"), alt.Tooltip("run_ids:N", title="runs (raw rows in data/raw)")])
    y = alt.Y("value:Q", title=None)
    layers = (base.mark_line().encode(y=y)
              + base.mark_rule(strokeWidth=2, opacity=0.6).encode(y="lo:Q", y2="hi:Q")
              + base.mark_point(filled=True, size=50).encode(y=y)
              + alt.Chart(df).mark_rule(strokeDash=[4, 4], color="gray").encode(y="bound:Q"))
    return layers.properties(width=420, height=150).facet(
        row=alt.Row("panel:N", title=None, sort=list(dict.fromkeys(df["panel"])),
                    header=alt.Header(labelAngle=0, labelAlign="left")),
        title="Latency and keep-up against the offered rate (dashed: the bound)").resolve_scale(y="independent")


def switch_bars(rows: pl.DataFrame) -> alt.LayerChart:
    """Switch claims (workloads.claims, kind 'switch') as ratio bars: a's figure over b's with its
    95% interval, on a log axis around 1 (no difference)."""
    df = rows.with_columns(label=pl.col("workload") + " · " + pl.col("metric") + " · " + pl.col("a") + " ÷ "
                           + pl.col("b")).to_pandas()
    # clamped: the interval of a pair with two wildly different trials would squash every other row
    x = alt.X("ratio:Q", title="a ÷ b (log scale, clamped to 1/20–20; 1 = no difference)",
              scale=alt.Scale(type="log", domain=[0.05, 20], clamp=True))
    y = alt.Y("label:N", title=None, sort=None, axis=alt.Axis(labelLimit=480))
    tip = [alt.Tooltip("label:N", title="comparison"), alt.Tooltip("value_a:Q", title="a", format=",.1f"),
           alt.Tooltip("value_b:Q", title="b", format=",.1f"), alt.Tooltip("ratio:Q", format=".2f"),
           alt.Tooltip("ratio_lo:Q", title="95% interval from", format=".2f"),
           alt.Tooltip("ratio_hi:Q", title="to", format=".2f"), alt.Tooltip("verdict:N"),
           alt.Tooltip("trials_a:Q"), alt.Tooltip("trials_b:Q")]
    same = sorted({v for v in df["verdict"] if stats.is_same(v)}) or [stats.same_text()]  # its margin's words
    color = alt.Color("verdict:N", title=None, scale=alt.Scale(
        domain=["A better", "B better", *same, stats.UNDECIDED, "no interval"],
        range=["#1b9e77", "#d95f02", *["#7570b3"] * len(same), "#999999", "#cccccc"]))
    points = alt.Chart(df).mark_point(filled=True, size=70).encode(x=x, y=y, color=color, tooltip=tip)
    rules = alt.Chart(df).mark_rule(strokeWidth=2).encode(x="ratio_lo:Q", x2="ratio_hi:Q", y=y, color=color,
                                                          tooltip=tip)
    one = alt.Chart(pl.DataFrame({"one": [1.0]}).to_pandas()).mark_rule(strokeDash=[4, 4], color="gray").encode(
        x="one:Q")
    return (rules + points + one).properties(width=420, height=alt.Step(22),
                                             title="One switch changed: a ÷ b with its 95% interval")


def ablation_waterfall(frame: pl.DataFrame, title: str, unit: str) -> alt.LayerChart:
    """ablation.waterfall_frame as bars on a log scale: a at 1, each factor's step and the
    remainder from where the last one ended, then the whole gap from 1; rules are 95% intervals."""
    df = frame.with_columns(sign=pl.when(pl.col("step") == "the whole gap").then(pl.lit("the whole gap"))
                            .when(pl.col("end") >= pl.col("start")).then(pl.lit("raises it"))
                            .otherwise(pl.lit("lowers it"))).to_pandas()
    x = alt.X("step:N", sort=list(df.sort_values("order")["step"]), title=None,
              axis=alt.Axis(labelAngle=-30, labelLimit=220))
    y = alt.Y("start:Q", scale=alt.Scale(type="log"), title=f"{unit}, × the baseline's (log scale)")
    tip = [alt.Tooltip("step:N"), alt.Tooltip("end:Q", title="× after this step", format=".2f"),
           alt.Tooltip("lo:Q", title="95% interval from", format=".2f"), alt.Tooltip("hi:Q", title="to", format=".2f")]
    bars = alt.Chart(df).mark_bar().encode(
        x=x, y=y, y2="end:Q", tooltip=tip,
        color=alt.Color("sign:N", title=None, scale=alt.Scale(domain=["the whole gap", "raises it", "lowers it"],
                                                              range=["#7570b3", "#1b9e77", "#d95f02"])))
    rules = alt.Chart(df).mark_rule(strokeWidth=2, color="black").encode(x=x, y="lo:Q", y2="hi:Q", tooltip=tip)
    return (bars + rules).properties(width=420, height=240, title=title)
