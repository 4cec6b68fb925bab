"""Replays Ollama's documented responses (tests/fixtures/ollama) over real HTTP.

Ollama cannot be installed here; this server answers /api/version, /api/tags, /api/ps
a streamed POST /api/chat the way the documentation says Ollama does, and a non-streamed
POST /v1/chat/completions (its OpenAI-compatible endpoint; bodies kept in `openai_bodies`).
The first chat request "loads" the model: it is answered from chat_first.ndjson, and
/api/ps shows the model (split between GPU and CPU) only from then on. Lines are sent
`line_delay` apart.
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
        routes = {"/api/version": "version.json", "/api/tags": "tags.json",
                  "/api/ps": "ps_split.json" if self.server.loaded else "ps_empty.json"}
        if self.path not in routes:
            self.send_error(404)
            return
        self._send_json(routes[self.path])

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/chat/completions":
            with self.server.lock:
                self.server.openai_bodies.append(json.loads(body))
            self._send_json("openai_chat.json")
            return
        if self.path != "/api/chat":
            self.send_error(404)
            return
        with self.server.lock:
            first, self.server.loaded = not self.server.loaded, True
        lines = (FIXTURES / ("chat_first.ndjson" if first else "chat.ndjson")).read_bytes().splitlines(True)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines:
            time.sleep(self.server.line_delay)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True


class OllamaReplay(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, line_delay: float = 0.005):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.loaded, self.line_delay, self.lock = False, line_delay, threading.Lock()
        self.openai_bodies: list[dict] = []
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
