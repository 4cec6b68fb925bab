"""Ablations of a scenario: a gap between two of its runtimes, taken apart one factor at a time.

    ablations:
      - name: ollama-vs-llamacpp
        a: ollama-default          # the baseline
        b: llamacpp-batch8         # the other end of the gap
        factors:                   # factor -> the runtime that is a with only that factor as in b
          slots: ollama-batch8
          wrapper: llamacpp-single
        model: smollm2-135m
        quant: Q4_1
        users: 8

Every runtime named is a runtime of the scenario, so the sweep measures the whole chain in its
rounds; report.ablation apportions the gap. Each run stores its scenario's ablations
(run meta_json), so the pages read them from the data.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from gaplab.spec.workloads import Strict, one_of


class Ablation(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    a: str
    b: str
    factors: dict[str, str] = Field(min_length=1)
    model: str
    # the quant of every runtime that serves it; a runtime that serves the model in one quant of
    # its own (vLLM's BF16) is taken at that one
    quant: str
    users: int = Field(ge=1)
    workload: str | None = None  # default: the scenario's first workload
    metric: str = "aggregate_tok_s"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        from gaplab.analysis.metrics import HIGHER_IS_BETTER

        return one_of(metric, HIGHER_IS_BETTER)

    def check(self, scenario, where: str) -> None:
        """Every runtime, the model, workload, quant and level named exist in the scenario; raises
        ValueError naming the field."""
        runtimes = {r.name: r for r in scenario.runtimes}
        models = {m.name: m for m in scenario.models}
        for field, name in [("a", self.a), ("b", self.b)] + [(f"factors.{f}", r) for f, r in self.factors.items()]:
            if name not in runtimes:
                raise ValueError(f"{where}.{field}: {name!r} is not one of the scenario's runtimes "
                                 f"({', '.join(sorted(runtimes))})")
        if self.model not in models:
            raise ValueError(f"{where}.model: {self.model!r} is not one of the scenario's models")
        names = [w.name for w in scenario.workloads]
        if self.workload is not None and self.workload not in names:
            raise ValueError(f"{where}.workload: {self.workload!r} is not one of the scenario's workloads")
        users, _ = scenario.levels(next(w for w in scenario.workloads if w.name == self.workload_name(scenario)))
        if self.users not in users:
            raise ValueError(f"{where}.users: {self.users} is not a level the workload is measured at ({users})")
        for name in {self.a, self.b, *self.factors.values()}:
            if self.quant_of(runtimes[name], models[self.model]) is None:
                raise ValueError(f"{where}.quant: runtime {name!r} does not serve {self.model} at {self.quant}")

    def workload_name(self, scenario) -> str:
        return self.workload or scenario.workloads[0].name

    def quant_of(self, runtime, model) -> str | None:
        """The quant this ablation takes runtime at: its own quant, or the one it serves."""
        if (runtime.models and model.name not in runtime.models):
            return None
        quants = runtime.quants_for(model)
        return self.quant if self.quant in quants else quants[0] if len(quants) == 1 else None

    def chain(self, scenario) -> dict[str, str]:
        """role -> 'runtime · quant' of each configuration: a, b, and each factor's."""
        runtimes = {r.name: r for r in scenario.runtimes}
        model = next(m for m in scenario.models if m.name == self.model)
        roles = {"a": self.a, "b": self.b, **{f"factor:{f}": r for f, r in self.factors.items()}}
        return {role: f"{name} · {self.quant_of(runtimes[name], model)}" for role, name in roles.items()}
