"""The client's HTTP/1.1 response parser (parse_response) and line splitter (body_lines),
fed the same bytes cut into network reads at every position: the result must not depend
on where the reads were cut, and each line must carry the arrival time of the read that
brought its last byte."""

from gaplab.measure.http1 import body_lines, parse_response

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = [b'data: {"a": 1}', b'data: {"b": 22}', b'data: {"c": 333}', b"data: [DONE]"]
# one event per frame, two events in one frame (with a chunk extension), one event split
# across two frames, then the last chunk with a trailer
FRAMES = [EVENTS[0] + b"\n\n", EVENTS[1] + b"\n\n" + EVENTS[2] + b"\n\n", EVENTS[3][:7], EVENTS[3][7:] + b"\n\n"]
CHUNKED = (HEAD + b"%x\r\n%s\r\n" % (len(FRAMES[0]), FRAMES[0])
           + b"%x;foo=bar\r\n%s\r\n" % (len(FRAMES[1]), FRAMES[1])
           + b"".join(b"%X\r\n%s\r\n" % (len(f), f) for f in FRAMES[2:])
           + b"0\r\nX-Trailer: yes\r\n\r\n")
BODY = b"".join(FRAMES)


def reads(raw: bytes, *cuts: int) -> list[tuple[int, bytes]]:
    """raw cut at the given offsets; read k arrives at time k."""
    bounds = [0, *cuts, len(raw)]
    return [(k, raw[a:b]) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def read_holding(raw: bytes, offset: int, cuts: tuple[int, ...]) -> int:
    """Index of the read that carries byte `offset` of raw."""
    return sum(offset >= c for c in cuts)


def expected_lines(raw: bytes, cuts: tuple[int, ...]) -> list[tuple[int, bytes]]:
    out, pos = [], len(HEAD)
    for event in EVENTS:
        # the newline that ends this event's line, found past the event's last byte in raw
        last = raw.index(event[-4:], pos) + 4
        newline = raw.index(b"\n", last)
        out.append((read_holding(raw, newline, cuts), event))
        pos = newline
    return out


def test_chunked_stream_cut_in_two_at_every_byte():
    for cut in range(1, len(CHUNKED)):
        status, headers, body, complete = parse_response(reads(CHUNKED, cut))
        assert (status, complete) == (200, True), cut
        assert headers["transfer-encoding"] == "chunked" and headers["content-type"] == "text/event-stream"
        assert b"".join(d for _, d in body) == BODY, cut  # no frame header, extension or trailer leaks in
        assert body_lines(body) == expected_lines(CHUNKED, (cut,)), cut


def test_chunked_stream_one_byte_per_read():
    cuts = tuple(range(1, len(CHUNKED)))
    status, _, body, complete = parse_response(reads(CHUNKED, *cuts))
    assert (status, complete) == (200, True) and b"".join(d for _, d in body) == BODY
    assert body_lines(body) == expected_lines(CHUNKED, cuts)


def test_chunk_size_line_split_across_reads():
    at = CHUNKED.index(b";foo=bar")
    for cut in (at - 1, at, at + 4):  # inside the size, before ";", inside the extension
        _, _, body, complete = parse_response(reads(CHUNKED, cut, cut + 3))
        assert complete and b"".join(d for _, d in body) == BODY


def test_chunked_without_its_last_chunk_is_incomplete():
    cut = CHUNKED.index(b"0\r\nX-Trailer")
    for raw in (CHUNKED[:cut], CHUNKED[:cut + 1], CHUNKED[:cut - 3]):
        status, _, body, complete = parse_response(reads(raw, len(HEAD) + 5))
        assert (status, complete) == (200, False)
        assert BODY.startswith(b"".join(d for _, d in body))


def test_a_garbled_chunk_size_is_incomplete_not_an_exception():
    raw = HEAD + b"5\r\nabcde\r\nzz\r\nmore\r\n0\r\n\r\n"
    status, _, body, complete = parse_response(reads(raw, len(HEAD) + 3))
    assert (status, complete) == (200, False) and b"".join(d for _, d in body) == b"abcde"


def test_content_length_body():
    body_bytes = EVENTS[0] + b"\n\n" + EVENTS[3] + b"\n\n"
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body_bytes) + body_bytes
    for cut in range(1, len(raw)):
        status, headers, body, complete = parse_response(reads(raw, cut))
        assert (status, complete) == (200, True) and b"".join(d for _, d in body) == body_bytes
        assert [line for _, line in body_lines(body)] == [EVENTS[0], EVENTS[3]]
    assert parse_response(reads(raw[:-3]))[3] is False  # fewer bytes than announced


def test_body_without_framing_ends_with_the_connection():
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY
    status, headers, body, complete = parse_response(reads(raw, 40, 60))
    assert (status, headers, complete) == (200, {"connection": "close"}, False)  # only the close ends it
    assert b"".join(d for _, d in body) == BODY and [e for _, e in body_lines(body)] == EVENTS


def test_status_line_only():
    assert parse_response(reads(b"HTTP/1.1 204 No Content\r\n\r\n")) == (204, {}, [(0, b"")], False)
    # the connection closed inside the head: the status is still what the server answered
    assert parse_response(reads(b"HTTP/1.1 503 Service Unavailable\r\nRetry-Af", 20)) == (503, {}, [], False)
    assert parse_response(reads(b"HTTP/1.1 50")) == (None, {}, [], False)
    assert parse_response([]) == (None, {}, [], False)


def test_not_http_at_all_is_no_status_not_an_exception():
    assert parse_response(reads(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))[0] is None
    assert parse_response(reads(b"HTTP/1.1 OK 200\r\n\r\n"))[0] is None


def test_body_lines_last_line_without_newline_keeps_the_time_its_bytes_arrived():
    # the final empty piece (the read that carried only the 0-size chunk) brought no byte of it
    body = [(1, b"data: a\n\ndata: [DO"), (2, b"NE]"), (3, b"")]
    assert body_lines(body) == [(1, b"data: a"), (2, b"data: [DONE]")]


def test_body_lines_ndjson_and_crlf():
    body = [(1, b'{"a": 1}\r\n\r\n{"b"'), (2, b': 2}\n'), (3, b"\n")]
    assert body_lines(body, b"") == [(1, b'{"a": 1}'), (2, b'{"b": 2}')]
    sse = [(1, b"event: message\r\ndata: x\r\n\r\n: comment\r\n")]
    assert body_lines(sse) == [(1, b"data: x")]
