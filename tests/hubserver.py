"""A stand-in Hugging Face Hub on 127.0.0.1 for tests: serves repos (folders) the test builds, answering the
requests huggingface_hub 2.4 makes: model info (/api/models/{repo}[/revision/{rev}]), the file tree
(/api/models/{repo}/tree/{rev}) and files (/{repo}/resolve/{rev}/{file}, HEAD and GET, with ETag and
X-Repo-Commit). Repos marked gated answer 401 GatedRepo without an Authorization header."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # one commit per repo is enough here


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Path] = {}
        self.gated: set[str] = set()
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo_id: str, folder: Path, gated: bool = False) -> None:
        self.repos[repo_id] = Path(folder)
        if gated:
            self.gated.add(repo_id)

    def close(self) -> None:
        self.server.shutdown()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _send(self, code, payload: bytes = b"", headers=None, body=True):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def _error(self, code, error_code, body):
                self._send(
                    code,
                    json.dumps({"error": error_code}).encode(),
                    {"X-Error-Code": error_code, "Content-Type": "application/json"},
                    body,
                )

            def _repo(self, parts):
                repo = "/".join(parts[:2])
                if repo not in hub.repos:
                    return None, "RepoNotFound"
                if repo in hub.gated and "authorization" not in {k.lower() for k in self.headers.keys()}:
                    return None, "GatedRepo"
                return repo, None

            def _serve(self, body):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                api = path.startswith("/api/models/")
                parts = path.removeprefix("/api/models/").strip("/").split("/") if api else path.strip("/").split("/")
                repo, err = self._repo(parts)
                if err:
                    return self._error(401 if err == "GatedRepo" else 404, err, body)
                root = hub.repos[repo]
                files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
                if api and len(parts) >= 4 and parts[2] == "tree":
                    tree = [
                        {
                            "type": "file",
                            "path": f,
                            "size": (root / f).stat().st_size,
                            "oid": hashlib.sha1((root / f).read_bytes()).hexdigest(),
                        }
                        for f in files
                    ]
                    return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
                if api:
                    info = {
                        "id": repo,
                        "modelId": repo,
                        "sha": COMMIT,
                        "private": False,
                        "gated": repo in hub.gated,
                        "siblings": [{"rfilename": f} for f in files],
                    }
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "EntryNotFound", body)
                f = root / "/".join(parts[4:])
                if not f.is_file():
                    return self._error(404, "EntryNotFound", body)
                data = f.read_bytes()
                self._send(
                    200,
                    data,
                    {
                        "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                        "X-Repo-Commit": COMMIT,
                        "Content-Type": "application/octet-stream",
                    },
                    body,
                )

        return Handler
