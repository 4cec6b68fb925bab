"""HTTP/1.1 responses from timed network reads: status, headers and the body decoded from its
framing (chunked transfer encoding or content-length), each body piece keeping the arrival
time of the read that carried it; and the lines of a streamed body.

Hand-written rather than h11 or httptools: bench/http_framing.py measured h11 9 to 10x
slower on the same reads, and httptools, while faster, runs after the stream has ended
(off the timing path), where this decoder's 0.6 us per chunk does not matter.
"""

from __future__ import annotations


def _status(line: str) -> int | None:
    """The status code of an HTTP/1.x status line; None when it is not one."""
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def parse_response(reads: list[tuple[int, bytes]]) -> tuple[int | None, dict, list[tuple[int, bytes]], bool]:
    """HTTP/1.1 response from timed reads: (status, headers, [(arrival_ns, body bytes)], complete).

    Decodes chunked transfer encoding; each body piece keeps the arrival time of the read
    that carried it. `complete` says the framing is complete: the zero-size chunk arrived,
    or content-length bytes did; a body without framing (ended by closing) is never
    complete. Never raises: a garbled response gives status None or complete False.
    """
    raw = b""
    for k, (ns, data) in enumerate(reads):
        raw += data
        if b"\r\n\r\n" in raw:
            break
    else:  # the head never ended; a status line alone still says what the server answered
        return (_status(raw.split(b"\r\n")[0].decode("latin-1")) if b"\r\n" in raw else None), {}, [], False
    head, rest = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = _status(lines[0])
    if status is None:
        return None, {}, [], False
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    pieces = [(ns, rest)] + reads[k + 1:]
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        length = headers.get("content-length", "")
        return status, headers, pieces, length.isdigit() and sum(len(d) for _, d in pieces) >= int(length)
    out, pending, remaining = [], b"", 0  # remaining: bytes left in the current frame, -1: its CRLF
    for ns, data in pieces:
        buf, pos, got = pending + data, 0, []
        while True:
            if remaining > 0:
                take = buf[pos:pos + remaining]
                got.append(take)
                pos += len(take)
                remaining -= len(take)
                if remaining:
                    break
                remaining = -1
            if remaining == -1:
                if len(buf) - pos < 2:
                    break
                pos, remaining = pos + 2, 0
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            try:  # a size, then optional ";extensions"
                size = int(buf[pos:end].split(b";")[0], 16)
            except ValueError:  # not chunked encoding after all: keep what was decoded
                out.append((ns, b"".join(got)))
                return status, headers, out, False
            pos = end + 2
            if size == 0:  # the last chunk; trailers may follow and carry no body
                out.append((ns, b"".join(got)))
                return status, headers, out, True
            remaining = size
        pending = buf[pos:]
        out.append((ns, b"".join(got)))
    return status, headers, out, False


def body_lines(body: list[tuple[int, bytes]], prefix: bytes = b"data:") -> list[tuple[int, bytes]]:
    """The lines of a streamed body that start with prefix (SSE `data:` lines; b"" for NDJSON),
    each with the arrival time of its last byte. Blank lines are dropped; a last line without
    its newline is kept (a parser downstream decides whether it is whole)."""
    events, tail, tail_ns = [], b"", 0
    for ns, data in body:
        if not data:  # an empty piece (e.g. the read with the final 0-size chunk) carries no byte
            continue
        lines = (tail + data).split(b"\n")
        tail, tail_ns = lines.pop(), ns
        events += [(ns, line.rstrip(b"\r")) for line in lines if line.startswith(prefix) and line.strip()]
    if tail.startswith(prefix) and tail.strip():
        events.append((tail_ns, tail.rstrip(b"\r")))
    return events
