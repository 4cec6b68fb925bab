"""`gaplab doctor` on this machine: every part gets a line, and a part that is missing says why
and how to get it."""

from typer.testing import CliRunner

from gaplab.cli import app
from gaplab.machine import doctor


def by_part(checks) -> dict:
    return {c.part: c for c in checks}


def test_every_part_is_ready_to_set_up_or_missing_with_a_way_forward():
    found = by_part(doctor.checks(gpus=[]))
    assert {"llama.cpp native", "models", "vLLM (CPU)", "Ollama", "GPU", "Quarto", "Chromium"} <= set(found)
    for c in found.values():
        assert c.status in (doctor.READY, doctor.SETUP, doctor.MISSING) and c.detail
        if c.status == doctor.SETUP:
            assert "'gaplab local setup" in c.detail or "'make browser'" in c.detail, c
    assert found["GPU"].status == doctor.MISSING and "attach" in found["GPU"].detail


def test_a_gpu_is_named_and_attached_by_url():
    gpu = by_part(doctor.checks(gpus=["NVIDIA H100 80GB HBM3, 81559 MiB"]))["GPU"]
    assert gpu.status == doctor.READY and "H100" in gpu.detail and "gpu-box.example.yaml" in gpu.detail


def test_a_wrong_ollama_bin_or_quarto_bin_is_reported_as_given(monkeypatch, tmp_path):
    monkeypatch.setenv("OLLAMA_BIN", str(tmp_path / "no-ollama"))
    monkeypatch.setenv("QUARTO_BIN", str(tmp_path / "no-quarto"))
    found = by_part(doctor.checks(gpus=[]))
    assert found["Ollama"].status == doctor.MISSING and "OLLAMA_BIN" in found["Ollama"].detail
    assert found["Quarto"].status == doctor.MISSING and "QUARTO_BIN" in found["Quarto"].detail


def test_the_command_prints_the_machine_and_a_line_per_part():
    res = CliRunner().invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("machine: m-") and len(lines) >= 8
    assert any(line.strip().startswith("GPU:") for line in lines)


def test_the_gpu_servers_are_listed_with_whether_a_gpu_can_run_them():
    from gaplab.machine.doctor import checks

    without = {c.part: c for c in checks(gpus=[])}
    with_gpu = {c.part: c for c in checks(gpus=["NVIDIA GeForce RTX 4090, 24564 MiB"])}
    for part in ("vLLM (CUDA)", "SGLang"):
        assert "refused on this machine" in without[part].detail
        assert "runs on NVIDIA GeForce RTX 4090" in with_gpu[part].detail
    assert "--runtime sglang" in without["SGLang"].detail or without["SGLang"].status == "ready"
