"""The records gaplab measures into: one request as the client saw it (with its chunks'
kinds), and the identity every stored row of a run carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import compress
from operator import itemgetter, sub

# Chunk kinds stored in the chunks table.
ROLE, CONTENT, REASONING, TOOL, EMPTY, USAGE = "role", "content", "reasoning", "tool", "empty", "usage"
TOKEN_KINDS = (CONTENT, REASONING, TOOL)
ANSWER_KINDS = (CONTENT, TOOL)  # output that is not the model's reasoning
_TOKEN_KIND = frozenset(TOKEN_KINDS).__contains__


@dataclass
class RequestRecord:
    index: int
    user: int
    warmup: bool
    scheduled_ns: int
    sent_ns: int = 0
    first_token_ns: int | None = None
    last_token_ns: int | None = None
    end_ns: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None  # what went wrong, in the server's or the system's words
    error_kind: str | None = None  # a short name to count errors by (fail)
    output_chars: int = 0
    server_timings: dict | None = None
    # the server's own count of reasoning tokens (usage.completion_tokens_details), where it gives one
    server_reasoning_tokens: int | None = None
    # (arrival_ns, kind, n_chars) per SSE event, in arrival order
    chunks: list[tuple[int, str, int]] = field(default_factory=list)
    # what the workload asked for (workload.Request): the server's usage says what it saw
    target_prompt_tokens: int | None = None
    target_output_tokens: int | None = None
    tag: str | None = None

    def fail(self, kind: str, message: str, first: bool = False) -> None:
        """Mark the request failed, with its kind (timeout, HTTP 503, ...) named where it happened.
        first: keep an error already set (the most telling one came first)."""
        if not (first and self.error is not None):
            self.error, self.error_kind = message, kind

    @property
    def token_chunks(self) -> int:
        """Chunks that carried output (TOKEN_KINDS), whatever the server's own count says."""
        # counted in C (map, list.count), as the figures below: a part file's writer takes each
        # record's, and a loop in Python cost more a chunk than reading the chunk
        kinds = list(map(itemgetter(1), self.chunks))
        return sum(map(kinds.count, TOKEN_KINDS))

    @property
    def first_answer_ns(self) -> int | None:
        """Arrival of the first answer chunk (ANSWER_KINDS): first_token_ns is that of any output
        chunk, reasoning included, so the two differ only for a reasoning model."""
        return next((c[0] for c in self.chunks if c[1] in ANSWER_KINDS), None)

    @property
    def reasoning_chunks(self) -> int:
        """Chunks that carried reasoning text: the client's count of reasoning tokens."""
        return list(map(itemgetter(1), self.chunks)).count(REASONING)

    @property
    def max_gap_ns(self) -> int | None:
        """The longest wait between two output chunks: a stall such as another request's prefill."""
        times = list(compress(map(itemgetter(0), self.chunks), map(_TOKEN_KIND, map(itemgetter(1), self.chunks))))
        return max(map(sub, times[1:], times), default=None)


@dataclass(frozen=True)
class RunIdentity:
    """The columns IDENTITY names, typed: every row of a run carries them (sessions.run_identity
    builds one for a run against a server; quality's tool runs fill one in themselves)."""

    run_id: str
    cell_id: str
    cell_key: str
    scenario: str
    hardware_id: str
    machine_id: str
    series_id: str
    trial: int
    runtime: str
    runtime_kind: str
    runtime_version: str
    model: str
    quant: str
    workload: str
    concurrency: int
    threads: int | None
    parallel: int | None
    rate: float | None = None  # open-loop cells: requests per second (concurrency is then None)
    workload_kind: str | None = None

    def row(self) -> dict:
        return asdict(self)
