"""The store at a URL: a real S3-compatible server (moto's, from PyPI, on loopback) holds a
sweep's runs, written by the measure notebook through papermill, read back by the report's
frames, and recovered from part files; bad store URLs and missing credentials stop a command
in one line before anything is measured."""

import json
import os
import secrets
import subprocess
from urllib.parse import parse_qs, urlsplit

import polars as pl
import pytest
import sse_server
import yaml

from gaplab.analysis import metrics
from gaplab.machine.hardware import machine_id
from gaplab.report import speed
from gaplab.storage import backend, partfiles, store

pytestmark = pytest.mark.slow

SECRET = "never-stored-9f3c"  # the secret key the tests use: it must not reach any stored file


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    # where moto's request recorder writes, read when moto is imported (its default is the cwd)
    os.environ["MOTO_RECORDER_FILEPATH"] = str(tmp_path_factory.mktemp("moto") / "requests.jsonl")
    moto = pytest.importorskip("moto.server")
    server = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """Credentials and endpoint as a user sets them: in the environment, read by s3fs/botocore
    here and in every child process; no machine or home configuration is consulted."""
    import boto3
    import s3fs

    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a file system made with other settings is not reused
    bucket = f"gaplab-{secrets.token_hex(4)}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/study"
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def server_url():
    with sse_server.serving(0.05, 0.01, 12, cpu=None) as url:
        yield url


def _scenario(folder, url, trials: int = 1):
    path = folder / f"s3-{trials}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s3", "models": [{"name": "fake", "api": "chat", "quants": ["fp16"]}],
        "runtimes": [{"name": "fake", "kind": "openai", "base_url": url}],
        "workloads": [{"name": "p8-o12", "prompt_tokens": 8, "output_tokens": 12}],
        "load": {"concurrency": [1, 2], "requests": 3, "min_seconds": 0, "warmup": 1, "trials": trials,
                 "max_trials": trials, "precision": 0}}))
    return path


def _store_listings(endpoint: str, store_url: str, sweep) -> int:
    """How many times the store's whole tree was listed (S3 ListObjectsV2 from its root) while
    sweep() ran, as the S3 server recorded the requests."""
    import requests

    requests.post(f"{endpoint}/moto-api/recorder/reset-recording")
    requests.post(f"{endpoint}/moto-api/recorder/start-recording")
    try:
        sweep()
    finally:
        requests.post(f"{endpoint}/moto-api/recorder/stop-recording")
    root = store_url.split("://", 1)[1].split("/", 1)[1].rstrip("/")
    urls = [json.loads(line)["url"] for line in requests.get(f"{endpoint}/moto-api/recorder/download-recording")
            .text.splitlines() if line.strip()]
    listed = [parse_qs(urlsplit(u).query) for u in urls if "list-type=2" in u]
    return sum(q.get("prefix", [""])[0].rstrip("/") in ("", root) for q in listed)


