"""The one small HTTP GET used for everything that is not a measured request: health
checks, /metrics and /slots samples, model lists and versions (and one POST, for a server's
admin calls such as loading a model). None means "no answer" (refused, timed out, not 2xx,
or not JSON for get_json); callers decide what that means."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def get_bytes(url: str, api_key: str | None = None, timeout: float = 2) -> bytes | None:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # raises HTTPError unless 2xx
            return resp.read()
    except (urllib.error.URLError, OSError):
        return None


def get_json(url: str, api_key: str | None = None, timeout: float = 10):
    body = get_bytes(url, api_key, timeout)
    try:
        return json.loads(body) if body is not None else None
    except ValueError:
        return None


def post_json(url: str, body: dict, timeout: float = 60):
    """POST a JSON body and read a JSON answer; None when there is none (as get_json)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
