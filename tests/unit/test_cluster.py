"""What the driver works out before it sends anything to a Ray cluster."""

import pytest

from gaplab import cluster
from gaplab.scenario import RuntimeSpec


@pytest.mark.parametrize("address, host_port", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("ray://head:10001", ("head", 10001)), ("127.0.0.1:1234/", ("127.0.0.1", 1234)),
])
def test_addresses_are_read_as_host_and_port(address, host_port):
    assert cluster._host_port(address) == host_port


@pytest.mark.parametrize("address, example", [("head", "head:6379"), ("ray://head", ":10001"), ("head:port", ":6379")])
def test_an_address_without_a_port_is_refused_with_an_example(address, example):
    with pytest.raises(ValueError, match=f"^--ray: {address!r} is not HOST:PORT") as err:
        cluster._host_port(address)
    assert example.split(":")[-1] in str(err.value)


def test_a_runtime_asks_for_what_its_fields_say():
    rt = RuntimeSpec(name="v", kind="openai", base_url="http://x/v1", gpus=2, cpus=4, accelerator="A100")
    assert cluster.needs(rt) == {"num_cpus": 4, "num_gpus": 2, "accelerator_type": "A100"}
    assert cluster.needs(RuntimeSpec(name="v", kind="openai", base_url="http://x/v1")) == {"num_cpus": 1, "num_gpus": 0}


def test_a_local_folder_on_several_nodes_gets_a_note(monkeypatch, tmp_path):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    note = cluster.shared_store_note(tmp_path)
    assert note and "the cluster has 2 nodes" in note and "s3://" in note
    assert cluster.shared_store_note("s3://bucket/study") is None
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    assert cluster.shared_store_note(tmp_path) is None


def test_a_scenario_field_outside_the_cluster_limits_is_refused():
    with pytest.raises(ValueError, match="gpus"):
        RuntimeSpec(name="v", kind="openai", base_url="http://x/v1", gpus=-1)
