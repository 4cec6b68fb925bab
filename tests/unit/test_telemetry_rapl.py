"""The CPU packages' energy from RAPL, read from a powercap tree laid out as Linux lays it out,
in a temporary folder: joules since the start per package, a counter that wraps, and the
reason stored where nothing can be read."""

import json
import os

import pytest

from gaplab.measure.telemetry import Rapl, Sampler

RANGE = 262_143_328_850  # max_energy_range_uj of a real package counter


def zone(root, name, package, energy_uj, span=RANGE):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(package + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{span}\n")
    return d / "energy_uj"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "powercap"
    pkg0 = zone(root, "intel-rapl:0", "package-0", 1_000_000)
    pkg1 = zone(root, "intel-rapl:1", "package-1", RANGE - 500_000)
    zone(root, "intel-rapl:0:0", "core", 7)  # a part of package 0: not counted twice
    zone(root, "intel-rapl-mmio:0", "package-0", 7)  # the same package through MMIO
    return root, pkg0, pkg1


def joules(rows):
    return {json.loads(labels)["package"]: value for metric, labels, value in rows if metric == "energy_j"}


def test_energy_counts_from_the_start_per_package_and_undoes_the_wrap(tree):
    root, pkg0, pkg1 = tree
    rapl = Rapl(root)
    assert rapl.unmeasured is None and len(rapl.zones) == 2
    pkg0.write_text("3500000\n")
    pkg1.write_text(f"{RANGE - 100_000}\n")
    assert joules(rapl.rows()) == pytest.approx({"package-0": 2.5, "package-1": 0.4})
    pkg1.write_text("1600000\n")  # wrapped: 0.1 J to the top, then 1.6 J from 0
    pkg0.write_text("4500000\n")
    assert joules(rapl.rows()) == pytest.approx({"package-0": 3.5, "package-1": 0.4 + 0.1 + 1.6})


def test_the_sampler_stores_energy_on_the_request_clock(tree):
    root, pkg0, _ = tree
    sampler = Sampler(powercap=root)
    sampler.sample()
    pkg0.write_text("2000000\n")
    sampler.sample()
    rows = [r for r in sampler.rows() if r["source"] == "rapl"]
    assert [r["value"] for r in rows if "package-0" in r["labels"]] == pytest.approx([0.0, 1.0])
    assert rows[0]["t_ns"] < rows[-1]["t_ns"] and sampler.energy_unmeasured is None


def test_no_powercap_or_no_package_says_so(tmp_path):
    missing = Rapl(tmp_path / "nothing")
    assert missing.rows() == [] and missing.unmeasured.startswith(f"{tmp_path / 'nothing'} does not exist")
    (tmp_path / "empty").mkdir()
    assert Rapl(tmp_path / "empty").unmeasured.startswith(f"{tmp_path / 'empty'} has no RAPL package")
    sampler = Sampler(powercap=tmp_path / "nothing")
    sampler.sample()
    assert not [r for r in sampler.rows() if r["source"] == "rapl"] and sampler.energy_unmeasured


def test_an_unreadable_counter_gives_its_reason_and_no_rows(tree):
    root, pkg0, _ = tree
    pkg0.unlink()
    pkg0.mkdir()  # readable by nobody as a number, root included
    rapl = Rapl(root)
    assert rapl.rows() == [] and str(pkg0) in rapl.unmeasured and "directory" in rapl.unmeasured
    if os.geteuid() != 0:  # root reads whatever the mode says
        pkg0.rmdir()
        pkg0.write_text("5\n")
        pkg0.chmod(0)
        assert "only root" in Rapl(root).unmeasured
