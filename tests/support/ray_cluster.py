"""A real one-node Ray cluster on loopback for a test or a benchmark: `ray start --head` with
`cpus` CPUs (as many tasks of one CPU at once), stopped with every process it started. Never
`ray stop`, which would stop any other cluster on the machine too."""

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = Path(sys.executable).parent / "ray"


@contextlib.contextmanager
def local_cluster(cpus: int = 2, start_timeout: float = 120):
    """Yields the cluster's address (127.0.0.1:PORT)."""
    from gaplab.runtimes.process import free_port

    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="gaplab-ray-")) / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(RAY), "start", "--head", "--block", f"--num-cpus={cpus}", f"--port={port}",
                                 "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                                 "--disable-usage-stats"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start --head did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        procs = [psutil.Process(head.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            procs += procs[0].children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
