"""Replays Ollama's documented responses (tests/fixtures/ollama) over real HTTP.

Ollama cannot be installed here; this server answers /api/version, /api/tags, /api/ps
a streamed POST /api/chat the way the documentation says Ollama does, and, on its
OpenAI-compatible endpoint, GET /v1/models and a non-streamed POST /v1/chat/completions
(bodies kept in `openai_bodies`), answered by what the request asks for: a stream (SSE, with
usage last), a tool call, JSON output, logprobs, or a plain answer (a long prompt seen before
reports its cached tokens).
The first chat request "loads" the model: it is answered from chat_first.ndjson, and
/api/ps shows the model (split between GPU and CPU) only from then on. A prompt asking for
one word ends early (chat_stop.ndjson: Ollama has no option to ignore the end of text).
Lines are sent `line_delay` apart; `parallel` streams at most at once (OLLAMA_NUM_PARALLEL),
the rest wait.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ollama"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "OllamaReplay"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send_json(self, name: str) -> None:
        body = (FIXTURES / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        routes = {"/api/version": "version.json", "/api/tags": "tags.json", "/v1/models": "openai_models.json",
                  "/api/ps": "ps_split.json" if self.server.loaded else "ps_empty.json"}
        if self.path not in routes:
            self.send_error(404)
            return
        self._send_json(routes[self.path])

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/chat/completions":
            request = json.loads(body)
            prompt = request["messages"][-1]["content"]
            with self.server.lock:
                self.server.openai_bodies.append(request)
                seen = prompt in self.server.prompts
                self.server.prompts.add(prompt)
            if request.get("stream"):
                self._stream((FIXTURES / "openai_stream.sse").read_bytes().split(b"\n\n")[:-1], b"\n\n",
                             "text/event-stream")
                return
            if "tools" in request:
                name = "openai_tool_call.json"
            elif "response_format" in request:
                name = "openai_json_schema.json"
            elif request.get("logprobs"):
                name = "openai_logprobs.json"
            elif len(prompt) > 2000:  # the prefix probe's long prompts
                name = "openai_prompt_cached.json" if seen else "openai_prompt_first.json"
            else:
                name = "openai_chat.json"
            self._send_json(name)
            return
        if self.path != "/api/chat":
            self.send_error(404)
            return
        request = json.loads(body)
        with self.server.lock:
            first, self.server.loaded = not self.server.loaded, True
        name = "chat_first.ndjson" if first else "chat.ndjson"
        if "single word" in request["messages"][-1]["content"]:
            name = "chat_stop.ndjson"
        with self.server.slots:
            self._stream((FIXTURES / name).read_bytes().splitlines(True))

    def _stream(self, lines: list[bytes], end: bytes = b"", kind: str = "application/x-ndjson") -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines:
            time.sleep(self.server.line_delay)
            line += end
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class OllamaReplay(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, line_delay: float = 0.005, parallel: int = 4):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.loaded, self.line_delay, self.lock = False, line_delay, threading.Lock()
        self.slots = threading.Semaphore(parallel)
        self.openai_bodies: list[dict] = []
        self.prompts: set[str] = set()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def __enter__(self) -> "OllamaReplay":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
