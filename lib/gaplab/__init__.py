"""gaplab: measure LLM inference runtimes and explain the gaps between them.

Read this first. A scenario file (spec/: scenario, load, workloads, ablation) names a matrix of
cells. `gaplab sweep` (sweep/rounds) measures them in rounds of trials: sweep/servers opens each
cell's server through its runtime adapter (runtimes/: one module per kind, found by `kinds()`,
installed by provision/), and sweep/notebook has papermill run notebooks/10-measure.ipynb once
per trial. That notebook calls measure/trial.run_trial: measure/prompts builds the requests,
measure/loadgen (or measure/client_processes) sends them closed- or open-loop under
measure/guard's bounds, measure/client times every chunk (measure/http1, measure/protocols),
measure/telemetry samples the server beside them, and storage/ writes the rows as Parquet
(storage/partfiles while it runs, storage/store for the layout and reads, storage/run_record for a
run's settings as typed columns, storage/backend for a folder or an s3:// URL). analysis/ turns raw rows into figures (metrics), intervals (stats) and
the rule for when a cell or a comparison has had trials enough (stopping), which the sweep and
the report both call. report/ builds each page's frames, charts and sentences from those;
capability/ and quality/ measure what a runtime can do and how well it answers; machine/ says what
a run was measured on (hardware, memory bandwidth, the model files' bytes, `gaplab doctor`).
cli is the `gaplab` command. Module imports run one way (no module imports one that imports it back):
the order above, spec at the bottom and report at the top, with a few lazy imports across it.
"""

__version__ = "0.1.0"
