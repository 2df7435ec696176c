"""A loopback HTTP server that answers like the Hugging Face Hub for the calls `huggingface_hub` makes.

It serves the endpoints the real client uses to download a repository: the revision info
(``/api/models/{repo}/revision/{rev}``), the file tree (``/api/models/{repo}/tree/{rev}``) and file
resolution (``/{repo}/resolve/{rev}/{file}``, HEAD and GET, with ``ETag``, ``X-Repo-Commit`` and
``Range`` support). Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``GatedRepo``,
``RevisionNotFound``) that the client turns into typed exceptions. A file can be set to be cut off
(``cut``: bytes after which the first GET closes the connection) or to stall (``stall``: bytes after
which the first GET waits until the test kills the client), to exercise resumption. A file named in
``missing`` is listed by the revision info and the tree but answers 404 when fetched, as a Hub whose
listing and storage disagree does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class Hub:
    repos: dict[str, Repo]
    cut: dict[str, int] = field(default_factory=dict)
    stall: dict[str, int] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # method, path, headers
    sent: dict[str, int] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, file: str) -> list[dict[str, str]]:
        """Headers (lower-case names) of every GET of ``file``."""
        return [h for m, p, h in self.requests if m == "GET" and "/resolve/" in p and p.endswith("/" + file)]

    def start(self) -> Hub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, data: object) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, repo_id: str, rev: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound", "Repository Not Found")
                elif repo.gated and "Authorization" not in self.headers:
                    self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted.")
                elif rev not in ("main", repo.sha):
                    self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                else:
                    return repo
                return None

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                    repo = self._repo("/".join(parts[2:4]), parts[5])
                    if repo is None:
                        return
                    if parts[4] == "revision":
                        siblings = [{"rfilename": f} for f in repo.files]
                        self._json(
                            {
                                "id": "/".join(parts[2:4]),
                                "sha": repo.sha,
                                "siblings": siblings,
                                "private": False,
                            }
                        )
                    else:
                        self._json(
                            [
                                {
                                    "type": "file",
                                    "oid": hashlib.sha1(b).hexdigest(),
                                    "size": len(b),
                                    "path": f,
                                }
                                for f, b in repo.files.items()
                            ]
                        )
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = self._repo("/".join(parts[:2]), parts[3])
                    if repo is None:
                        return
                    name = "/".join(parts[4:])
                    if name not in repo.files or name in hub.missing:
                        self._error(404, "EntryNotFound", f"{name} does not exist")
                        return
                    self._file(repo, name, head)
                    return
                self._error(404, "NotFound", path)

            def _file(self, repo: Repo, name: str, head: bool) -> None:
                data = repo.files[name]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                self.send_response(206 if start else 200)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", repo.sha)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if head:
                    return
                first = not any(k == name for k in hub.sent)
                limit = hub.cut.get(name) if first else None
                stall = hub.stall.get(name) if first else None
                body = data[start:]
                if limit is not None or stall is not None:
                    n = limit if limit is not None else stall
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    hub.sent[name] = n
                    if stall is not None:
                        time.sleep(60)  # the test kills the client meanwhile
                    self.close_connection = True
                    return
                self.wfile.write(body)
                hub.sent[name] = len(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
