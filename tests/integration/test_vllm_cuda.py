"""vLLM's CUDA build as `gaplab local setup --runtime vllm --device cuda` installs it: PyPI's vllm
wheel and a CUDA torch in a venv of their own. Installing needs no GPU (about 7 minutes and 6 GB
here), so make test does not spend it: this test skips, naming the command, until it is installed."""

import json
import subprocess

import pytest

from gaplab.provision import vllm_env


def test_the_cuda_venv_holds_pypis_vllm_with_a_cuda_torch():
    if not vllm_env.installed("cuda"):
        pytest.skip("vLLM's CUDA build is not installed: gaplab local setup --runtime vllm --device cuda")
    res = subprocess.run([str(vllm_env.venv_python("cuda")), "-c", "import json, torch, vllm; "
                          "print(json.dumps([vllm.__version__, torch.version.cuda]))"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-800:]
    version, cuda = json.loads(res.stdout.strip().splitlines()[-1])
    assert version == vllm_env.VLLM and cuda is not None  # a CUDA build of torch, not the CPU one
    assert vllm_env.vllm_version("cuda").startswith(f"vLLM {vllm_env.VLLM} CUDA")
