"""A static file server on 127.0.0.1 for the download tests (never the real internet)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path


class LocalServer:
    """Serves ``directory`` on 127.0.0.1 (a free port) inside a ``with`` block; ``url`` is its
    base address and ``requests`` the paths requested so far."""

    def __init__(self, directory: Path):
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **k):
                super().__init__(*a, directory=str(directory), **k)

            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
