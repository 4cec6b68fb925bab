import zipfile

from gaplab.provision import vllm_env
from gaplab.runtimes import vllm


def test_requirements_drop_the_cuda_builds_and_triton(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo-1.0.dist-info/METADATA", "\n".join([
            "Name: demo", "Version: 1.0",
            "Requires-Dist: numpy", "Requires-Dist: torchvision; platform_machine != \"riscv64\"",
            "Requires-Dist: triton; platform_system == \"Linux\"", "Requires-Dist: torchaudio",
            "Requires-Dist: pandas; extra == \"bench\"", "Requires-Dist: never; python_version < \"3\"",
            "Requires-Dist: transformers<6,>=5.16.1"]))
    assert vllm_env._requirements(wheel) == ["numpy", "transformers<6,>=5.16.1"]


def test_server_binds_threads_and_selects_the_cpu_platform():
    from gaplab.spec.scenario import RuntimeSpec

    env = vllm.server_env(RuntimeSpec(name="v", kind="vllm", threads=2))
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    cmd = vllm.server_command(RuntimeSpec(name="v", kind="vllm", parallel=8, enforce_eager=True), "m", "bfloat16", 1234)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in cmd and cmd[cmd.index("--max-num-seqs") + 1] == "8"


def test_the_cuda_build_runs_pypis_vllm_without_the_cpu_platform():
    from gaplab.spec.scenario import RuntimeSpec

    gpu = RuntimeSpec(name="v", kind="vllm", device="cuda", parallel=8)
    env, cmd = vllm.server_env(gpu), vllm.server_command(gpu, "m", "bfloat16", 1234)
    assert "VLLM_TARGET_DEVICE" not in env and "VLLM_CPU_OMP_THREADS_BIND" not in env
    assert cmd[0] == str(vllm_env.venv_python("cuda")) != str(vllm_env.venv_python())
    assert vllm_env.vllm_dir("cuda").name == f"{vllm_env.VLLM}-cuda" and vllm_env.VLLM == vllm_env.VLLM_CPU
    assert gpu.launch_flags()["device"] == "cuda"
    assert "device" not in RuntimeSpec(name="v", kind="vllm").launch_flags()  # CPU cells keep their keys


def test_without_a_gpu_the_cuda_build_is_refused_in_one_line():
    import pytest

    from gaplab.machine.hardware import hardware
    from gaplab.spec.scenario import RuntimeSpec

    if hardware()["gpus"]:
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match=r"^runtime v: device cuda, but no NVIDIA GPU was found on this machine"):
        with vllm.vllm_server(RuntimeSpec(name="v", kind="vllm", device="cuda"), "smollm2-135m", "BF16"):
            pass
