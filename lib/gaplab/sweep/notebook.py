"""The measure notebook in a Jupyter kernel: `gaplab sweep` has papermill execute
notebooks/10-measure.ipynb once per trial, in one kernel kept for the whole sweep, against
its session's server; `gaplab run` has it run one trial that starts its own server. Either way a
trial is measured by the notebook, which calls measure.trial.run_trial.
"""

from __future__ import annotations

import re
import signal
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import psutil

from gaplab.measure.trial import TrialPlan
from gaplab.runtimes import Server
from gaplab.spec.config import BUILD_DIR, NOTEBOOKS_DIR, ROOT
from gaplab.spec.scenario import Cell
from gaplab.storage import store
from gaplab.storage.backend import Root

MEASURE = NOTEBOOKS_DIR / "10-measure.ipynb"


class CtrlC:
    """While a trial runs in the kernel (its own session, so the terminal's Ctrl-C misses it),
    pass Ctrl-C on to the kernel, let it store what it measured, then stop the sweep. A second
    Ctrl-C, or one while no kernel runs, stops at once."""

    def __init__(self):
        self.pressed = 0

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame):
        self.pressed += 1
        kernels = [p for p in psutil.Process().children(recursive=True)
                   if "ipykernel_launcher" in " ".join(p.cmdline())]
        if self.pressed > 1 or not kernels:
            raise KeyboardInterrupt
        for k in kernels:
            k.send_signal(signal.SIGINT)


class MeasureNotebook:
    """The measure notebook in one Jupyter kernel kept for the whole sweep: papermill runs it there once
    per trial (0.25 s instead of 2.5 s for a new kernel and its imports here). papermill runs on a
    worker thread, so its event loop does not take over Ctrl-C from CtrlC. A kernel that dies is
    replaced before the next trial."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="gaplab-papermill")
        self.km = self._manager()

    @staticmethod
    def _manager():
        from jupyter_client.manager import AsyncKernelManager

        return AsyncKernelManager(kernel_name="python3")

    def execute(self, notebook: Path, output: Path, parameters: dict) -> None:
        import papermill as pm

        future = self.pool.submit(
            pm.execute_notebook, str(notebook), str(output), parameters=parameters, cwd=str(ROOT),
            progress_bar=False, log_output=False, km=self.km,
            # the kernel's notice that it talks to papermill over loopback TCP is not for users
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                continue

    def run_trial(self, scenario: str | Path, cell: Cell, raw_dir: Root, server: Server | None = None, trial: int = 1,
                  series_id: str = "", out_dir: Path = BUILD_DIR / "runs", run_id: str = "") -> str | None:
        """One papermill run of the measure notebook for one trial of a cell, stored as run_id (a sweep
        on Ray names it ahead; empty: a new one). server: the session's server to measure (None: the
        notebook starts the cell's own). Returns what went wrong as text, or None. Either way the
        notebook has stored the run, with its status."""
        import papermill as pm

        run_id = run_id or store.new_run_id()
        # the kernel runs in the clone's root: local paths go to it whole
        raw_dir = raw_dir.resolve() if isinstance(raw_dir, Path) else raw_dir
        plan = TrialPlan(scenario=Path(scenario).resolve(), cell_id=cell.cell_id, server=server,
                         data_dir=str(raw_dir), trial=trial, series_id=series_id, run_id=run_id,
                         summary_path=summary_path(out_dir, run_id).resolve())
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.execute(MEASURE, notebook_path(out_dir, cell, trial), plan.parameters())
        except pm.PapermillExecutionError as exc:
            return f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # the kernel itself died: a new one for the next trial
            self._shutdown()
            self.km = self._manager()
            return f"{type(exc).__name__}: {exc}"
        return None

    def _shutdown(self) -> None:
        from jupyter_core.utils import run_sync

        if self.km.has_kernel:
            self.pool.submit(run_sync(self.km.shutdown_kernel), now=True).result()

    def close(self) -> None:
        self._shutdown()
        self.pool.shutdown()


def notebook_path(out_dir: Path, cell: Cell, trial: int) -> Path:
    """Where the executed measure notebook of a cell's trial is left."""
    return out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", cell.cell_id) + f"-t{trial}.ipynb")


def summary_path(out_dir: Path, run_id: str) -> Path:
    """Where the measure notebook leaves a trial's metrics.trial_summary row, as JSON."""
    return out_dir / f"{run_id}.summary.json"
