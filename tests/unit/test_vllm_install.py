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
