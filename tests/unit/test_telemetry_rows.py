"""What the sampler's rows say about other work beside a trial."""

import pytest

from gaplab.measure.telemetry import background


def test_background_subtracts_the_server_and_the_client():
    def sample(t, busy, server, client, steal=0.0):
        return [{"t_ns": t, "source": "host", "metric": "busy_cores", "value": busy},
                {"t_ns": t, "source": "host", "metric": "steal_cores", "value": steal},
                {"t_ns": t, "source": "host", "metric": "client_cpu_pct", "value": client},
                {"t_ns": t, "source": "process", "metric": "cpu_pct", "value": server}]

    rows = sample(1, 1.5, 100, 20, 0.1) + sample(2, 1.9, 100, 20, 0.3) + sample(3, 0.5, 80, 10)[:3]
    got = background(rows)
    assert got["other_cores"] == pytest.approx(((1.5 - 1.2) + (1.9 - 1.2)) / 2)  # sample 3 has no server row
    assert got["steal_cores"] == pytest.approx((0.1 + 0.3 + 0.0) / 3)
    assert background([]) == {"other_cores": None, "steal_cores": None}
