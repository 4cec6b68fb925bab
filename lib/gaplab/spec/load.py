"""How a scenario measures each cell (its `load:` section): closed-loop users or open-loop rates,
how long a trial runs, how many trials a cell gets and how precise it must be, the service-level
objectives goodput counts against. Checked when the scenario is loaded (scenario.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gaplab.spec.workloads import Strict, levels

SLO_METRICS = ("ttft", "tpot", "e2e")  # time to first token, time per output token after it, end to end
SLO_PERCENTILES = (50, 90, 95, 99)


class Objective(Strict):
    """A service-level objective: `percentile` of a request latency within `max_ms`. A request that
    is within every objective's max_ms counts toward goodput."""

    metric: str
    max_ms: float = Field(gt=0)
    percentile: float = 99

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in SLO_METRICS:
            raise ValueError(f"allowed: {', '.join(SLO_METRICS)} (time to first token, per output token after "
                             "it, end to end)")
        return v

    @field_validator("percentile")
    @classmethod
    def _known_percentile(cls, v: float) -> float:
        if v not in SLO_PERCENTILES:
            raise ValueError(f"allowed: {', '.join(map(str, SLO_PERCENTILES))}")
        return v


class LoadSpec(Strict):
    """How each cell is measured: closed-loop users or open-loop rates, and how long, how often
    and how precisely.

    Closed loop (`concurrency`): N users, each sending its next request when the last ends.
    Open loop (`rates`): requests arrive at a seeded schedule of `arrival` gaps at that many
    per second, whatever is in flight; a trial sends max(requests, rate x min_seconds) of them.

    A cell is measured in trials (each its own stored run). Trials of different cells are
    interleaved in rounds; a cell gets at least `trials` of them, and more, up to
    `max_trials`, until the 95% interval of its aggregate tok/s is within `precision` of the
    estimate and its comparisons are decided (stopping.py), or its measured time reaches
    `max_cell_seconds`, and only while the sweep has run less than `max_sweep_seconds`. The report states two configurations the same where the
    95% interval of their ratio lies within `equivalence_margin` (the runs store it).
    """

    concurrency: list[int] = []
    rates: list[float] = Field([], description="open-loop request rates, per second")
    arrival: Literal["poisson", "constant", "gamma"] = "poisson"
    burstiness: float = Field(1.0, gt=0, description="gamma arrivals' shape: 1 is Poisson, below 1 burstier")
    max_lag_ms: float = Field(10.0, gt=0, description="a trial whose p99 send lag behind its schedule exceeds "
                              "this is flagged: the client, not the server, set its pace")
    slo: list[Objective] = []
    requests: int = Field(8, ge=1, description="at least this many measured requests per trial")
    min_seconds: float = Field(4.0, ge=0, description="a trial keeps sending until at least this long")
    max_seconds: float = Field(120.0, gt=0, description="a trial stops sending after this long")
    warmup: int = Field(2, ge=0, description="warmup requests before each trial, stored and flagged")
    trials: int = Field(3, ge=1, le=100, description="trials per cell, at least")
    max_trials: int = Field(6, ge=1, le=100, description="trials per cell, at most")
    precision: float = Field(0.05, ge=0, lt=1, description="target 95%-interval half-width of aggregate "
                             "tok/s, as a fraction of the estimate (0: exactly `trials` trials)")
    equivalence_margin: float = Field(0.05, gt=0, lt=1, description="a comparison whose 95% interval of the "
                                      "ratio lies within [1/(1+m), 1+m] is stated as the same within m (stats.py)")
    max_cell_seconds: float = Field(90.0, gt=0, description="cap on a cell's measured time over its trials")
    max_sweep_seconds: float | None = Field(None, gt=0, description="trials beyond `trials` start only while "
                                            "the sweep has run less than this long (none: no limit)")
    keep_servers: bool = Field(False, description="keep every server up through all rounds (fine on a CPU box; "
                               "on a GPU, servers that each take most of its memory cannot)")
    flush_seconds: float = Field(2.0, gt=0, le=60, description="completed requests are written this often")
    request_timeout: float = Field(300.0, gt=0)
    grace_seconds: float | None = Field(None, ge=0, description="after max_seconds, requests in flight get this "
                                        "long before they are cut and stored as 'cut at trial end' (none: twice "
                                        "the trial's median latency, at least 1 s)")
    stop_after_errors: int = Field(20, ge=1, description="this many failed requests in a row stop a trial as failed "
                                   "(so do more than half of the requests that ended in 5 s)")
    max_restarts: int = Field(2, ge=0, description="a server gaplab started that dies is started again for the "
                              "next trial this many times at most; then its remaining trials are stored as failed")
    processes: int = Field(1, ge=1, le=256, description="client processes a trial's users (or arrivals) are "
                           "split across, each with its own event loop: more than 1 when one core cannot "
                           "read every stream (bench/client_capacity.py)")
    telemetry_interval: float = Field(0.5, gt=0, description="seconds between telemetry samples")

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        levels(v, "every concurrency level must be 1 or more", "concurrency levels")
        return v

    @field_validator("rates")
    @classmethod
    def _positive_rates(cls, v: list[float]) -> list[float]:
        levels(v, "a rate is requests per second, above 0", "rates")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "LoadSpec":
        if not self.concurrency and not self.rates:
            raise ValueError("give concurrency (closed-loop users, e.g. [1, 4]) or rates (open-loop requests "
                             "per second, e.g. [0.5, 1, 2]), or both")
        metrics = [o.metric for o in self.slo]
        if len(set(metrics)) != len(metrics):
            raise ValueError("slo: one objective per metric")
        if self.max_trials < self.trials:
            raise ValueError(f"max_trials: got {self.max_trials}; it must be at least trials ({self.trials})")
        if self.max_seconds < self.min_seconds:
            raise ValueError(f"max_seconds: got {self.max_seconds}; it must be at least min_seconds "
                             f"({self.min_seconds})")
        return self
