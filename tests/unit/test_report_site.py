import re
import shutil
from pathlib import Path

import nbformat

from gaplab.report import site

ROOT = Path(__file__).resolve().parents[2]


def test_every_page_is_in_the_navbar_and_every_navbar_page_has_a_source():
    pages = [src for src, _ in site.site_pages(ROOT)]
    on_disk = {p.relative_to(ROOT).as_posix() for p in [ROOT / "index.qmd", ROOT / "methodology.qmd",
                                                         *(ROOT / "guide").glob("*.qmd")]}
    assert on_disk <= set(pages)
    assert all((ROOT / p).exists() or site.notebook_of(p, ROOT) for p in pages)
    notebooks = {p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("[2-9]*.ipynb")}
    assert {site.notebook_of(p, ROOT).relative_to(ROOT).as_posix() for p in pages if site.notebook_of(p, ROOT)} \
        == notebooks


def test_the_readme_is_a_front_door_naming_every_command_and_guide_page():
    from gaplab.cli import app, local_app

    readme = (ROOT / "README.md").read_text()
    assert readme.count("\n") <= 150
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    commands += [f"local {c.name}" for c in local_app.registered_commands]
    assert [c for c in commands if f"`gaplab {c}" not in readme] == []
    assert [p for p in (ROOT / "guide").glob("*.qmd") if f"(guide/{p.name})" not in readme] == []


def test_a_notebook_becomes_a_page_with_its_parameters_cell_and_links_to_pages():
    nb = ROOT / "notebooks" / "40-where-the-time-goes.ipynb"
    page = site.notebook_qmd(nb, "k1")
    assert page.startswith('---\ntitle: "Where the time goes"\n')
    assert page.count("#| tags: [parameters]") == 1 and "\n# Where the time goes" not in page
    assert "(20-throughput-latency.qmd)" in page and not re.search(r"\]\([^)]*[.]ipynb", page)
    assert page.count("```{python}") == sum(c.cell_type == "code" for c in nbformat.read(nb, 4).cells)
    assert site.notebook_qmd(nb, "k2") != page  # a new key is a new source: freeze renders the page again


def test_the_page_key_follows_the_data_the_code_and_the_parameters(tmp_path):
    data = tmp_path / "raw"
    data.mkdir()
    for f in sorted((ROOT / "data" / "raw").rglob("*.run.parquet"))[:3]:
        shutil.copy(f, data / f.name)
    base = site.inputs_key(ROOT, {"data_dir": str(data)})
    assert site.inputs_key(ROOT, {"data_dir": str(data)}) == base
    assert site.inputs_key(ROOT, {"data_dir": str(data), "price_per_hour": "2.5"}) != base
    run = next(data.rglob("*.run.parquet"))
    shutil.copy(run, run.with_name("another.run.parquet"))
    assert site.inputs_key(ROOT, {"data_dir": str(data)}) != base
