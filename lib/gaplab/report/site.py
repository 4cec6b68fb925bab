"""The report site: the pages Quarto renders, the Vega bundle every page ships, and a build
without Quarto.

The analysis notebooks stay output-free: Quarto executes an .ipynb in place, so it renders
instead a page written beside each notebook (notebooks/NN.qmd, ignored by git) by this
module's pre-render step, which Quarto runs with its own Python. Those pages carry a line
that changes with the notebook, the data, gaplab's code and the render's -P parameters, since
Quarto's freeze compares only a page's source. Without Quarto, papermill executes each
notebook, nbconvert turns it into HTML with its code hidden, and the .qmd pages (markdown
plus `{{< embed page#label >}}` shortcodes) are assembled from those executed outputs.
Either way the Vega / Vega-Lite / vega-embed bundle from vl-convert-python is loaded in each
page's head, so charts draw with no internet.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # Quarto runs this file as a script: its folder must not shadow modules
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    try:
        import gaplab  # noqa: F401
    except ModuleNotFoundError:
        sys.exit(f"gaplab: error: Quarto's Python ({sys.executable}) has no gaplab: run 'make setup' "
                 f"(it names .venv's Python in _environment.local) or set QUARTO_PYTHON to it")

import hashlib
import html
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import yaml

from gaplab.spec.config import BUILD_DIR, RAW_DIR, ROOT, SITE_DIR

VEGA_DIR = BUILD_DIR / "vega"  # vega.js and gaplab.css; vega.lua hands them to Quarto as a page dependency
EMBED = re.compile(r"\{\{<\s*embed\s+([^#\s]+)#([\w-]+)\s*>\}\}")
# tables of sentences read left to right (pandas right-aligns every cell); a chart wider than the
# text column shrinks to fit it, legend included, instead of being cut off (Vega's SVG has a viewBox)
STYLE = (".gaplab-chart { margin: 1em 0; max-width: 100%; }\n"
         ".gaplab-chart .vega-embed, .gaplab-chart svg { max-width: 100%; height: auto; }\n"
         ".gaplab-table td, .gaplab-table th { text-align: left; }\n")
NOTEBOOK_LINK = re.compile(r"\]\(([\w./-]+)[.]ipynb(#[\w-]*)?\)")
QUARTO_HINT = ("quarto is not installed, so the site is built with nbconvert; for Quarto's site install it "
               "from https://quarto.org (or conda-forge), or set QUARTO_BIN")


def write_vega(folder: Path = VEGA_DIR) -> Path:
    import vl_convert

    folder.mkdir(parents=True, exist_ok=True)
    bundle = vl_convert.javascript_bundle("window.vegaEmbed = vegaEmbed;")
    _write_if_changed(folder / "vega.js", bundle + "\n")
    _write_if_changed(folder / "gaplab.css", STYLE)
    return folder


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:  # an unchanged page keeps its freeze
        path.write_text(text)


def site_pages(root: Path = ROOT) -> list[tuple[str, str]]:
    """(source path, navbar text) of every page, in _quarto.yml's navbar order (menus flattened)."""
    navbar = yaml.safe_load((root / "_quarto.yml").read_text())["website"]["navbar"]
    items = []
    for item in navbar["left"] + navbar.get("right", []):
        items += item.get("menu", [item])
    return [(item["href"], item["text"]) for item in items]


def notebook_of(page: str, root: Path = ROOT) -> Path | None:
    """The analysis notebook a page is rendered from (notebooks/NN.qmd <- notebooks/NN.ipynb), if any."""
    nb = root / Path(page).with_suffix(".ipynb")
    return nb if page.endswith(".qmd") and nb.exists() else None


