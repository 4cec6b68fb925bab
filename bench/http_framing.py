"""gaplab's own HTTP/1.1 response decoder (http1.parse_response) against h11 and, when
installed, httptools, on the same timed reads: is there a well-kept library that should
replace it?

    .venv/bin/python bench/http_framing.py [--tokens 256] [--repeat 200]

The reads are a streamed chat completion as llama-server sends it: a chunked response, one
SSE event per chunk, one network read per chunk (the arrival stamps are made up, in order).
Both decoders must return the same body bytes with the same arrival stamp per piece; the
script checks that, then prints the CPU time per response and per chunk (median of
`repeat`), in the same process. h11 comes with httpx (a dependency of the openai SDK);
httptools (llhttp's C parser) is not a dependency: `.venv/bin/pip install httptools` to
compare it too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import h11

try:
    import httptools
except ImportError:
    httptools = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from gaplab.measure.http1 import parse_response  # noqa: E402


def reads(tokens: int) -> list[tuple[int, bytes]]:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"Server: llama.cpp\r\n\r\n")
    events = [{"choices": [{"delta": {"role": "assistant"}, "index": 0}]}]
    events += [{"choices": [{"delta": {"content": f" tok{i}"}, "index": 0}]} for i in range(tokens)]
    events.append({"choices": [{"delta": {}, "finish_reason": "length", "index": 0}],
                   "usage": {"prompt_tokens": 32, "completion_tokens": tokens}})
    out = [(0, head)]
    for i, ev in enumerate(events):
        data = b"data: " + json.dumps(ev).encode() + b"\n\n"
        out.append((1000 * (i + 1), b"%x\r\n%s\r\n" % (len(data), data)))
    done = b"data: [DONE]\n\n"
    out.append((1000 * (len(events) + 1), b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)))
    return out


def with_h11(timed: list[tuple[int, bytes]]) -> tuple[int | None, list[tuple[int, bytes]], bool]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    status, body, complete = None, [], False
    for ns, data in timed:
        conn.receive_data(data)
        got = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                got.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                complete = True
        body.append((ns, b"".join(got)))
    return status, body, complete


def with_httptools(timed: list[tuple[int, bytes]]) -> tuple[int | None, list[tuple[int, bytes]], bool]:
    state = {"complete": False, "got": []}

    class Sink:
        def on_body(self, data: bytes) -> None:
            state["got"].append(data)

        def on_message_complete(self) -> None:
            state["complete"] = True

    parser = httptools.HttpResponseParser(Sink())
    body = []
    for ns, data in timed:
        parser.feed_data(data)
        body.append((ns, b"".join(state["got"])))
        state["got"] = []
    return parser.get_status_code(), body, state["complete"]


def joined(pieces: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [(ns, d) for ns, d in pieces if d]


def seconds(fn, timed, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(timed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    timed = reads(args.tokens)
    ours = parse_response(timed)
    theirs = with_h11(timed)
    same = (ours[0] == theirs[0] and ours[3] == theirs[2] and joined(ours[2]) == joined(theirs[1]))
    print(f"{len(timed) - 1} chunks in {len(timed)} reads; same status, body bytes, stamps and completeness: {same}")
    if not same:
        sys.exit("the decoders disagree")
    t_ours = seconds(parse_response, timed, args.repeat)
    t_h11 = seconds(with_h11, timed, args.repeat)
    n = len(timed) - 1
    print(f"http1.parse_response: {t_ours * 1e6:8.0f} us per response, {t_ours / n * 1e6:6.2f} us per chunk")
    print(f"h11 {h11.__version__:<17} {t_h11 * 1e6:8.0f} us per response, {t_h11 / n * 1e6:6.2f} us per chunk"
          f"  (x{t_h11 / t_ours:.1f} the time)")
    if httptools is None:
        print("httptools: not installed (.venv/bin/pip install httptools to compare it)")
        return
    ht = with_httptools(timed)
    if not (ht[0] == ours[0] and ht[2] == ours[3] and joined(ht[1]) == joined(ours[2])):
        sys.exit("httptools disagrees with http1.parse_response")
    t_ht = seconds(with_httptools, timed, args.repeat)
    print(f"httptools {httptools.__version__:<11} {t_ht * 1e6:8.0f} us per response, {t_ht / n * 1e6:6.2f} us per chunk"
          f"  (x{t_ht / t_ours:.1f} the time)")


if __name__ == "__main__":
    main()
