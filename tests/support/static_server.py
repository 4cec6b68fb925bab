"""A local HTTP server that answers fixed bodies by path, for engines that cannot run here
(SGLang, TGI, vLLM on a GPU): each test gives the answers that engine's server code writes."""

from __future__ import annotations

import http.server
import json
import threading
from contextlib import contextmanager


@contextmanager
def serving(routes: dict[str, object]):
    """Yields the root URL of a server that answers GET and POST `path` with routes[path] (a dict
    or list as JSON, a str as text) and 404 otherwise; stopped when the block ends."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path not in routes:
                self.send_error(404)
                return
            value = routes[self.path]
            body = value.encode() if isinstance(value, str) else json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if isinstance(value, str) else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
