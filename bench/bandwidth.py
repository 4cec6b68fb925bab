"""Does the memory-bandwidth figure repeat? Measures it twice in this process, as the sweep
does before its first trial (lib/gaplab/machine/bandwidth.py: numpy triad, one thread and all
threads, each figure the best of 20 passes, two figures per run), and prints both runs and
how far apart they are. Nothing is stored.

    .venv/bin/python bench/bandwidth.py [RUNS]      (default 2)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.machine import bandwidth  # noqa: E402

runs = [bandwidth.measure() for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 2)]
for k, rows in enumerate(runs, 1):
    print(f"run {k}: {bandwidth.summary(rows)}")
for threads in sorted({r["threads_used"] for r in runs[0] if r["device"] == "cpu"}):
    best = [max(r["gb_s"] for r in rows if r["device"] == "cpu" and r["threads_used"] == threads) for rows in runs]
    every = [r["gb_s"] for rows in runs for r in rows if r["device"] == "cpu" and r["threads_used"] == threads]
    print(f"{threads} thread{'s' if threads > 1 else ''}: runs' figures {' / '.join(f'{b:.1f}' for b in best)} GB/s, "
          f"apart by {(max(best) / min(best) - 1) * 100:.1f}%; every repeat within "
          f"{(max(every) / min(every) - 1) * 100:.1f}%")
