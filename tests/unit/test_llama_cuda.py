"""llama.cpp's CUDA build as gaplab configures and starts it: the cmake and server command lines,
which toolkit compiles it, and the refusal to start it on a machine without a GPU (this one).
The build itself is checked in tests/integration/test_llamacpp_cuda.py."""

import copy
import subprocess

import pytest
import yaml

from gaplab.machine import doctor
from gaplab.machine.hardware import hardware
from gaplab.provision import cuda_toolkit, llama_build
from gaplab.runtimes.llamacpp import build_name, llama_server, server_command
from gaplab.spec.scenario import RuntimeSpec, parse_scenario

NO_GPU = pytest.mark.skipif(bool(hardware()["gpus"]), reason="this machine has a GPU: nothing to refuse")
SCENARIO = {"name": "t", "runtimes": [{"name": "gpu", "kind": "llamacpp", "device": "cuda"}],
            "models": [{"name": "smollm2-135m", "quants": ["Q4_1"]}],
            "workloads": [{"name": "w", "prompt_tokens": 16, "output_tokens": 8}], "load": {"concurrency": [1]}}


def test_the_cuda_build_is_the_native_one_with_cuda_for_one_architecture():
    native, cuda = llama_build.get("native"), llama_build.get(llama_build.cuda_name())
    assert cuda.sdist == native.sdist and cuda.folder == native.folder
    assert cuda.flags[:len(native.flags)] == native.flags
    extra = cuda.flags[len(native.flags):]
    assert "-DGGML_CUDA=ON" in extra and "-DGGML_CUDA_NO_VMM=ON" in extra  # no libcuda to link here
    assert [f for f in extra if "ARCHITECTURES" in f] == ["-DCMAKE_CUDA_ARCHITECTURES=89"]
    assert "-DCMAKE_CUDA_ARCHITECTURES=120" in llama_build.get("cuda120").flags
    assert cuda.targets == ("llama-server",)


def test_each_architecture_builds_in_its_own_folder_beside_the_cpu_build():
    folders = {b: llama_build.llama_dir(b) for b in ("native", "b10488-avx2", "cuda89", "cuda120")}
    assert len(set(folders.values())) == 4
    assert folders["cuda89"].name == f"{llama_build.LLAMA_CPP_PYTHON}-cuda89"
    assert folders["cuda89"].parent == folders["native"].parent


def test_configure_names_the_toolkit_and_the_build_runs_niced_on_two_jobs(tmp_path):
    toolkit = cuda_toolkit.Toolkit(tmp_path / "cu13", "13.0.88", "test")
    cmd = llama_build.configure_command("cuda89", tmp_path / "src", tmp_path / "out", toolkit)
    assert f"-DCUDAToolkit_ROOT={tmp_path / 'cu13'}" in cmd
    assert f"-DCMAKE_CUDA_COMPILER={tmp_path / 'cu13' / 'bin' / 'nvcc'}" in cmd
    build = llama_build.build_command("cuda89", tmp_path / "out")
    assert build[:3] == ["nice", "-n", "19"] and "-j2" in build and build[-1] == "llama-server"


def test_a_toolkit_without_cublas_is_passed_over_for_the_wheels(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").write_text("")
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    toolkit, why_not = cuda_toolkit.found()
    assert toolkit is None and str(tmp_path) in why_not and "cublas_v2.h" in why_not and "libcublas.so" in why_not


def test_a_complete_toolkit_on_cuda_home_comes_before_the_wheels(monkeypatch):
    root = cuda_toolkit.wheels_root()
    if cuda_toolkit.lacking(root):
        pytest.skip(f"no complete CUDA toolkit here to point CUDA_HOME at ({root})")
    monkeypatch.setenv("CUDA_HOME", str(root))
    toolkit, why_not = cuda_toolkit.found()
    assert toolkit.root == root and toolkit.version.startswith("13.0.") and "CUDA_HOME" in toolkit.source


def test_device_cuda_serves_from_the_cuda_build_with_every_layer_on_the_gpu(tmp_path):
    cpu = RuntimeSpec(name="c", kind="llamacpp")
    gpu = RuntimeSpec(name="g", kind="llamacpp", device="cuda")
    blackwell = RuntimeSpec(name="b", kind="llamacpp", device="cuda", cuda_arch=120)
    assert (build_name(cpu), build_name(gpu), build_name(blackwell)) == ("native", "cuda89", "cuda120")
    cmd = server_command(gpu, tmp_path / "m.gguf", 8080)
    assert cmd[0] == str(llama_build.tool_path("llama-server", "cuda89"))
    assert cmd[cmd.index("-ngl") + 1] == "all"
    assert "-ngl" not in server_command(cpu, tmp_path / "m.gguf", 8080)


def test_cpu_cells_keep_their_keys_and_cuda_cells_get_their_own():
    cpu = copy.deepcopy(SCENARIO)
    del cpu["runtimes"][0]["device"]
    keys = {parse_scenario(cpu).cells()[0].cell_key}
    flags = parse_scenario(cpu).runtimes[0].launch_flags()
    assert "device" not in flags and "cuda_arch" not in flags  # the keys CPU cells had before
    for arch in (89, 120):
        gpu = copy.deepcopy(SCENARIO)
        gpu["runtimes"][0]["cuda_arch"] = arch
        keys.add(parse_scenario(gpu).cells()[0].cell_key)
    assert len(keys) == 3


@NO_GPU
def test_starting_it_without_a_gpu_is_refused_before_anything_starts():
    with pytest.raises(RuntimeError) as exc, llama_server(RuntimeSpec(name="g", kind="llamacpp", device="cuda"),
                                                          "smollm2-135m", "Q4_1"):
        pytest.fail("a server was opened")
    msg = str(exc.value)
    assert "\n" not in msg and "no NVIDIA GPU was found" in msg and "device: cpu" in msg


@NO_GPU
def test_the_cli_refuses_it_in_one_line(tmp_path, gaplab_cli):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    res = subprocess.run([*gaplab_cli, "run", str(path), "--data-dir", str(tmp_path / "raw")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr
    assert "no NVIDIA GPU was found" in res.stderr


def test_setup_refuses_a_bad_device_or_architecture_in_one_line(gaplab_cli):
    for args, field in ((["--device", "gpu"], "--device: got 'gpu'"), (["--device", "cuda", "--cuda-arch", "52"],
                                                                       "--cuda-arch: got 52")):
        res = subprocess.run([*gaplab_cli, "local", "setup", *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and field in res.stderr and res.stderr.strip().count("\n") == 0, res.stderr


def test_doctor_says_whether_the_cuda_build_is_built_and_whether_a_gpu_can_run_it():
    line = {c.part: c for c in doctor.checks(gpus=[])}["llama.cpp cuda89"]
    built = llama_build.llama_built("cuda89")
    assert line.status == (doctor.READY if built else doctor.SETUP)
    assert "no GPU here to run it" in line.detail
    if not built:
        assert "'gaplab local setup --runtime llamacpp --device cuda'" in line.detail and "CUDA 13.0" in line.detail
    h100 = {c.part: c for c in doctor.checks(gpus=["NVIDIA H100 80GB HBM3, 81559 MiB"])}
    assert "runs on NVIDIA H100 80GB HBM3" in h100["llama.cpp cuda89"].detail
    assert "launches llama.cpp's CUDA build" in h100["GPU"].detail
