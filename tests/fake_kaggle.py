"""A small fake of Kaggle's API, speaking the wire protocol of the official client (kaggle 2.2.x).

Tests point the *real* client at it and then assert on what it received. It runs in a thread on
127.0.0.1 (a free port) and answers both direct requests (`http://127.0.0.1:PORT/api/v1/...`, after
patching kagglesdk's endpoint table) and proxy-style absolute-URI requests (a subprocess with
HTTP_PROXY pointed at it).

Protocol (see ../shared/KAGGLE.md): POST /api/v1/<service>/<Method> with a camelCase JSON body and
HTTP Basic auth; a non-2xx status or a body with `code` >= 400 is an error for the client. Files go
up with StartBlobUpload (-> token, createUrl) and a plain PUT of the bytes to createUrl. Fields
equal to their default are left out of request bodies by the client (`isPrivate` false,
`enableInternet` false...), so every read here has a default.

Failure injection: `fail(method, status, times)` answers the next `times` calls of `method`
("CreateDataset", "PUT", "*" for any) with `status`; with `after=True` the call is carried out
first and only its answer is lost (a gateway timeout after the server acted); `reserve(ref)` makes
CreateDataset answer the client's "slug already in use" error body; `credentials` set makes wrong
keys a 401; `stop()` leaves a dead port behind (network down).

Kaggle Models (models.ModelApiService, as kaggle 2.2.x's model_get / model_create_new / model_instance_get /
model_instance_create / model_instance_version_create call it): GetModel, CreateModel, GetModelInstance,
CreateModelInstance (version 1 with its files) and CreateModelInstanceVersion; each create is recorded in
`model_uploads`. A create of something that exists answers 409, as a taken slug does.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Blob:
    name: str
    content_length: int
    data: bytes | None = None  # None until the PUT arrives


@dataclass
class Upload:
    """One CreateDataset / CreateDatasetVersion as the server resolved it."""

    kind: str  # "create" | "version"
    owner: str
    slug: str
    files: dict[str, bytes]
    body: dict
    title: str | None = None
    license: str | None = None
    is_private: bool = False
    notes: str | None = None


@dataclass
class ModelUpload:
    """One CreateModel / CreateModelInstance / CreateModelInstanceVersion as the server resolved it."""

    kind: str  # "model" | "instance" | "version"
    owner: str
    model: str
    body: dict
    framework: str | None = None  # the wire enum name, e.g. MODEL_FRAMEWORK_PY_TORCH
    variation: str | None = None
    version: int | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    is_private: bool | None = None
    license: str | None = None
    base: str | None = None  # baseModelInstance
    notes: str | None = None


@dataclass
class FakeKaggle:
    credentials: tuple[str, str] | None = None  # when set, other Basic-auth credentials get 401
    datasets: dict[str, list[Upload]] = field(default_factory=dict)  # "owner/slug" -> versions
    blobs: dict[str, Blob] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)  # creates and versions, in order
    kernels: list[dict] = field(default_factory=list)  # SaveKernel bodies
    models: dict[str, dict] = field(default_factory=dict)  # "owner/model" -> CreateModel body
    instances: dict[str, int] = field(default_factory=dict)  # "owner/model/FRAMEWORK_ENUM/variation" -> last version
    model_uploads: list[ModelUpload] = field(default_factory=list)  # creates, in order
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, "PUT" or "PUT-probe"; auth user)
    reserved: set[str] = field(default_factory=set)
    _failures: dict[str, list[tuple[int, str, bool]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # ----------------------------------------------------------------- control

    def start(self) -> FakeKaggle:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # the port is closed now: connections are refused

    def __enter__(self) -> FakeKaggle:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, method: str, status: int, times: int = 1, message: str = "injected failure", *,
             after: bool = False) -> None:
        """Answer the next `times` calls of `method` ("CreateDataset", "PUT", "*") with `status`;
        `after`: carry each call out first, then answer `status` (the client never learns it worked)."""
        with self._lock:
            self._failures.setdefault(method, []).extend([(status, message, after)] * times)

    def reserve(self, ref: str) -> None:
        """A slug that is invisible to GetDatasetStatus but refused by CreateDataset (as Kaggle does)."""
        self.reserved.add(ref)

    def add_dataset(self, ref: str) -> None:
        """Pretend `ref` already exists (so publishing adds a version)."""
        owner, slug = ref.split("/")
        self.datasets.setdefault(ref, []).append(Upload("create", owner, slug, {}, {}))

    def add_model(self, ref: str, instance: tuple[str, int] | None = None) -> None:
        """Pretend model `ref` exists, with PyTorch variation `instance[0]` at version `instance[1]`."""
        self.models[ref] = {"title": ref, "isPrivate": True}
        if instance is not None:
            self.instances[f"{ref}/MODEL_FRAMEWORK_PY_TORCH/{instance[0]}"] = instance[1]

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]

    # ----------------------------------------------------------------- API

    def _take_failure(self, method: str) -> tuple[int, str, bool] | None:
        with self._lock:
            for key in (method, "*"):
                queue = self._failures.get(key)
                if queue:
                    return queue.pop(0)
        return None

    def handle_rpc(self, method: str, body: dict, base_url: str) -> tuple[int, dict]:
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            return 404, {"code": 404, "message": f"fake Kaggle does not implement {method}"}
        return handler(body, base_url)

    def _rpc_GetDatasetStatus(self, body: dict, base_url: str) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        if ref not in self.datasets:
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        return 200, {"status": "READY"}

    def _rpc_StartBlobUpload(self, body: dict, base_url: str) -> tuple[int, dict]:
        token = uuid.uuid4().hex
        with self._lock:
            self.blobs[token] = Blob(body.get("name", ""), int(body.get("contentLength", 0)))
        return 200, {"token": token, "createUrl": f"{base_url}/upload/{token}"}

    def _files(self, files: list[dict]) -> dict[str, bytes] | str:
        out = {}
        for f in files:
            blob = self.blobs.get(f.get("token", ""))
            if blob is None or blob.data is None:
                return f"unknown or incomplete upload token {f.get('token')!r}"
            out[blob.name] = blob.data
        return out

    def _rpc_CreateDataset(self, body: dict, base_url: str) -> tuple[int, dict]:
        owner, slug = body.get("ownerSlug", ""), body.get("slug", "")
        ref = f"{owner}/{slug}"
        if ref in self.datasets or ref in self.reserved:
            msg = f'The requested slug "{slug}" is already in use by a dataset. Please choose another slug.'
            return 200, {"status": "error", "error": msg}
        files = self._files(body.get("files", []))
        if isinstance(files, str):
            return 400, {"code": 400, "message": files}
        up = Upload("create", owner, slug, files, body, title=body.get("title"),
                    license=body.get("licenseName"), is_private=bool(body.get("isPrivate", False)))
        with self._lock:
            self.uploads.append(up)
            self.datasets[ref] = [up]
        return 200, {"ref": ref, "url": f"{base_url}/datasets/{ref}", "status": "ok", "error": ""}

    def _rpc_CreateDatasetVersion(self, body: dict, base_url: str) -> tuple[int, dict]:
        owner, slug = body.get("ownerSlug", ""), body.get("datasetSlug", "")
        ref = f"{owner}/{slug}"
        if ref not in self.datasets:
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        inner = body.get("body", {})
        files = self._files(inner.get("files", []))
        if isinstance(files, str):
            return 400, {"code": 400, "message": files}
        up = Upload("version", owner, slug, files, body, notes=inner.get("versionNotes"))
        with self._lock:
            self.uploads.append(up)
            self.datasets[ref].append(up)
        return 200, {"ref": ref, "url": f"{base_url}/datasets/{ref}", "status": "ok", "error": ""}

    def _rpc_SaveKernel(self, body: dict, base_url: str) -> tuple[int, dict]:
        with self._lock:
            self.kernels.append(body)
            version = sum(1 for k in self.kernels if k.get("slug") == body.get("slug"))
        slug = body.get("slug", "")
        return 200, {"ref": f"/code/{slug}", "url": f"{base_url}/code/{slug}", "versionNumber": version, "error": ""}

    # ----------------------------------------------------------------- Kaggle Models

    @staticmethod
    def _not_found(what: str) -> tuple[int, dict]:
        return 404, {"code": 404, "message": f"{what} not found"}

    def _rpc_GetModel(self, body: dict, base_url: str) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug', '')}/{body.get('modelSlug', '')}"
        if ref not in self.models:
            return self._not_found(f"Model {ref}")
        return 200, {"id": 1, "ref": ref, "slug": ref.split("/")[1], "title": self.models[ref].get("title", ""),
                     "isPrivate": bool(self.models[ref].get("isPrivate", False))}

    def _rpc_CreateModel(self, body: dict, base_url: str) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug', '')}/{body.get('slug', '')}"
        if ref in self.models:
            return 409, {"code": 409, "message": f"Model {ref} already exists"}
        with self._lock:
            self.models[ref] = body
            self.model_uploads.append(ModelUpload("model", *ref.split("/"), body,
                                                  is_private=bool(body.get("isPrivate", False))))
        return 200, {"id": len(self.models), "ref": ref, "url": f"{base_url}/models/{ref}", "error": ""}

    def _rpc_GetModelInstance(self, body: dict, base_url: str) -> tuple[int, dict]:
        key = "/".join(str(body.get(k, "")) for k in ("ownerSlug", "modelSlug", "framework", "instanceSlug"))
        if key not in self.instances:
            return self._not_found(f"Model instance {key}")
        return 200, {"id": 1, "slug": body.get("instanceSlug", ""), "framework": body.get("framework"),
                     "versionNumber": self.instances[key], "url": f"{base_url}/models/{key}"}

    def _rpc_CreateModelInstance(self, body: dict, base_url: str) -> tuple[int, dict]:
        ref = f"{body.get('ownerSlug', '')}/{body.get('modelSlug', '')}"
        inner = body.get("body", {})
        key = f"{ref}/{inner.get('framework', '')}/{inner.get('instanceSlug', '')}"
        if ref not in self.models:
            return self._not_found(f"Model {ref}")
        if key in self.instances:
            return 409, {"code": 409, "message": f"Model instance {key} already exists"}
        files = self._files(inner.get("files", []))
        if isinstance(files, str):
            return 400, {"code": 400, "message": files}
        up = ModelUpload("instance", *ref.split("/"), body, framework=inner.get("framework"),
                         variation=inner.get("instanceSlug"), version=1, files=files,
                         license=inner.get("licenseName"), base=inner.get("baseModelInstance"))
        with self._lock:
            self.instances[key] = 1
            self.model_uploads.append(up)
        return 200, {"id": 1, "ref": key, "url": f"{base_url}/models/{key}/1", "error": ""}

    def _rpc_CreateModelInstanceVersion(self, body: dict, base_url: str) -> tuple[int, dict]:
        key = "/".join(str(body.get(k, "")) for k in ("ownerSlug", "modelSlug", "framework", "instanceSlug"))
        if key not in self.instances:
            return self._not_found(f"Model instance {key}")
        inner = body.get("body", {})
        files = self._files(inner.get("files", []))
        if isinstance(files, str):
            return 400, {"code": 400, "message": files}
        with self._lock:
            self.instances[key] += 1
            up = ModelUpload("version", *key.split("/")[:2], body, framework=body.get("framework"),
                             variation=body.get("instanceSlug"), version=self.instances[key], files=files,
                             notes=inner.get("versionNotes"))
            self.model_uploads.append(up)
        return 200, {"id": up.version, "ref": key, "url": f"{base_url}/models/{key}/{up.version}", "error": ""}

    def handle_put(self, token: str, headers, data: bytes) -> int:
        blob = self.blobs.get(token)
        if blob is None:
            return 404
        content_range = headers.get("Content-Range", "")
        if content_range.startswith("bytes */"):  # the client's "how far did I get?" probe
            return 200 if blob.data is not None else 404
        blob.data = data
        return 200


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeKaggle
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, payload: dict | None = None) -> None:
        data = json.dumps(payload or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        return base64.b64decode(auth[6:]).decode(errors="replace")

    def do_POST(self):  # noqa: N802 - http.server's naming
        fake = self.server_fake
        path = urlsplit(self.path).path  # absolute URI when we are used as a proxy
        data = self._read_body()
        method = path.rstrip("/").rsplit("/", 1)[-1]
        user = self._user()
        fake.calls.append((method, (user or "").split(":")[0]))
        failure = fake._take_failure(method)
        if failure and not failure[2]:
            return self._reply(failure[0], {"code": failure[0], "message": failure[1]})
        if fake.credentials is not None and user != ":".join(fake.credentials):
            return self._reply(401, {"code": 401, "message": "Unauthenticated"})
        if not path.startswith("/api/v1/"):
            return self._reply(404, {"code": 404, "message": f"no route {path}"})
        try:
            body = json.loads(data or b"{}")
        except json.JSONDecodeError:
            return self._reply(400, {"code": 400, "message": "body is not JSON"})
        status, payload = fake.handle_rpc(method, body, fake.url)
        if failure:  # after=True: done, but the answer is lost
            return self._reply(failure[0], {"code": failure[0], "message": failure[1]})
        self._reply(status, payload)

    def do_PUT(self):  # noqa: N802
        fake = self.server_fake
        path = urlsplit(self.path).path
        data = self._read_body()
        # a resumed upload first asks how far it got (empty PUT, "Content-Range: bytes */N")
        probe = self.headers.get("Content-Range", "").startswith("bytes */")
        fake.calls.append(("PUT-probe" if probe else "PUT", ""))
        failure = fake._take_failure("PUT")
        if failure and not failure[2]:
            return self._reply(failure[0], {"code": failure[0], "message": failure[1]})
        if not path.startswith("/upload/"):
            return self._reply(404)
        status = fake.handle_put(path.rsplit("/", 1)[-1], self.headers, data)
        if failure:
            return self._reply(failure[0], {"code": failure[0], "message": failure[1]})
        self._reply(status)

    def do_GET(self):  # noqa: N802
        self._reply(404, {"code": 404, "message": "fake Kaggle serves no GET"})


# --------------------------------------------------------------------------- test plumbing


def point_client_at(fake: FakeKaggle, monkeypatch, home, *, username: str | None = "alice", key: str = "secret"):
    """Make the real `kaggle` client in this process talk to `fake` with the given credentials.

    Everything the client reads is redirected into `home` (a temp dir): HOME, the config dir, and
    TMPDIR, where it keeps resumable-upload state between calls.
    """
    import tempfile
    from pathlib import Path

    home = Path(home)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")  # must precede the first import
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("TMPDIR", str(home / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(home / "tmp"))  # gettempdir() caches its answer
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "HTTP_PROXY", "http_proxy",
                "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    if username is not None:
        monkeypatch.setenv("KAGGLE_USERNAME", username)
        monkeypatch.setenv("KAGGLE_KEY", key)

    import kagglesdk.kaggle_env as kaggle_env

    from kaggle_tli.kaggle.client import import_client

    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, fake.url)
    api_class = import_client()
    # class attributes computed when `kaggle` was first imported, maybe by an earlier test
    monkeypatch.setattr(api_class, "args", ["--local"])
    monkeypatch.setattr(api_class, "config_dir", str(home / ".kaggle"))
    monkeypatch.setattr(api_class, "config", str(home / ".kaggle" / "kaggle.json"))


def make_run(runs, run_id: str = "20261127-113501-resnet18-3f2a", *, parent_id: str | None = None,
             arch: str = "resnet18", extra_files: dict[str, bytes] | None = None):
    """A finished run directory in the documented format, plus its ledger row; returns its path.

    Hand-made (no training) so these tests stay fast: weights are a couple of small tensors.
    """
    import json
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    from kaggle_tli.ledger import Ledger

    run_dir = Path(runs) / run_id
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(sum(run_id.encode()))
    tensors = {"fc.weight": rng.standard_normal((3, 8)).astype(np.float32), "fc.bias": np.zeros(3, np.float32)}
    meta = {"arch": arch, "run_id": run_id, "num_classes": "3"}
    save_file(tensors, str(run_dir / "model.safetensors"), metadata=meta)
    save_file(tensors, str(run_dir / "model_ema.safetensors"), metadata=meta)
    info = {
        "schema": 1, "id": run_id, "parent_id": parent_id, "stage": "resume" if parent_id else "finetune",
        "init": "tli" if parent_id else "pretrained", "arch": {"name": arch, "num_classes": 3},
        "num_classes": 3, "class_names": ["a", "b", "c"], "config": {"epochs": 1}, "metrics": {"cv": 0.5},
        "status": "done", "created_at": "2026-11-27T11:35:01", "finished_at": "2026-11-27T11:36:01", "extra": {},
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2))
    (run_dir / "log.csv").write_text("step,loss\n1,0.9\n")
    (run_dir / "state.pt").write_bytes(b"optimizer state stand-in")
    for name, data in (extra_files or {}).items():
        (run_dir / name).write_bytes(data)
    Ledger(Path(runs)).append({
        "run_id": run_id, "parent_run_id": parent_id or "", "stage": info["stage"], "arch": arch,
        "init": info["init"], "cv": 0.5, "status": "done", "checkpoint": str(run_dir / "model.safetensors"),
    })
    return run_dir