def inputs_key(root: Path, parameters: dict) -> str:
    """What a notebook page's output depends on besides its notebook: the data it reads, the
    reference figures, gaplab's code and the parameters given to the render."""
    from gaplab.spec.config import DATA_DIR
    from gaplab.storage.backend import glob, location

    data = location(parameters.get("data_dir") or "", RAW_DIR)
    h = hashlib.sha256(repr((sorted(parameters.items()), str(data))).encode())
    for f in glob(data, "**/*.parquet"):  # runs are immutable: a name (and a size) stand for a file
        h.update((f"{f.relative_to(data)} {f.stat().st_size}" if isinstance(f, Path) else f).encode())
    for f in sorted((DATA_DIR / "reference").glob("*")) + sorted((root / "lib" / "gaplab").rglob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def notebook_qmd(notebook: Path, key: str) -> str:
    """A notebook as a Quarto page: its first heading as the title, markdown as it is, code cells
    as python chunks (the parameters cell tagged so that -P reaches it)."""
    nb = nbformat.read(notebook, as_version=4)
    title, parts = notebook.stem, list[str]()
    for cell in nb.cells:
        text = cell.source.strip("\n")
        if cell.cell_type == "markdown":
            if not parts and text.startswith("# "):
                title, _, text = text.partition("\n")
                title = title[2:].strip()
            parts.append(NOTEBOOK_LINK.sub(r"](\1.qmd\2)", text))  # to the page, not the notebook
        elif cell.cell_type == "code":
            tags = "#| tags: [parameters]\n" if "parameters" in cell.metadata.get("tags", []) else ""
            parts.append(f"```{{python}}\n{tags}{text}\n```")
    rel = notebook.relative_to(notebook.parents[1]).as_posix()
    front = (f"---\ntitle: {json.dumps(title, ensure_ascii=False)}\njupyter: python3\n"
             f"# Written from {rel} by gaplab.report.site (edit the notebook, not this file).\n"
             f"# inputs {key}: the data, gaplab's code and the -P parameters; a change renders the page again\n"
             f"---\n\n")
    return front + "\n\n".join(p for p in parts if p) + "\n"


def write_pages(root: Path = ROOT, parameters: dict | None = None) -> list[Path]:
    """Quarto's pre-render: the Vega bundle, and notebooks/NN.qmd for every notebook page."""
    write_vega(root / "build" / "vega")
    key = inputs_key(root, parameters or {})
    written = []
    for page, _ in site_pages(root):
        nb = notebook_of(page, root)
        if nb:
            _write_if_changed(root / page, notebook_qmd(nb, key))
            written.append(root / page)
    return written


def render_parameters() -> dict:
    """The -P key:value pairs of the `quarto render` running this pre-render (our parent process):
    Quarto passes them to the kernels but not to pre-render scripts."""
    import psutil

    args = psutil.Process(os.getppid()).cmdline()
    pairs = [v for flag, v in zip(args, args[1:]) if flag in ("-P", "--execute-param")]
    return dict(p.split(":", 1) for p in pairs if ":" in p)


def quarto_bin() -> str | None:
    """The Quarto CLI: $QUARTO_BIN, else quarto on PATH, else the shared build beside the project
    (../shared/tools/quarto, once its install.sh has run)."""
    if os.environ.get("QUARTO_BIN"):
        return os.environ["QUARTO_BIN"]
    shared = ROOT.parent / "shared" / "tools" / "quarto" / "bin" / "quarto"
    return shutil.which("quarto") or (str(shared) if shared.exists() else None)


class RenderError(RuntimeError):
    """quarto render failed: the page it stopped at and its first error, in one line."""


def build_site(data_dir: Path = RAW_DIR, out: Path = SITE_DIR, use_quarto: bool | None = None,
               parameters: dict | None = None) -> str:
    """Build the site; returns 'quarto' or 'nbconvert' (which builder ran). parameters: more
    notebook parameters for every page (a page ignores those it does not declare)."""
    parameters = {"data_dir": str(data_dir), **(parameters or {})}
    quarto = quarto_bin() if use_quarto in (None, True) else None
    if use_quarto and not quarto:
        raise RuntimeError("--builder quarto: no Quarto found on PATH, in QUARTO_BIN or in ../shared/tools/quarto")
    if quarto:
        _render_with_quarto(quarto, parameters, out)
        return "quarto"
    if use_quarto is None:
        print(f"gaplab: {QUARTO_HINT}", flush=True)
    _build_without_quarto(parameters, out)
    return "nbconvert"


def _render_with_quarto(quarto: str, parameters: dict, out: Path) -> None:
    given = {k: v for k, v in parameters.items() if v not in ("", 0, 0.0)}  # defaults need no flag
    if Path(given.get("data_dir", "")) == RAW_DIR:
        given.pop("data_dir")  # the default: the page key and freeze stay those of a plain `quarto render`
    args = [quarto, "render", *[a for k, v in given.items() for a in ("-P", f"{k}:{v}")]]
    if Path(out).resolve() != (ROOT / "_site").resolve():
        args += ["--output-dir", str(Path(out).resolve())]
    env = {**os.environ, "QUARTO_PYTHON": sys.executable}  # the kernels and the pre-render run gaplab's Python
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    page, error, last = "", "", ""
    assert proc.stdout is not None  # stdout=PIPE
    for line in proc.stdout:
        sys.stdout.write(line)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        last = plain or last
        step = re.match(r"\[\s*\d+/\d+\]\s+(\S+)", plain)
        if step and not error:
            page = step.group(1)
        elif not error and re.match(r"(ERROR|\w*Error):", plain):
            error = plain
    if proc.wait() != 0:
        where = f"at {page}" if page else "before its first page"
        raise RenderError(f"quarto render stopped {where}: {error or last or 'it printed nothing'}")


def _execute(notebook: Path, parameters: dict, work: Path) -> Path:
    import papermill as pm

    target = work / notebook.relative_to(ROOT)
    target.parent.mkdir(parents=True, exist_ok=True)
    declared = pm.inspect_notebook(str(notebook))  # a page gets only the parameters it declares
    pm.execute_notebook(str(notebook), str(target), parameters={k: v for k, v in parameters.items()
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
    meta: dict = {}
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
    vega = (VEGA_DIR / "vega.js").read_text()
    body = head + f"<script>\n{vega}</script>\n<style>{STYLE}</style>\n</head>" + rest
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body)


def _build_without_quarto(parameters: dict, out: Path) -> None:
    write_vega()
    pages = site_pages()
    work = BUILD_DIR / "site"
    notebooks = {src: notebook_of(src) for src, _ in pages if notebook_of(src)}
    # each in its own kernel, as many at once as there are cores: a page is mostly one core's work
    with ThreadPoolExecutor(max_workers=max(1, min(len(notebooks), os.cpu_count() or 1))) as pool:
        executed = dict(zip(notebooks, pool.map(lambda nb: _execute(nb, parameters, work), notebooks.values())))
    out.mkdir(parents=True, exist_ok=True)
    for src, text in pages:
        depth = src.count("/")
        target = out / re.sub(r"[.](qmd|ipynb)$", ".html", src)
        if src in executed:
            _write_html(nbformat.read(executed[src], as_version=4), text, target, pages, depth)
        else:
            nb, title = _qmd_notebook(ROOT / src, executed)
            _write_html(nb, title, target, pages, depth)


if __name__ == "__main__":  # Quarto's pre-render (_quarto.yml); also `python -m gaplab.report.site pages`
    if sys.argv[1:] != ["pages"]:
        sys.exit("usage: python lib/gaplab/report/site.py pages")
    for page in write_pages(Path.cwd(), render_parameters()):
        print(f"gaplab: {page.relative_to(Path.cwd())} written from its notebook")
