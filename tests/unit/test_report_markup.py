"""Strings from servers and files stay text on a page: rendered by the same Markdown engine
as the nbconvert build (mistune, through nbconvert) and inlined in a chart's <script>."""

import json

import polars as pl
from nbconvert.filters.markdown_mistune import markdown2html_mistune

from gaplab.report import charts, markup

HOSTILE = '<img src=x onerror=alert(1)><script>document.title="PWNED"</script> *a* _b_ [c](javascript:x) `d` |e|'


def test_plain_renders_to_exactly_its_characters():
    rendered = markdown2html_mistune(f"**{markup.plain(HOSTILE)}**")
    assert "<script" not in rendered and "<img" not in rendered and "<a " not in rendered and "<em>" not in rendered
    assert rendered.count("<strong>") == 1  # the page's own markup still works around it
    import html
    assert html.unescape(rendered.replace("<p><strong>", "").replace("</strong></p>", "").strip()) == HOSTILE


def test_plain_keeps_names_as_they_are_spelled_and_keeps_to_one_line():
    for name in ("Q4_K_M", "llama.cpp", "smollm2-135m", "llamacpp-batch8 · Q4_1"):
        assert markup.plain(name) == name
    assert markup.plain("- a\n\n# b") == "\\- a ⏎  ⏎ \\# b"


def test_code_span_holds_backticks_and_markup():
    rendered = markdown2html_mistune(markup.code("a``b <b>x</b>"))
    assert "<code>a``b &lt;b&gt;x&lt;/b&gt;</code>" in rendered


def test_table_escapes_cells_and_headers_and_formats_numbers_as_before():
    frame = pl.DataFrame({"name<i>": [HOSTILE, "ok"], "x": [1.25, 2.0], "n": [3, None], "f": [True, False]})
    md = markup.table(frame, digits=1).data
    assert md.splitlines()[1].startswith("|:") and md.splitlines()[1].count("-:") == 2  # text left, numbers right
    rendered = markdown2html_mistune(md)
    assert rendered.count("<tr>") == 3 and "<script" not in rendered and "<i>" not in rendered
    cells = [c.split(">", 1)[1] for c in rendered.split("</td>")[:-1]]
    assert [c for c in cells if c in ("1.2", "2.0", "3", "", "True", "False")] == ["1.2", "3", "True", "2.0", "", "False"]


def test_chart_spec_cannot_end_its_script():
    frame = pl.DataFrame({"who": ["</script><script>document.title='PWNED'</script>"], "seconds": [1.0],
                          "label": ["x"], "phase": ["p"], "source": ["s"]})
    out = charts._site_html(charts.cold_start_bars(frame).to_dict())["text/html"]
    assert out.count("</script>") == 1 and out.count("<script>") == 1
    spec = out.split("var spec = ", 1)[1].split(";\n", 1)[0]
    assert json.loads(spec)["datasets"]  # still the same JSON once parsed
    assert "PWNED" in spec
