"""Behaviour kept: the committed data's runs give the claims table recorded in tests/golden/
(written by tests/support/claims_golden.py), value for value and word for word."""

import json
import sys
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from claims_golden import RUNS, TABLE, claims_of  # noqa: E402

from gaplab.spec.config import RAW_DIR  # noqa: E402
from gaplab.storage.backend import location  # noqa: E402


def test_the_committed_runs_give_the_recorded_claims_table():
    recorded = json.loads(RUNS.read_text())
    golden = pl.read_csv(TABLE, infer_schema_length=None)
    now = claims_of(location(RAW_DIR), recorded["machine_id"], recorded["run_ids"])
    assert now.height == golden.height > 50
    # the CSV round trip types columns by their values: compare as the file would hold them
    now = pl.read_csv(now.write_csv().encode(), infer_schema_length=None)
    assert_frame_equal(now, golden, check_exact=False)
