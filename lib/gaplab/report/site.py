"""The report site: the Vega bundle every page ships, and a build without Quarto.

With `quarto` on PATH, `build_site` runs `quarto render` (the _quarto.yml project).
Without it, the same pages are built here: papermill executes each analysis notebook,
nbconvert turns it into HTML with its code hidden, and the .qmd pages (markdown plus
`{{< embed notebook#label >}}` shortcodes) are assembled from those executed outputs.
Either way the Vega / Vega-Lite / vega-embed bundle from vl-convert-python is inlined
in each page's head, so charts draw with no internet.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import yaml

from gaplab.config import BUILD_DIR, RAW_DIR, ROOT, SITE_DIR

VEGA_HEADER = BUILD_DIR / "vega-header.html"
EMBED = re.compile(r"\{\{<\s*embed\s+([^#\s]+)#([\w-]+)\s*>\}\}")


def write_vega_header(path: Path = VEGA_HEADER) -> Path:
    import vl_convert

    path.parent.mkdir(parents=True, exist_ok=True)
    bundle = vl_convert.javascript_bundle("window.vegaEmbed = vegaEmbed;")
    # tables of sentences read left to right: pandas right-aligns every cell
    style = ".gaplab-chart { margin: 1em 0; } .gaplab-table td, .gaplab-table th { text-align: left; }"
    path.write_text(f"<script>\n{bundle}\n</script>\n<style>{style}</style>\n")
    return path


def site_pages(root: Path = ROOT) -> list[tuple[str, str]]:
    """(source path, navbar text) of every page, in _quarto.yml's navbar order."""
    conf = yaml.safe_load((root / "_quarto.yml").read_text())
    return [(item["href"], item["text"]) for item in conf["website"]["navbar"]["left"]]


def build_site(data_dir: Path = RAW_DIR, out: Path = SITE_DIR, use_quarto: bool | None = None,
               parameters: dict | None = None) -> str:
    """Build the site; returns 'quarto' or 'nbconvert' (which builder ran). parameters: more
    notebook parameters for every page (a page ignores those it does not declare)."""
    parameters = {"data_dir": str(data_dir), **(parameters or {})}
    write_vega_header()
    if use_quarto is None:
        use_quarto = shutil.which("quarto") is not None
    if use_quarto:
        given = {k: v for k, v in parameters.items() if v not in ("", 0, 0.0)}  # defaults need no flag
        res = subprocess.run(["quarto", "render", *[a for k, v in given.items() for a in ("-P", f"{k}:{v}")]],
                             cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError("quarto render failed; its output above says why")
        return "quarto"
    _build_without_quarto(parameters, out)
    return "nbconvert"


def _execute(notebook: Path, parameters: dict, work: Path) -> Path:
    import papermill as pm

    target = work / notebook
    target.parent.mkdir(parents=True, exist_ok=True)
    declared = pm.inspect_notebook(str(ROOT / notebook))  # a page gets only the parameters it declares
    pm.execute_notebook(str(ROOT / notebook), str(target), parameters={k: v for k, v in parameters.items()
                                                                       if k in declared},
                        cwd=str(ROOT), progress_bar=False,
                        extra_arguments=["--IPKernelApp.log_level=CRITICAL"])  # no loopback-TCP notice
    return target


def _cell_label(cell) -> str | None:
    m = re.search(r"^#\|\s*label:\s*([\w-]+)", cell.source, re.M)
    return m.group(1) if m else None


def _strip_options(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = re.sub(r"^#\|.*\n?", "", cell.source, flags=re.M)


def _qmd_notebook(qmd: Path, executed: dict[str, Path]):
    """A .qmd page as a notebook: markdown cells, and embedded outputs as code cells."""
    text = qmd.read_text()
    meta = {}
    if text.startswith("---"):
        _, front, text = text.split("---", 2)
        meta = yaml.safe_load(front) or {}
    nb = nbformat.v4.new_notebook()
    if meta.get("title"):
        text = f"# {meta['title']}\n\n" + text
    pos = 0
    for m in EMBED.finditer(text):
        nb.cells.append(nbformat.v4.new_markdown_cell(text[pos:m.start()]))
        source = nbformat.read(executed[m.group(1)], as_version=4)
        found = [c for c in source.cells if c.cell_type == "code" and _cell_label(c) == m.group(2)]
        if not found:
            raise RuntimeError(f"{qmd.name}: no cell labelled {m.group(2)!r} in {m.group(1)}")
        nb.cells.append(found[0])
        pos = m.end()
    nb.cells.append(nbformat.v4.new_markdown_cell(text[pos:]))
    return nb, meta.get("title", qmd.stem)


def _nav(pages: list[tuple[str, str]], depth: int) -> str:
    up = "../" * depth
    links = " · ".join(f'<a href="{up}{html.escape(re.sub(r"[.](qmd|ipynb)$", ".html", src))}">'
                       f"{html.escape(text)}</a>" for src, text in pages)
    return (f'<nav style="padding:.6em 1.2em;border-bottom:1px solid #ddd;font-family:sans-serif">'
            f"<b>gaplab</b> · {links}</nav>")


def _write_html(nb, title: str, target: Path, pages: list, depth: int) -> None:
    from nbconvert import HTMLExporter

    _strip_options(nb)
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    head, rest = body.split("</head>", 1)
    rest = re.sub(r'href="([^":#]+)[.](?:qmd|ipynb)"', r'href="\1.html"', rest)  # as Quarto does
    rest = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + _nav(pages, depth), rest, count=1)
    body = head + VEGA_HEADER.read_text() + "</head>" + rest
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body)


def _build_without_quarto(parameters: dict, out: Path) -> None:
    pages = site_pages()
    work = BUILD_DIR / "site"
    notebooks = [src for src, _ in pages if src.endswith(".ipynb")]
    # each in its own kernel, as many at once as there are cores: a page is mostly one core's work
    with ThreadPoolExecutor(max_workers=max(1, min(len(notebooks), os.cpu_count() or 1))) as pool:
        executed = dict(zip(notebooks, pool.map(lambda src: _execute(Path(src), parameters, work), notebooks)))
    out.mkdir(parents=True, exist_ok=True)
    for src, text in pages:
        depth = src.count("/")
        target = out / re.sub(r"[.](qmd|ipynb)$", ".html", src)
        if src.endswith(".ipynb"):
            _write_html(nbformat.read(executed[src], as_version=4), text, target, pages, depth)
        else:
            nb, title = _qmd_notebook(ROOT / src, executed)
            _write_html(nb, title, target, pages, depth)
    print(f"gaplab: quarto is not installed, so the site was built with nbconvert into {out}", flush=True)


if __name__ == "__main__":  # `python -m gaplab.report.site vega-header`: Quarto's pre-render step
    if sys.argv[1:] == ["vega-header"]:
        print(write_vega_header())
    else:
        sys.exit("usage: python -m gaplab.report.site vega-header")
