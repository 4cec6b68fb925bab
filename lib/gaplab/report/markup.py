"""Strings from outside gaplab onto a page, as text: the one place the report escapes.

Model names, versions, error bodies, completions, capability evidence and whatever else is
read from data/raw came from a server or from a file someone else wrote. The pages are
Markdown (rendered by mistune in the nbconvert build, by Pandoc in Quarto's) and charts
whose specs sit inside a <script>; in both, such a string must reach the reader as the
characters it holds, never as markup:

- plain(s)        a string inside Markdown prose or a table cell
- code(s)         a string as an inline code span
- table(frame)    a frame as a Markdown pipe table, every cell through plain(): both builders
                  parse it, and Quarto can number, search and style it
- script_json(o)  JSON to inline in a <script> element (a chart's spec and data)
"""

from __future__ import annotations

import re

import polars as pl

# CommonMark and Pandoc both let a backslash make any ASCII punctuation character literal
# (Pandoc's all_symbols_escapable). A '-', '.' or '_' between two letters or digits is never
# markup in either (no list, dash, ellipsis or emphasis starts there), so names such as
# Q4_K_M or llama.cpp keep their spelling in the Markdown source.
_MARKUP = re.compile(r"[!-,/:-@\[-^`{-~]|(?<![A-Za-z0-9])[-._]|[-._](?![A-Za-z0-9])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _one_line(value) -> str:
    # a line break would end a table row or a list item, or start a block of its own
    return "" if value is None else _LINE_BREAK.sub(" ⏎ ", str(value))


def plain(value) -> str:
    """`value` as Markdown text that renders to exactly its characters, on one line (a line break
    shows as ⏎)."""
    return _MARKUP.sub(lambda m: "\\" + m.group(0), _one_line(value))


def code(value) -> str:
    """`value` as an inline code span: fenced by more backticks than any run inside it
    (backslashes do not escape in code; the renderer escapes its HTML)."""
    s = _one_line(value)
    if not s:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s[0] == "`" or s[-1] == "`" else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def script_json(obj) -> str:
    """JSON that cannot end the <script> it sits in: jinja2 writes <, >, & and ' as \\u escapes."""
    from jinja2.utils import htmlsafe_json_dumps

    return str(htmlsafe_json_dumps(obj))


def _cells(column: pl.Series, digits: int) -> list[str]:
    """A column's cells as text: floats rounded to `digits` and shown with the decimals the
    column needs (at least one, as pandas showed them), nulls and NaN empty."""
    if column.dtype.is_float():
        # rounded by polars, as the frame was rounded before pandas printed it
        values = [None if v is None or v != v else v for v in column.round(digits).to_list()]
        needed = [len(f"{v:.{digits}f}".rstrip("0").partition(".")[2]) for v in values
                  if v is not None and abs(v) != float("inf")]
        places = max([1, *needed]) if digits > 0 else 0
        return ["" if v is None else f"{v:.{places}f}" for v in values]
    if isinstance(column.dtype, pl.List):
        return ["" if v is None else ", ".join(map(str, v)) for v in column.to_list()]
    return ["" if v is None else str(v) for v in column.to_list()]


def table(frame: pl.DataFrame | None, digits: int = 1):
    """A frame as a Markdown pipe table for a page (numbers right-aligned, text left), every
    header and cell escaped; an empty Markdown for a frame without columns."""
    from IPython.display import Markdown

    if frame is None or not frame.columns:
        return Markdown("")
    columns = [[plain(c) for c in _cells(frame[name], digits)] for name in frame.columns]
    header = [plain(name) for name in frame.columns]
    # Pandoc sizes the columns of a wide table by the dashes under each header
    widths = [max(3, len(h), *(len(c) for c in col)) for h, col in zip(header, columns)]
    rule = [("-" * (w - 1) + ":") if frame[name].dtype.is_numeric() else (":" + "-" * (w - 1))
            for name, w in zip(frame.columns, widths)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in zip(*columns)]
    return Markdown("\n".join(lines))
