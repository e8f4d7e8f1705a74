"""A local HTTP server standing in for the Hugging Face Hub's file routes (stdlib, one thread).

``hf_hub_download`` needs two requests per file: ``HEAD /{repo_id}/resolve/{revision}/{path}`` (metadata:
``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``Content-Length``) and ``GET`` on the same URL (the body,
honouring ``Range`` when it resumes). Faults are set per path with :meth:`FakeHub.fault`.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Seen:
    """One request the server answered."""

    method: str
    path: str
    authorization: str | None
    range: str | None


@dataclass
class FakeHub:
    """Repository contents and faults; ``url`` is set once serving."""

    repo_id: str
    revision: str
    files: dict[str, bytes]
    token: str | None = None
    faults: dict[str, list[str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, path: str, *kinds: str) -> None:
        """Queue faults for ``path``, used one per matching request, in order:
        ``head-404``, ``head-401``, ``head-503``, ``get-500``, ``get-corrupt``, ``get-cut``."""
        self.faults.setdefault(path, []).extend(kinds)

    def take(self, path: str, method: str) -> str | None:
        with self.lock:
            queue = self.faults.get(path, [])
            if queue and queue[0].startswith(method.lower() + "-"):
                return queue.pop(0)
        return None

    def count(self, method: str) -> int:
        return sum(s.method == method for s in self.seen)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    prefix = f"/{hub.repo_id}/resolve/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _error(self, status: int, code: str, message: str) -> None:
            body = message.encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _route(self) -> tuple[str, bytes] | None:
            raw = urllib.parse.unquote(self.path.split("?")[0])
            hub.seen.append(Seen(self.command, raw, self.headers.get("Authorization"), self.headers.get("Range")))
            if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._error(401, "", "Invalid credentials in Authorization header")
                return None
            if not raw.startswith(prefix):
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            revision, _, path = raw[len(prefix):].partition("/")
            if revision != hub.revision:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            if path not in hub.files:
                self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
                return None
            return path, hub.files[path]

        def _meta(self, data: bytes, length: int) -> None:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))

        def do_HEAD(self) -> None:
            found = self._route()
            if found is None:
                return
            path, data = found
            fault = hub.take(path, "HEAD")
            if fault == "head-404":
                return self._error(404, "EntryNotFound", f"{path} does not exist")
            if fault == "head-401":
                return self._error(401, "", "Invalid credentials in Authorization header")
            if fault == "head-503":
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(200)
            self._meta(data, len(data))
            self.end_headers()
            return None

        def do_GET(self) -> None:
            found = self._route()
            if found is None:
                return
            path, data = found
            fault = hub.take(path, "GET")
            if fault == "get-500":
                return self._error(500, "", "Internal Error - We're working hard to fix this as soon as possible!")
            body = bytes(b ^ 0xFF for b in data) if fault == "get-corrupt" else data
            start = 0
            ranged = self.headers.get("Range")
            if ranged and ranged.startswith("bytes="):
                start = int(ranged[len("bytes="):].split("-")[0])
            part = body[start:]
            self.send_response(206 if start else 200)
            self._meta(data, len(part))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.end_headers()
            if fault == "get-cut":
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            self.wfile.write(part)
            return None

    return Handler


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    """Serve ``hub`` on 127.0.0.1 (a free port) in a thread; ``hub.url`` is the endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