def test_a_sweep_lists_the_store_once_a_round_at_most(s3_endpoint, s3_env, server_url, tmp_path, gaplab_cli):
    """The notebook hands each trial's figures to the sweep, so no trial lists the store: three
    rounds list it no more than one round does, but for one listing a round."""
    def sweep(trials: int, where: str):
        res = subprocess.run([*gaplab_cli, "sweep", str(_scenario(tmp_path, server_url, trials)), "--data-dir",
                              f"{s3_env}/{where}"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0 and f"{2 * trials} trials in {trials} rounds" in res.stdout, res.stdout + res.stderr

    one = _store_listings(s3_endpoint, f"{s3_env}/one", lambda: sweep(1, "one"))
    three = _store_listings(s3_endpoint, f"{s3_env}/three", lambda: sweep(3, "three"))
    assert one >= 1 and three - one <= 2, (one, three)  # 4 more trials, 2 more rounds


def test_a_sweep_writes_to_object_storage_and_the_report_reads_it(s3_env, server_url, tmp_path, gaplab_cli):
    path = _scenario(tmp_path, server_url)
    res = subprocess.run([*gaplab_cli, "sweep", str(path), "--data-dir", s3_env + "/"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not list(tmp_path.rglob("*.parquet"))  # nothing went to a local folder named like the URL
    files = backend.glob(s3_env, "**/*.parquet")
    assert files and all(f.startswith(s3_env + "/") for f in files)
    runs = store.read_table(s3_env, "run")
    assert sorted(runs["cell_id"]) == ["fake/fake/fp16/p8-o12/c1", "fake/fake/fp16/p8-o12/c2"]
    assert set(runs["status"]) == {"complete"} and set(runs["machine_id"]) == {machine_id()}
    # the report's own frames, from the bucket
    trials = metrics.trial_summary(speed.measured_requests(s3_env, machine_id()))
    assert trials.height == 2 and (trials["requests"] >= 3).all()
    fs = backend.filesystem(s3_env)
    assert not [f for f in files if SECRET.encode() in fs.cat_file(f.split("://", 1)[1])]
    again = subprocess.run([*gaplab_cli, "sweep", str(path), "--data-dir", s3_env], capture_output=True, text=True,
                           timeout=120)
    assert "2 already measured" in again.stdout, again.stdout + again.stderr
    # every page, its notebook given the URL as data_dir (papermill), built from the bucket
    site = subprocess.run([*gaplab_cli, "report", "--data-dir", s3_env, "--out", str(tmp_path / "site"),
                           "--builder", "nbconvert"],
                          capture_output=True, text=True, timeout=600)
    assert site.returncode == 0 and "requests:  " in site.stdout, site.stdout + site.stderr
    page = (tmp_path / "site" / "notebooks" / "20-throughput-latency.html").read_text()
    assert "fake · fp16" in page and "Traceback" not in page


def test_part_files_in_a_bucket_are_recovered(s3_env):
    from gaplab.measure.records import RequestRecord

    ident = {n: None for n in store.IDENTITY.names}
    ident.update(run_id=store.new_run_id(), cell_id="c", cell_key="k", scenario="s", hardware_id="hw",
                 machine_id="m", series_id="s1", trial=1, runtime="rt", runtime_kind="openai", model="m", quant="q",
                 workload="w")
    writer = partfiles.RunWriter(s3_env, ident, {"status": "interrupted"})
    recs = [RequestRecord(index=i, user=0, warmup=False, scheduled_ns=i, sent_ns=i, end_ns=i + 5) for i in range(3)]
    writer.flush(recs[:2])
    writer.flush(recs)
    assert len(backend.glob(s3_env, "**/*.part-*.parquet")) == 4  # two flushes, requests and chunks each
    assert partfiles.recover(s3_env) == [ident["run_id"]]
    run = store.read_table(s3_env, "run").row(0, named=True)
    assert run["status"] == "interrupted" and run["n_requests"] == 3
    assert store.read_run(s3_env, ident["run_id"], "requests")["request_index"].to_list() == [0, 1, 2]
    assert not backend.glob(s3_env, "**/*.part-*.parquet")


@pytest.mark.parametrize("url, says", [
    ("foo://bucket/x", "--data-dir: foo://bucket/x: no file system is known for foo://"),
    ("gs://bucket/x", "gs:// needs the package gcsfs; install it (pip install gcsfs)"),
])
def test_a_store_url_nothing_can_open_stops_in_one_line(url, says, tmp_path, gaplab_cli):
    path = _scenario(tmp_path, "http://127.0.0.1:9/v1")
    for cmd in (["sweep", str(path)], ["report"]):
        res = subprocess.run([*gaplab_cli, *cmd, "--data-dir", url], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and says in res.stderr, res.stderr


def test_missing_credentials_stop_before_any_cell(s3_env, server_url, tmp_path, gaplab_cli):
    path = _scenario(tmp_path, server_url)
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    res = subprocess.run([*gaplab_cli, "sweep", str(path), "--data-dir", s3_env], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "NoCredentialsError" in res.stderr and "AWS_ACCESS_KEY_ID" in res.stderr
    assert "sweep" not in res.stdout  # no progress: nothing was measured
    missing = subprocess.run([*gaplab_cli, "sweep", str(path), "--data-dir", "s3://no-such-bucket-here/x"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "create the bucket" in missing.stderr, missing.stderr
    assert store.read_table(s3_env, "run").filter(pl.col("scenario") == "s3").is_empty()
