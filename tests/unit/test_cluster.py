"""What the driver works out before it sends anything to a Ray cluster."""

import re

import pytest

from gaplab.spec.scenario import RuntimeSpec
from gaplab.sweep import cluster


@pytest.mark.parametrize("address, host_port", [
    ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("ray://head:10001", ("head", 10001)), ("127.0.0.1:1234/", ("127.0.0.1", 1234)),
])
def test_addresses_are_read_as_host_and_port(address, host_port):
    assert cluster._host_port(address) == host_port


@pytest.mark.parametrize("address, example", [("head", "head:6379"), ("ray://head", ":10001"), ("head:port", ":6379"),
                                              ("http://head:8265", "HOST:6379")])
def test_an_address_without_a_port_is_refused_with_an_example(address, example):
    with pytest.raises(ValueError, match="^--ray: ") as err:
        cluster._host_port(address)
    assert example.split(":")[-1] in str(err.value)


def test_a_runtime_asks_for_what_its_fields_say():
    rt = RuntimeSpec(name="v", kind="openai", base_url="http://x/v1", gpus=2, cpus=4, accelerator="A100")
    assert cluster.needs(rt) == {"num_cpus": 4, "num_gpus": 2, "accelerator_type": "A100"}
    assert cluster.needs(RuntimeSpec(name="v", kind="openai", base_url="http://x/v1")) == {"num_cpus": 1, "num_gpus": 0}
    # a server gaplab starts: its threads, and one for the client
    assert cluster.needs(RuntimeSpec(name="l", kind="llamacpp", threads=3))["num_cpus"] == 4


def test_a_local_folder_with_other_machines_in_the_cluster_gets_a_note(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "_here", lambda: "n1")
    monkeypatch.setattr(cluster, "_nodes", lambda: [{"NodeID": "n1"}, {"NodeID": "n2"}, {"NodeID": "n3"}])
    note = cluster.shared_store_note(tmp_path)
    assert note and "2 node(s) of the cluster are other machines" in note and "s3://" in note
    assert cluster.shared_store_note("s3://bucket/study") is None
    monkeypatch.setattr(cluster, "_here", lambda: "elsewhere")  # a driver off the cluster: every node is remote
    monkeypatch.setattr(cluster, "_nodes", lambda: [{"NodeID": "n1"}])
    assert "1 node(s)" in cluster.shared_store_note(tmp_path)
    monkeypatch.setattr(cluster, "_here", lambda: "n1")
    assert cluster.shared_store_note(tmp_path) is None


NODES = [{"Resources": {"CPU": 4.0, "GPU": 1.0, "accelerator_type:A10G": 1.0}},
         {"Resources": {"CPU": 2.0, "GPU": 2.0, "accelerator_type:L4": 1.0}}]


@pytest.mark.parametrize("fields, says", [
    ({"gpus": 2, "cpus": 4}, "runtimes.v: no single node has both 2 GPUs and 4 CPUs"),
    ({"gpus": 3}, "runtimes.v.gpus: 3 asked, and the largest node has 2 GPUs"),
    ({"cpus": 6}, "runtimes.v.cpus: 6 asked, and the largest node has 4 CPUs"),
    ({"accelerator": "H100"}, "runtimes.v.accelerator: no node of the cluster has 'H100'; it has ['A10G', 'L4']"),
    ({"accelerator": "A10G", "gpus": 2}, "runtimes.v.gpus: 2 asked, and the largest node of that accelerator has 1"),
])
def test_a_runtime_no_single_node_can_place_is_refused(monkeypatch, fields, says):
    monkeypatch.setattr(cluster, "_nodes", lambda: NODES)
    with pytest.raises(ValueError, match="^" + re.escape(says)):
        cluster.check_resources([RuntimeSpec(name="v", kind="openai", base_url="http://x/v1", **fields)])
    cluster.check_resources([RuntimeSpec(name="v", kind="openai", base_url="http://x/v1", gpus=2, cpus=2)])


def test_cells_of_one_attached_server_go_in_one_task():
    from gaplab.spec.scenario import parse_scenario

    sc = parse_scenario({"name": "s", "runtimes": [
        {"name": "a", "kind": "openai", "base_url": "http://h:8000/v1", "served_names": {"m2": "x"}},
        {"name": "b", "kind": "llamacpp"}],
        "models": [{"name": "m1", "api": "chat", "quants": ["Q4_0", "Q8_0"]}, {"name": "m2", "api": "chat", "quants": ["Q4_0"]}],
        "workloads": [{"name": "w", "prompt_tokens": 8, "output_tokens": 8}], "load": {"concurrency": [1]}})
    servers = {}
    for cell in sc.cells():
        servers.setdefault(cluster.server_of(cell), set()).add(cell.server_key)
    assert servers["http://h:8000/v1"] == {"a/m1/Q4_0", "a/m1/Q8_0", "a/m2/Q4_0"}
    assert all(len(keys) == 1 for url, keys in servers.items() if url != "http://h:8000/v1")


def test_a_scenario_field_outside_the_cluster_limits_is_refused():
    with pytest.raises(ValueError, match="gpus"):
        RuntimeSpec(name="v", kind="openai", base_url="http://x/v1", gpus=-1)
