"""JSONL files users write (prompt sets, evaluation sets): one JSON object per line, each bad line
named as FILE:LINE in one error that states the file's rule."""

from __future__ import annotations

import json
from collections.abc import Iterator


def objects(text: str, name: object, rule: str, error: type[Exception] = ValueError) -> Iterator[tuple[str, int, dict]]:
    """(FILE:LINE, line number, object) for every non-blank line of `text`; a line that is not a
    JSON object raises `error` naming FILE:LINE and the rule."""
    # split on newlines only: JSON strings may hold other line separators (U+2028)
    for no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{name}:{no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not JSON ({exc.msg}); {rule}") from None
        if not isinstance(obj, dict):
            raise error(f"{where}: a JSON {type(obj).__name__}, not an object; {rule}")
        yield where, no, obj
