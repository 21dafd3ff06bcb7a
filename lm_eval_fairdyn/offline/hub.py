"""A stand-in for the Hugging Face Hub on 127.0.0.1: checkpoint folders served by revision.

``fairdyn sweep --pretrained ORG/NAME --revisions ...`` goes through the real ``huggingface_hub``
and ``transformers`` code; pointing ``HF_ENDPOINT`` at a :class:`LocalHub` lets the tests and
``scripts/benchmark.py`` run that code offline, with a bandwidth limit and injected failures::

    ROOT/ORG/NAME/step0/config.json, model.safetensors, tokenizer.json, ...
    ROOT/ORG/NAME/step1000/...

    with LocalHub(ROOT, bandwidth=20e6) as hub:      # bytes per second, shared by all downloads
        os.environ["HF_ENDPOINT"] = hub.endpoint     # before huggingface_hub is imported

It answers what ``snapshot_download``, ``hf_hub_download``, ``list_repo_refs`` and
``from_pretrained`` ask (the model API's revision, tree and refs routes, and ``resolve`` with
HEAD, GET and byte ranges), with the Hub's headers (``X-Repo-Commit``, ``ETag`` and, for large
files, ``X-Linked-Etag``/``X-Linked-Size`` as for LFS files). Each revision folder gets a
commit hash from its files. ``fail(pattern, times, kind)`` breaks the next GETs of matching
files: ``"truncate"`` sends half the body and drops the connection, ``"error"`` answers 500.
``python -m lm_eval_fairdyn.offline.hub ROOT --bandwidth 20e6`` serves a folder until stopped.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_THRESHOLD = 1 << 20  # files from 1 MiB on are served as LFS files (sha256 ETag, X-Linked-*)
CHUNK = 1 << 16


class LocalHub:
    """Serves ``root/<org>/<name>/<revision>/`` folders as the Hub serves model repositories."""

    def __init__(self, root: str | Path, bandwidth: float | None = None, port: int = 0):
        self.root = Path(root)
        self.bandwidth = bandwidth  # bytes per second for all file bodies together; None: unlimited
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request answered
        self.file_gets: list[str] = []  # org/name/revision/path of every file GET answered
        self._failures: list[list] = []  # [pattern, times left, kind]
        self._lock = threading.Lock()
        self._next_send = 0.0
        self._digests: dict[Path, tuple[float, int, str, str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LocalHub:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, pattern: str, times: int = 1, kind: str = "truncate") -> None:
        """Break the next ``times`` GETs of files whose ``org/name/revision/path`` matches the glob."""
        if kind not in ("truncate", "error", "corrupt"):
            raise ValueError(f"unknown failure kind {kind!r}: use 'truncate', 'error' or 'corrupt'")
        with self._lock:
            self._failures.append([pattern, times, kind])

    def downloads(self, pattern: str = "*") -> int:
        """How many GETs of files matching the glob (``org/name/revision/path``) were answered."""
        return sum(1 for path in self.file_gets if fnmatch.fnmatch(path, pattern))

    # --- repository contents -------------------------------------------------------------
    def revisions(self, repo: str) -> list[str]:
        folder = self.root / repo
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def revision_folder(self, repo: str, revision: str) -> Path | None:
        """The folder of a branch name or of a commit hash."""
        for name in self.revisions(repo):
            if revision in (name, self.commit(repo, name)):
                return self.root / repo / name
        return None

    def files(self, folder: Path) -> list[str]:
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def digest(self, path: Path) -> tuple[int, str, str]:
        """(size, git blob sha1, sha256) of a file, cached by modification time."""
        stat = path.stat()
        known = self._digests.get(path)
        if known is None or known[0] != stat.st_mtime:
            data = path.read_bytes()
            blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            known = (stat.st_mtime, len(data), blob, hashlib.sha256(data).hexdigest())
            self._digests[path] = known
        return known[1:]

    def commit(self, repo: str, revision: str) -> str:
        """A 40-hex commit hash of the revision's file names and contents."""
        folder = self.root / repo / revision
        digest = hashlib.sha1(f"{repo}@{revision}\n".encode())
        for name in self.files(folder):
            digest.update(f"{name} {self.digest(folder / name)[1]}\n".encode())
        return digest.hexdigest()

    def entry(self, folder: Path, name: str) -> dict:
        size, blob, sha256 = self.digest(folder / name)
        entry = {"type": "file", "oid": blob, "size": size, "path": name}
        if size >= LFS_THRESHOLD:
            entry["lfs"] = {"oid": sha256, "size": size, "pointerSize": 134}
        return entry

    # --- transfer ------------------------------------------------------------------------
    def take_failure(self, path: str) -> str | None:
        with self._lock:
            for failure in self._failures:
                if failure[1] > 0 and fnmatch.fnmatch(path, failure[0]):
                    failure[1] -= 1
                    return failure[2]
        return None

    def pace(self, n_bytes: int) -> None:
        """Wait until ``n_bytes`` more fit under the bandwidth limit (one link for all requests)."""
        if not self.bandwidth:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_send)
            self._next_send = start + n_bytes / self.bandwidth
            wait = self._next_send - now
        time.sleep(wait)


