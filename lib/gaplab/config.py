"""Project folders and settings, from one place.

Every setting can be overridden by an environment variable with the GAPLAB_ prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("GAPLAB_ROOT", Path(__file__).resolve().parents[2]))
DATA_DIR = Path(os.environ.get("GAPLAB_DATA_DIR", ROOT / "data"))
RAW_DIR = DATA_DIR / "raw"
REFERENCE_DIR = DATA_DIR / "reference"
NOTEBOOKS_DIR = ROOT / "notebooks"
SCENARIOS_DIR = ROOT / "scenarios"
BUILD_DIR = Path(os.environ.get("GAPLAB_BUILD_DIR", ROOT / "build"))
SITE_DIR = ROOT / "_site"
# Build and model caches live outside the clone so a fresh clone reuses them.
CACHE_DIR = Path(os.environ.get("GAPLAB_CACHE", Path.home() / ".cache" / "gaplab"))

SCHEMA_VERSION = 10  # 2: machine_id, series_id, trial on every row; measured_s per run. 3: other_cores,
# steal_cores. 4: cold start and model placement as run columns. 5: weight_bytes, kv_bytes_per_token.
# 6: the capability table; bandwidth rows name their device. 7: open-loop rate and workload kind
# on every row; requests keep the workload's target lengths, tag and longest output gap. 8: the model's
# load apart from the server's start, and the engine version. 9: reasoning models' first answer token
# and reasoning token counts; why the CPU's energy was not read. 10: the engine that answered, attached
# servers included (store.ADDED)
