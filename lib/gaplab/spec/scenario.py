"""Scenario files: a declarative matrix of runtimes x models x quants x workloads x concurrency.

A scenario with a wrong field, value or type stops before anything runs, with one line
that names the field and what is allowed (ScenarioError).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from gaplab import runtimes
from gaplab.spec.ablation import Ablation
from gaplab.spec.load import LoadSpec
from gaplab.spec.workloads import WORKLOAD_KINDS, Strict, WorkloadSpec, one_of  # kinds: fixed, distribution, ...


def stable_key(spec: dict) -> str:
    """A short hash of a spec, stable across runs and machines (cell keys)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


_ABSENT = object()


class ScenarioError(ValueError):
    """A user mistake in a scenario file; its message is one line meant for the user."""


class RuntimeSpec(Strict):
    """One runtime configuration: a server gaplab starts, or one it attaches to by URL."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    kind: str  # one of runtimes.kinds(): llamacpp, vllm, openai, ollama
    # servers started here (llamacpp, vllm, ollama without base_url); for vllm, parallel is
    # --max-num-seqs, for ollama OLLAMA_NUM_PARALLEL
    parallel: int = Field(1, ge=1, le=256)
    threads: int = Field(1, ge=1, le=512)
    ctx_size: int = Field(4096, ge=256)
    # Restrict this runtime to some models, and give it its own quants (vLLM serves dtypes,
    # llama.cpp serves GGUF files): empty means every model, with the model's quants. A model
    # that lists some of these quants gets those only (Ollama on each model's own 4-bit file);
    # one that lists none of them gets them all (vLLM's BF16 beside GGUF quants).
    models: list[str] = []
    quants: list[str] = []
    # attach: the name this server knows a model by, when it differs from models[].served_name
    served_names: dict[str, str] = {}
    # Restrict this runtime to some workloads (names); empty means every workload.
    workloads: list[str] = []
    # The server's prefix (prompt) cache: llama.cpp turns it off per request (cache_prompt),
    # vLLM at launch (--no-enable-prefix-caching).
    prefix_cache: bool = True
    extra_args: list[str] = []
    # fields added to every request, e.g. {ignore_eos: true} on vLLM
    extra_body: dict = {}
    # openai and ollama: the server to attach to (ollama without it: gaplab starts one)
    base_url: str | None = None
    api_key_env: str | None = None
    # attach: per model, a file on this machine that describes what the server serves (a GGUF
    # file, or a Hugging Face config.json or its folder), for the bytes a decode step reads where
    # the server does not say them (runtimes.identify); not part of the cell's identity
    model_files: dict[str, str] = Field({}, alias="model_config")
    # what one server of this runtime takes on a Ray cluster's node (gaplab sweep --ray)
    cpus: float | None = Field(None, gt=0, description="CPUs a server group's task reserves on a Ray node "
                               "(default: threads + 1 for a server gaplab starts, 1 for one it attaches to)")
    gpus: float = Field(0, ge=0, description="GPUs it reserves (vLLM's tensor parallel size, say)")
    accelerator: str | None = Field(None, description="Ray accelerator type its node must have, e.g. A100")
    # the kind's own fields (its module's Fields model), written beside these in the YAML mapping
    options: runtimes.Fields = runtimes.Fields()

    def served_name(self, model: "ModelSpec") -> str:
        return self.served_names.get(model.name) or model.served_name or model.name

    def quants_for(self, model: "ModelSpec") -> list[str]:
        listed = [q for q in self.quants if q in model.quants]
        return listed or self.quants or list(model.quants)

    @model_validator(mode="before")
    @classmethod
    def _own_fields(cls, data: object) -> object:
        """The kind's own fields, out of the mapping into `options`; another kind's field refused."""
        if not isinstance(data, dict):
            return data  # not a mapping: the validation says so
        kind = runtimes.kinds().get(data.get("kind", ""))
        if kind is None:
            return data  # an unknown kind: the field validators say which
        own = set(kind.fields.model_fields)
        common = {f.alias or name for name, f in cls.model_fields.items()}
        for key in data:
            owners = [f"'{k}'" for k, v in sorted(runtimes.kinds().items()) if key in v.fields.model_fields]
            if key not in own and key not in common and owners:
                raise ValueError(f"{key}: a field of kind {' and '.join(owners)}, not of '{kind.name}'; remove it")
        options = {**(data.get("options") or {}), **{k: v for k, v in data.items() if k in own}}
        return {**{k: v for k, v in data.items() if k not in own}, "options": options}

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return one_of(kind, sorted(runtimes.kinds()))

    @field_validator("options", mode="before")
    @classmethod
    def _kind_options(cls, options: object, info) -> runtimes.Fields:
        kind = runtimes.kinds().get(info.data.get("kind", ""))
        return kind.fields.model_validate(options) if kind else runtimes.Fields()

    @field_validator("extra_body")
    @classmethod
    def _no_reserved(cls, extra: dict, info) -> dict:
        kind = runtimes.kinds().get(info.data.get("kind", ""))
        if kind is None:  # an unknown kind, which _known_kind reports
            return extra
        for path in kind.reserved:
            node: object = extra
            for part in path.split("."):
                node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
            if node is not _ABSENT:
                raise ValueError(f"{path} is set by gaplab for kind '{kind.name}', to force each request's output "
                                 "length and stream it; remove it (a workload's output_tokens sets the length)")
        return extra

    @field_validator("model_files")
    @classmethod
    def _files_exist(cls, files: dict[str, str], info) -> dict[str, str]:
        """Each path as read: a relative one from the scenario file's folder, as workload files."""
        base = Path((info.context or {}).get("base_dir", "."))
        found = {model: base / Path(path).expanduser() for model, path in files.items()}
        for model, path in found.items():
            if not path.exists():
                raise ValueError(f"{model}: {files[model]} does not exist here; name a GGUF file or a Hugging Face "
                                 "config.json on the machine that runs gaplab")
        return {model: str(path.resolve()) for model, path in found.items()}

    @property
    def started_here(self) -> bool:
        return runtimes.kinds()[self.kind].started_here(self.base_url)

    @model_validator(mode="after")
    def _attach_needs_url(self) -> "RuntimeSpec":
        kind = runtimes.kinds()[self.kind]
        if not kind.starts and not self.base_url:
            raise ValueError(f"base_url is required when kind is '{self.kind}' (e.g. http://gpu-box:8000/v1)")
        if not self.prefix_cache and self.kind == "ollama":
            raise ValueError("prefix_cache: Ollama has no switch for its prompt cache; remove the field")
        if not self.prefix_cache and not self.started_here:
            raise ValueError("prefix_cache: an attached server's cache is set where it is started; "
                             "remove the field, or start the server without its prefix cache")
        if self.model_files and self.started_here:
            raise ValueError("model_config: only for servers gaplab attaches to (it reads the files of those it "
                             "starts); remove the field")
        if not kind.attaches and self.base_url:
            attached = " and ".join(f"'{k}'" for k, v in sorted(runtimes.kinds().items()) if v.attaches)
            raise ValueError(f"base_url is only for kinds {attached}; a '{self.kind}' runtime is started by gaplab")
        return self

    def launch_flags(self) -> dict:
        """The flags that make this runtime's identity (part of every cell key)."""
        flags = runtimes.kinds()[self.kind].identity_flags(self)
        # each only when set, so adding these fields kept older cell keys
        if self.extra_body:
            flags["extra_body"] = self.extra_body
        if not self.prefix_cache:
            flags["prefix_cache"] = False
        return flags


class ModelSpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    api: Literal["chat", "completions"] = "chat"
    quants: list[str] = Field(min_length=1)
    # Name the server knows the model by (attach); defaults to the gaplab name.
    served_name: str | None = None


class Scenario(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    runtimes: list[RuntimeSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    workloads: list[WorkloadSpec] = Field(min_length=1)
    load: LoadSpec
    seed: int = 0
    ablations: list[Ablation] = []

    @model_validator(mode="after")
    def _unique_names(self) -> "Scenario":
        for field in ("runtimes", "models", "workloads"):
            names = [x.name for x in getattr(self, field)]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{field}: names must be unique, '{dup[0]}' appears twice")
        for field, known in (("models", {m.name for m in self.models}), ("workloads", {w.name for w in self.workloads})):
            for i, rt in enumerate(self.runtimes):
                unknown = [m for m in getattr(rt, field) if m not in known]
                if unknown:
                    raise ValueError(f"runtimes.{i}.{field}: {unknown[0]!r} is not one of the scenario's {field} "
                                     f"({', '.join(sorted(known))})")
        models = {m.name for m in self.models}
        for i, rt in enumerate(self.runtimes):
            unknown = sorted(set(rt.model_files) - models)
            if unknown:
                raise ValueError(f"runtimes.{i}.model_config: {unknown[0]!r} is not one of the scenario's models "
                                 f"({', '.join(sorted(models))})")
        for i, wl in enumerate(self.workloads):
            if wl.kind == "multi-turn" and self.levels(wl)[1]:
                raise ValueError(f"workloads.{i}: a multi-turn workload runs with users (concurrency), not rates: "
                                 "each user's next turn waits for the last answer")
        for i, ablation in enumerate(self.ablations):
            ablation.check(self, f"ablations.{i}")
        return self

    def levels(self, workload) -> tuple[list[int], list[float]]:
        """The load levels a workload is measured at: its own (concurrency, rates) when it names
        either, else the scenario's."""
        own_c, own_r = getattr(workload, "concurrency", None), getattr(workload, "rates", None)
        if own_c is not None or own_r is not None:
            return list(own_c or []), list(own_r or [])
        return list(self.load.concurrency), list(self.load.rates)

    def cells(self) -> list["Cell"]:
        out = []
        # what each run stores of the scenario's ablations: the report apportions gaps from the data
        ablations = [{**a.model_dump(), "workload": a.workload_name(self), "chain": a.chain(self)}
                     for a in self.ablations]
        for rt, model, wl in itertools.product(self.runtimes, self.models, self.workloads):
            if (rt.models and model.name not in rt.models) or (rt.workloads and wl.name not in rt.workloads):
                continue
            users, rates = self.levels(wl)
            levels = [{"concurrency": c} for c in users] + [{"rate": r} for r in rates]
            for quant, level in itertools.product(rt.quants_for(model), levels):
                out.append(Cell(scenario=self.name, runtime=rt, model=model, quant=quant,
                                workload=wl, load=self.load, seed=self.seed, ablations=ablations, **level))
        # Group cells of one server together so a sweep starts each server once.
        out.sort(key=lambda c: (c.server_key, c.workload.name, c.concurrency or 0, c.rate or 0))
        return out


class Cell(Strict):
    """One point of the matrix: what one papermill run of notebooks/10-measure.ipynb measures."""

    scenario: str
    runtime: RuntimeSpec
    model: ModelSpec
    quant: str
    workload: WorkloadSpec
    concurrency: int | None = None  # closed loop: this many users
    rate: float | None = None  # open loop: this many requests per second
    load: LoadSpec
    seed: int = 0
    ablations: list[dict] = []  # the scenario's, resolved (Scenario.cells); not part of the identity

    @model_validator(mode="after")
    def _one_level(self) -> "Cell":
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("a cell has either concurrency or rate")
        return self

    @property
    def level(self) -> str:
        return f"c{self.concurrency}" if self.rate is None else f"r{self.rate:g}"

    @property
    def cell_id(self) -> str:
        return f"{self.runtime.name}/{self.model.name}/{self.quant}/{self.workload.name}/{self.level}"

    @property
    def server_key(self) -> str:
        return f"{self.runtime.name}/{self.model.name}/{self.quant}"

    def identity(self) -> dict:
        """Everything that changes what one request measures; hashed into cell_key. How long and how
        often a cell is measured (trials, precision) is not part of it: more trials refine one cell."""
        # Unset fields and the workload's load levels are left out, so cells of a fixed workload
        # at a concurrency keep the keys they had before rates and workload kinds existed.
        workload = {k: v for k, v in self.workload.model_dump(exclude_none=True).items()
                    if k not in ("concurrency", "rates")}
        out: dict[str, object] = {"runtime": self.runtime.name, "kind": self.runtime.kind, "flags": self.runtime.launch_flags(),
               "model": self.model.name, "api": self.model.api, "quant": self.quant,
               "workload": workload, "concurrency": self.concurrency, "seed": self.seed}
        if self.rate is not None:
            out.update(rate=self.rate, arrival=self.load.arrival,
                       **({"burstiness": self.load.burstiness} if self.load.arrival == "gamma" else {}))
        return out

    @property
    def cell_key(self) -> str:
        return stable_key(self.identity())


def _describe(err: ErrorDetails) -> str:
    # pydantic puts a workload's kind in the loc (workloads.0.distribution.prompt); the user wrote no such key
    parts = err["loc"]
    loc = ".".join(str(p) for i, p in enumerate(parts)  # nor a runtime's own fields under options
                   if not (i and isinstance(parts[i - 1], int) and p in WORKLOAD_KINDS) and p != "options")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_invalid":  # an unknown workload kind
        return f"{loc}.kind: got {err['ctx']['tag']!r}; input should be one of {', '.join(sorted(WORKLOAD_KINDS))}"
    if err["type"] == "extra_forbidden":
        msg = "unknown field; check the spelling against scenarios/local-cpu.yaml"
    elif err["type"] == "literal_error":
        msg = f"got {err.get('input')!r}; {msg.lower()}"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"got {err['input']!r}; {msg[0].lower() + msg[1:]}"
    return f"{loc}: {msg}" if loc else msg


def parse_scenario(data: object, source: str = "scenario", base_dir: str | Path = ".") -> Scenario:
    """base_dir: where a workload's relative file path is read from (the scenario file's folder)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the file must hold a mapping with runtimes, models, workloads, load")
    try:
        return Scenario.model_validate(data, context={"base_dir": Path(base_dir)})
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_describe(exc.errors()[0])}") from None


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    if not path.exists():
        raise ScenarioError(f"{path}: no such scenario file (see scenarios/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_scenario(data, str(path), path.parent)