_RESOLVE = re.compile(r"^/(?:models/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<route>revision|tree|refs)(?:/(?P<rest>.*))?)?$")


def _handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append((self.command, path))
            if match := _RESOLVE.match(path):
                return self._file(match["repo"], match["revision"], match["path"], head)
            if match := _API.match(path):
                return self._api(match["repo"], match["route"], match["rest"] or "")
            self._json({"error": "not found"}, 404, "RepoNotFound")

        def _api(self, repo: str, route: str | None, rest: str) -> None:
            if not hub.revisions(repo):
                return self._json({"error": f"Repository {repo} not found"}, 404, "RepoNotFound")
            if route == "refs":
                branches = [{"name": r, "ref": f"refs/heads/{r}", "targetCommit": hub.commit(repo, r)}
                            for r in hub.revisions(repo)]  # fmt: skip
                return self._json({"branches": branches, "tags": [], "converts": []})
            revision, _, subpath = (rest or "main").partition("/")
            folder = hub.revision_folder(repo, revision)
            if folder is None:
                return self._json({"error": f"Invalid rev id: {revision}"}, 404, "RevisionNotFound")
            names = hub.files(folder)
            if route == "tree":
                prefix = subpath.rstrip("/") + "/" if subpath else ""
                return self._json([hub.entry(folder, n) for n in names if n.startswith(prefix)])
            siblings = []
            for name in names:
                entry = hub.entry(folder, name)
                sibling = {"rfilename": name, "size": entry["size"], "blobId": entry["oid"]}
                if "lfs" in entry:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["lfs"]["oid"], "pointerSize": 134}
                siblings.append(sibling)
            info = {"_id": repo, "id": repo, "modelId": repo, "sha": hub.commit(repo, folder.name),
                    "private": False, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
                    "tags": [], "siblings": siblings}  # fmt: skip
            self._json(info)

        def _file(self, repo: str, revision: str, name: str, head: bool) -> None:
            folder = hub.revision_folder(repo, revision)
            if folder is None:
                return self._json({"error": f"Invalid rev id: {revision}"}, 404, "RevisionNotFound")
            target = folder / name
            if not target.is_file() or name not in hub.files(folder):
                return self._json({"error": f"{name} does not exist"}, 404, "EntryNotFound", commit=(repo, folder))
            entry = hub.entry(folder, name)
            size = entry["size"]
            start, end = 0, size - 1
            ranged = self.headers.get("Range")
            if ranged and (match := re.match(r"bytes=(\d*)-(\d*)", ranged)):
                start = int(match[1] or 0)
                end = min(int(match[2]) if match[2] else size - 1, size - 1)
            if not head:
                hub.file_gets.append(f"{repo}/{folder.name}/{name}")
            failure = None if head else hub.take_failure(f"{repo}/{folder.name}/{name}")
            if failure == "error":
                return self._json({"error": "injected failure"}, 500)
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("X-Repo-Commit", hub.commit(repo, folder.name))
            self.send_header("ETag", f'"{entry["oid"]}"')
            if "lfs" in entry:
                self.send_header("X-Linked-Etag", f'"{entry["lfs"]["oid"]}"')
                self.send_header("X-Linked-Size", str(size))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            limit = end + 1 if failure in (None, "corrupt") else start + (end + 1 - start) // 2
            with target.open("rb") as handle:
                handle.seek(start)
                position = start
                while position < limit:
                    data = handle.read(min(CHUNK, limit - position))
                    if failure == "corrupt" and position == start:  # every byte sent, the first one wrong
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                    hub.pace(len(data))
                    self.wfile.write(data)
                    position += len(data)
            if failure == "truncate":  # the promised length was not sent: drop the connection
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)

        def _json(self, data, status: int = 200, error_code: str | None = None, commit=None) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", str(data.get("error", "")))
            if commit is not None:
                self.send_header("X-Repo-Commit", hub.commit(commit[0], commit[1].name))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder of ORG/NAME/REVISION/ checkpoint folders")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes per second (default: unlimited)")
    args = parser.parse_args()
    with LocalHub(args.root, bandwidth=args.bandwidth, port=args.port) as hub:
        print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
