"""A Hugging Face Hub stand-in on 127.0.0.1 for tests, with a recorder for uploads.

`LoopbackHub` serves the HTTP routes that huggingface_hub 2.4 and diffusers 0.42 use to check a
token, create a repo, and look up and download a model repo:

    GET       /api/whoami-v2
    POST      /api/repos/create
    GET       /api/models/{namespace}/{name}[/revision/{revision}]
    GET       /api/models/{namespace}/{name}/tree/{revision}[/{path}]
    HEAD, GET /{namespace}/{name}/resolve/{revision}/{path}

Each repo is a folder `root/<namespace>/<name>`. Its commit sha is a hash of its files, so it
changes with every upload, and "main" and that sha are its only revisions. File responses carry
the headers `hf_hub_download` requires (ETag, X-Repo-Commit, Content-Length) and errors carry
X-Error-Code, from which huggingface_hub picks its exception class.

Uploads are not served over HTTP: with hf_xet installed, huggingface_hub 2.4 uploads through
the Xet storage protocol. `LoopbackHub.upload_folder` replaces `upload_folder` instead. It
selects files as the real call does (the same `filter_repo_objects` function and default ignore
patterns), copies them into the repo folder and records the call.
"""

import hashlib
import json
import os
import shutil
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from huggingface_hub import CommitInfo, HfApi, constants, hf_api
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def git_blob_sha(data: bytes) -> str:
    """Return the git object id of a file, which the Hub uses as the ETag of files stored in git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: Optional[str]
    status: int = 0


@dataclass
class RecordedUpload:
    repo_id: str
    files: List[str]
    arguments: dict = field(default_factory=dict)


class HubError(Exception):
    """An error response: HTTP status, X-Error-Code, message, extra headers and extra JSON fields."""

    def __init__(self, status: int, code: Optional[str], message: str, headers=None, fields=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.fields = dict(headers or {}), dict(fields or {})


class LoopbackHub:
    """A threaded HTTP server on 127.0.0.1 and a free port, serving model repos from `root`.

    `token` is the only token accepted and `token_role` is the role whoami reports for it. The user
    belongs to the organizations in `orgs`, which maps each name to the user's role in it. Every
    request is appended to `requests`, every created repo's payload to `created`, every upload
    to `uploads`.
    """

    def __init__(
        self,
        root,
        token: str = "hf_loopback_write_token",
        user: str = "user",
        token_role: str = "write",
        orgs: Optional[Dict[str, str]] = None,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token, self.user, self.token_role = token, user, token_role
        self.orgs = dict(orgs or {})  # organization name: the user's role in it
        self.requests: List[RecordedRequest] = []
        self.created: Dict[str, dict] = {}
        self.private: set = set()
        self.uploads: List[RecordedUpload] = []
        self._server: Optional[ThreadingHTTPServer] = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "LoopbackHub":
        handler = type("BoundHandler", (HubRequestHandler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- repo store ------------------------------------------------------------------------

    def repo_path(self, repo_id: str) -> Path:
        return self.root / repo_id

    def repo_files(self, repo_id: str) -> Dict[str, Path]:
        """Return the repo's files as {path in repo: path on disk}, sorted by path."""
        folder = self.repo_path(repo_id)
        files = (path for path in sorted(folder.rglob("*")) if path.is_file())
        return {path.relative_to(folder).as_posix(): path for path in files}

    def commit_sha(self, repo_id: str) -> str:
        digest = hashlib.sha1()
        for name, path in self.repo_files(repo_id).items():
            digest.update(f"{name}\0{git_blob_sha(path.read_bytes())}\n".encode())
        return digest.hexdigest()

    def has_valid_token(self, authorization: Optional[str]) -> bool:
        return authorization == f"Bearer {self.token}"

    # --- upload recorder -------------------------------------------------------------------

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path,
        path_in_repo: Optional[str] = None,
        allow_patterns=None,
        ignore_patterns=None,
        **arguments,
    ) -> CommitInfo:
        """Stand in for `HfApi.upload_folder`: copy the files it would upload into the repo and record them."""
        if not self.repo_path(repo_id).is_dir():
            raise RuntimeError(f"upload_folder to {repo_id!r}, which does not exist: create_repo was not called first")
        ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
        folder = Path(folder_path)
        local = [path.relative_to(folder).as_posix() for path in sorted(folder.glob("**/*")) if path.is_file()]
        selected = list(
            filter_repo_objects(local, allow_patterns=allow_patterns, ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS)
        )

        prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
        for relative in selected:
            target = self.repo_path(repo_id) / (prefix + relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / relative, target)
        arguments.update(allow_patterns=allow_patterns, ignore_patterns=ignore_patterns, path_in_repo=path_in_repo)
        self.uploads.append(RecordedUpload(repo_id, [prefix + relative for relative in selected], arguments))

        sha = self.commit_sha(repo_id)
        message = arguments.get("commit_message") or "Upload folder using huggingface_hub"
        return CommitInfo(
            commit_url=f"{self.endpoint}/{repo_id}/commit/{sha}", commit_message=message, commit_description="", oid=sha
        )

    # --- routes ----------------------------------------------------------------------------

    def whoami(self, authorization: Optional[str]) -> dict:
        if not self.has_valid_token(authorization):
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return {
            "type": "user",
            "name": self.user,
            "orgs": [{"type": "org", "name": name, "roleInOrg": role} for name, role in self.orgs.items()],
            "auth": {"accessToken": {"displayName": "test", "role": self.token_role}},
        }

    def create_repo(self, authorization: Optional[str], payload: dict) -> dict:
        if not self.has_valid_token(authorization) or self.token_role == "read":
            raise HubError(401, None, "Invalid credentials in Authorization header")
        namespace = payload.get("organization") or self.user
        if namespace != self.user and self.orgs.get(namespace) not in ("admin", "write", "contributor"):
            raise HubError(403, None, f"You don't have the rights to create a model under the namespace {namespace!r}")
        repo_id = f"{namespace}/{payload['name']}"
        if self.repo_path(repo_id).is_dir():
            raise HubError(409, None, "You already created this model repo", fields={"url": f"{self.endpoint}/{repo_id}"})
        self.repo_path(repo_id).mkdir(parents=True)
        self.created[repo_id] = payload
        if payload.get("visibility") == "private":
            self.private.add(repo_id)
        return {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}

    def check_revision(self, repo_id: str, revision: str, authorization: Optional[str]) -> str:
        """Return the commit sha of `revision`, or raise the Hub's error for a missing repo or revision."""
        visible = repo_id not in self.private or self.has_valid_token(authorization)
        if not self.repo_path(repo_id).is_dir() or not visible:
            raise HubError(404, "RepoNotFound", "Repository not found")
        sha = self.commit_sha(repo_id)
        if revision not in ("main", sha):
            raise HubError(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return sha

    def model_info(self, repo_id: str, revision: str, authorization: Optional[str]) -> dict:
        sha = self.check_revision(repo_id, revision, authorization)
        files = self.repo_files(repo_id)
        return {
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": repo_id in self.private,
            "siblings": [{"rfilename": name} for name in files],
        }

    def tree(self, repo_id: str, revision: str, prefix: str, recursive: bool, authorization: Optional[str]) -> list:
        self.check_revision(repo_id, revision, authorization)
        base = f"{prefix.strip('/')}/" if prefix else ""
        entries, folders = [], set()
        for name, path in self.repo_files(repo_id).items():
            if not name.startswith(base):
                continue
            parts = name[len(base) :].split("/")
            if recursive:
                folders.update(base + "/".join(parts[:level]) for level in range(1, len(parts)))
            elif len(parts) > 1:
                folders.add(base + parts[0])
                continue
            data = path.read_bytes()
            entries.append({"type": "file", "path": name, "size": len(data), "oid": git_blob_sha(data)})
        entries += [{"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()} for folder in folders]
        return sorted(entries, key=lambda entry: entry["path"])

    def resolve(self, repo_id: str, revision: str, filename: str, authorization: Optional[str]):
        """Return (body, headers) of a file, or raise EntryNotFound with the commit header set."""
        sha = self.check_revision(repo_id, revision, authorization)
        path = self.repo_files(repo_id).get(filename)
        if path is None:
            raise HubError(404, "EntryNotFound", f"{filename} does not exist on main", {"X-Repo-Commit": sha})
        data = path.read_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha(data)}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
        }
        return data, headers

    # --- in-process use --------------------------------------------------------------------

    def use_in_process(self, monkeypatch, cache_dir) -> None:
        """Point huggingface_hub in this process at the server, offline mode off, and record uploads.

        huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import, so the values that later
        calls read are patched instead. These are the endpoint, the file URL template, the offline
        flag, the cache folder, and the endpoint of the default `HfApi`, whose bound methods
        (`create_repo`, `model_info`, ...) diffusers imported. `block_other_hosts` makes a call
        that escapes these patches fail instead of leaving the machine.
        """
        block_other_hosts(monkeypatch)
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_api.api, "endpoint", self.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        # Without it, huggingface_hub 2.4 also fetches {endpoint}/api/agent-harnesses once per process.
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        monkeypatch.setenv("HF_TOKEN", self.token)

        import diffusers.utils.hub_utils

        def upload_method(api, **kwargs):
            return self.upload_folder(**kwargs)

        monkeypatch.setattr(HfApi, "upload_folder", upload_method)
        monkeypatch.setattr(diffusers.utils.hub_utils, "upload_folder", self.upload_folder)

    def subprocess_env(self, hf_home) -> dict:
        """Return the environment for a fresh process that downloads from this server into `hf_home`."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE_"))}
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(hf_home),
            HF_HUB_OFFLINE="0",
            HF_HUB_DISABLE_TELEMETRY="1",
            OMP_NUM_THREADS="1",
        )
        return env


def block_other_hosts(monkeypatch) -> None:
    """Make name resolution fail for every host but the loopback ones, so no request leaves the machine."""
    resolve = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in LOOPBACK_HOSTS:
            raise OSError(f"tests may only connect to 127.0.0.1; a connection to {host!r} was blocked")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes requests to the `hub` attribute, a LoopbackHub set on a subclass per server."""

    protocol_version = "HTTP/1.1"
    hub: LoopbackHub

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        pass

    def do_GET(self):
        self._handle(send_body=True)

    def do_HEAD(self):
        self._handle(send_body=False)

    def do_POST(self):
        self._handle(send_body=True)

    def _handle(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        record = RecordedRequest(self.command, url.path, self.headers.get("Authorization"))
        self.hub.requests.append(record)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, payload, headers = 200, *self._route(url, body)
        except HubError as error:
            status, headers = error.status, error.headers
            payload = json.dumps({"error": error.message, **error.fields}).encode()
            headers["Content-Type"] = "application/json"
            headers["X-Error-Message"] = error.message
            if error.code:
                headers["X-Error-Code"] = error.code
        record.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if send_body:
            self.wfile.write(payload)

    def _route(self, url, body: bytes):
        """Return (body bytes, headers) for the request, or raise HubError."""
        segments = [unquote(segment) for segment in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        authorization = self.headers.get("Authorization")
        hub = self.hub

        if segments == ["api", "whoami-v2"] and self.command == "GET":
            return _json(hub.whoami(authorization))
        if segments == ["api", "repos", "create"] and self.command == "POST":
            return _json(hub.create_repo(authorization, json.loads(body or b"{}")))
        if len(segments) >= 4 and segments[:2] == ["api", "models"] and self.command == "GET":
            repo_id = "/".join(segments[2:4])
            rest = segments[4:]
            if not rest:
                return _json(hub.model_info(repo_id, "main", authorization))
            if rest[0] == "revision" and len(rest) == 2:
                return _json(hub.model_info(repo_id, rest[1], authorization))
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                return _json(hub.tree(repo_id, rest[1], "/".join(rest[2:]), recursive, authorization))
        if len(segments) >= 5 and segments[2] == "resolve" and self.command in ("GET", "HEAD"):
            return hub.resolve("/".join(segments[:2]), segments[3], "/".join(segments[4:]), authorization)
        raise HubError(404, None, f"the loopback Hub has no route for {self.command} {url.path}")


def _json(value) -> tuple:
    return json.dumps(value).encode(), {"Content-Type": "application/json"}


def write_cache_snapshot(cache_dir, repo_id: str, files: Dict[str, Path], commit_sha: str) -> Path:
    """Lay `files` ({path in repo: file}) out as huggingface_hub caches a downloaded model repo.

    Writes `models--<namespace>--<name>/blobs/<etag>`, relative symlinks to them under
    `snapshots/<commit_sha>/`, and `refs/main` containing the sha. Returns the snapshot folder.
    """
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit_sha
    for name, source in files.items():
        data = source.read_bytes()
        blob = storage / "blobs" / git_blob_sha(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit_sha)  # no newline: huggingface_hub reads the file as the sha
    return snapshot
