"""Project folders and settings, from one place.

Every setting can be overridden by an environment variable with the GAPLAB_ prefix.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("GAPLAB_ROOT", Path(__file__).resolve().parents[3]))
DATA_DIR = Path(os.environ.get("GAPLAB_DATA_DIR", ROOT / "data"))
RAW_DIR = DATA_DIR / "raw"
REFERENCE_DIR = DATA_DIR / "reference"
NOTEBOOKS_DIR = ROOT / "notebooks"
SCENARIOS_DIR = ROOT / "scenarios"
BUILD_DIR = Path(os.environ.get("GAPLAB_BUILD_DIR", ROOT / "build"))
SITE_DIR = ROOT / "_site"
# Build and model caches live outside the clone so a fresh clone reuses them.
CACHE_DIR = Path(os.environ.get("GAPLAB_CACHE", Path.home() / ".cache" / "gaplab"))

