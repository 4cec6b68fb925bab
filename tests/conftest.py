import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
OUTPUT = ROOT / "build" / "test-output"


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def llama_ready():
    """The local llama.cpp build and SmolLM2 model (make test provisions them)."""
    from gaplab.provision import llama_build, models

    if not llama_build.llama_built() or not models.model_path("smollm2-135m", "Q4_1").exists():
        pytest.fail("llama.cpp or the SmolLM2 model is not provisioned: run 'make test' "
                    "(or '.venv/bin/gaplab local setup --model smollm2-135m')")
    return models


@pytest.fixture(scope="session")
def gaplab_cli() -> list[str]:
    return [str(Path(sys.executable).parent / "gaplab")]


SMOLLM2 = {"name": "smollm2-135m", "api": "chat", "quants": ["Q4_1"]}


def write_scenario(folder: Path, runtime: dict, workload: tuple[int, int], load: dict, models=(SMOLLM2,)) -> Path:
    """A one-runtime scenario file for a test (workload: prompt and output tokens)."""
    import yaml

    prompt, output = workload
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump({
        "name": "test", "runtimes": [runtime], "models": list(models),
        "workloads": [{"name": f"p{prompt}-o{output}", "prompt_tokens": prompt, "output_tokens": output}],
        "load": load}))
    return path
