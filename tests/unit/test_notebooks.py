import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS][:2] == ["10-measure.ipynb", "20-throughput-latency.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_clean_with_one_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path} has outputs: clear them before committing"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path} needs exactly one cell tagged 'parameters'"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    ids = [c.get("id") for c in nb["cells"]]  # nbformat 4.5 requires one; Quarto's render warns without
    assert all(ids) and len(ids) == len(set(ids)), f"{path} has a cell without an id, or an id twice"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path):
    # a parameter papermill cannot parse (its comment confuses it) is silently never passed
    import re

    import papermill as pm

    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = re.findall(r"^(\w+)\s*=", "".join(cell["source"]), re.M)
    assert list(pm.inspect_notebook(str(path))) == names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cell_options_lead_their_cell_and_every_float_has_a_caption(path):
    # Quarto reads `#|` options only at the top of a cell; a fig-/tbl- label needs its caption to be numbered
    import re

    labels = []
    for cell in json.loads(path.read_text())["cells"]:
        lines = "".join(cell["source"]).splitlines()
        top = next((i for i, line in enumerate(lines) if not line.startswith("#|")), len(lines))
        assert not any(line.startswith("#|") for line in lines[top:]), f"{path.name}: options below code: {lines[:2]}"
        options = dict(re.match(r"#\|\s*([\w-]+):\s*(.*)", line).groups() for line in lines[:top])
        kind = options.get("label", "").split("-")[0]
        if kind in ("fig", "tbl"):
            assert options.get(f"{kind}-cap"), f"{path.name}: {options['label']} has no {kind}-cap"
        labels.append(options.get("label"))
    named = [x for x in labels if x]
    assert len(named) == len(set(named)), f"{path.name}: a label twice"
