"""Other tools' conventions from the same rows: a role-only first chunk makes the first-chunk TTFT
near zero, a queue wait moves TPOT with the first token included."""

import pytest

from gaplab.measure.records import RequestRecord
from gaplab.report import definitions, speed
from gaplab.storage import store

MS = 1_000_000


def test_each_convention_from_one_request_with_a_role_chunk_first(tmp_path):
    r = RequestRecord(index=0, user=0, warmup=False, scheduled_ns=0, sent_ns=10 * MS, first_token_ns=210 * MS,
                      last_token_ns=300 * MS, end_ns=305 * MS, completion_tokens=4)
    # the role arrives 1 ms after the send, then four one-token chunks 30 ms apart, then usage
    r.chunks = [(11 * MS, "role", 0), (210 * MS, "content", 1), (240 * MS, "content", 1), (270 * MS, "content", 1),
                (300 * MS, "content", 1), (304 * MS, "usage", 0)]
    ident = {"run_id": "20260101T000000Z-aaaaaa", "cell_id": "c", "cell_key": "k", "scenario": "s",
             "hardware_id": "hw", "machine_id": "m-1", "series_id": "s1", "trial": 1, "runtime": "rt",
             "runtime_kind": "vllm", "runtime_version": "v", "model": "m", "quant": "BF16", "workload": "w",
             "concurrency": 1, "threads": 1, "parallel": 8}
    store.write_run(tmp_path, ident, {"status": "complete"}, [r])
    row = definitions.per_request(speed.measured_requests(tmp_path), tmp_path).row(0, named=True)
    assert row["ttft_first_text"] == pytest.approx(200) and row["ttft_first_chunk"] == pytest.approx(1)
    assert row["ttft_from_scheduled"] == pytest.approx(210)
    assert row["tpot_excl_first"] == pytest.approx((295 - 200) / 3)
    assert row["tpot_incl_first"] == pytest.approx(295 / 4)
    assert row["itl_per_token"] == pytest.approx(30) and row["itl_per_chunk"] == pytest.approx(293 / 5)
    assert row["e2e_from_scheduled"] == pytest.approx(305)
    shifts = definitions.shifts(definitions.per_request(speed.measured_requests(tmp_path), tmp_path))
    first_chunk = shifts.filter((shifts["metric"] == "TTFT") & (shifts["convention"] == "first_chunk")).row(0, named=True)
    assert first_chunk["ratio"] == pytest.approx(1 / 200)  # what a role-only chunk does to a TTFT
    used = definitions.definitions().filter(definitions.definitions()["used here"])
    assert sorted(used["metric"]) == ["E2E", "ITL", "TPOT", "TTFT"]  # one convention per metric is ours
