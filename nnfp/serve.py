"""`nnfp serve`: an index behind HTTP, on FastAPI and uvicorn.

Routes call the functions the CLI calls and answer the JSON objects it prints:
`POST /identify` (what `nnfp identify --json` prints), `POST /monitor` and the WebSocket
`/stream` (the plays `nnfp monitor --json` prints), `GET|POST /tracks` and
`DELETE /tracks/{id}` (`nnfp.catalogue.build.add_track` / `remove_tracks`), `GET /health`,
`GET /metrics` (Prometheus) and the page of `nnfp/web/` at `/`. Bad input is a 4xx with a
`{"error": "..."}` body; the server stays up.

The index and its model are loaded once (`Catalogue`). After every change the index is
loaded again and the new `Identifier` replaces the old one in one assignment: requests
already running finish on the one they started with. A LiteRT interpreter must not be
called from two threads at once, so fingerprints are made by a small pool of interpreters
(`EmbedderPool`), each lent to one call at a time.

>>> app = create_app(Catalogue("my_index"), token="s3cret")
>>> serve(app, host="127.0.0.1", port=8000, on_ready=print)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

__all__ = [
    "LOCK_TIMEOUT_SECONDS",
    "POOL_SIZE",
    "Catalogue",
    "EmbedderPool",
    "create_app",
    "serve",
]

try:
    import fastapi
    import prometheus_client
    import uvicorn
    import websockets  # noqa: F401  (uvicorn's WebSocket protocol, for /stream)

    try:  # FastAPI's form parsing: python-multipart, a module of this name since 0.0.13
        import python_multipart  # noqa: F401
    except ImportError:
        import multipart  # noqa: F401
except ImportError as error:  # serve.py is imported by `nnfp serve` only
    raise ImportError(
        f"`nnfp serve` needs FastAPI, uvicorn and their helpers ({error.name} is missing): "
        'pip install "nnfp[serve]"'
    ) from error

from fastapi import Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

# Interpreters in the pool (each with XNNPACK threads on every core): 4 answered the most
# queries per second on 2 cores; interpreters of 1 thread each did worse (docs/defaults.md).
POOL_SIZE = 4
LOCK_TIMEOUT_SECONDS = 30.0  # a change waits this long for another writer of the index (CLI), then 503
STREAM_MAX_PENDING = 64  # WebSocket messages waiting for the monitor before the socket is read again
WEB_DIR = Path(__file__).resolve().parent / "web"
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")
_COPY_BYTES = 1 << 20


class EmbedderPool:
    """A fingerprinter that many threads may call: each `fingerprint` call borrows one of
    `embedders` (LiteRT interpreters are not safe for concurrent calls) and returns it.

    Has the interface of the fingerprinters (`fingerprint`, `segment_samples`,
    `embedding_dim`, `sample_rate`, `runtime`), so an `Identifier` and `monitor_stream` use it
    as they use one model.
    """

    def __init__(self, embedders):
        embedders = list(embedders)
        if not embedders:
            raise ValueError("`embedders` must hold at least one fingerprinter. Received: embedders=[]")
        first = embedders[0]
        self.segment_samples = first.segment_samples
        self.embedding_dim = first.embedding_dim
        self.sample_rate = getattr(first, "sample_rate", None)
        self.runtime = getattr(first, "runtime", None)
        self.size = len(embedders)
        self._free = queue.Queue()
        for embedder in embedders:
            self._free.put(embedder)

    def fingerprint(self, waveforms, batch_size=256):
        embedder = self._free.get()
        try:
            return embedder.fingerprint(waveforms, batch_size=batch_size)
        finally:
            self._free.put(embedder)


def _embedder_pool(identifier, size):
    """The model of `identifier` (checked against the index by `Identifier`) in `size` LiteRT
    copies; a TensorFlow model once (its calls already use every core)."""
    from nnfp.lite import LiteFingerprinter

    first = identifier.embedder
    if not isinstance(first, LiteFingerprinter):
        return EmbedderPool([first])
    more = [LiteFingerprinter(first.path, num_threads=first.num_threads) for _ in range(size - 1)]
    return EmbedderPool([first, *more])


class _Truncations:
    """The truncation warnings of the audio decoded by requests, kept by file (`nnfp.audio.io`
    warns once per file it finds cut short). Python's warning filters are one for the whole
    process, so a request cannot catch its own warnings in a thread of a pool; instead every
    `TruncatedAudioWarning` is recorded under its file, always (never shown once per place),
    and a request takes those of its own upload (a temporary file of its own)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_path = {}
        self._installed = False

    def install(self):
        import warnings

        from nnfp.audio.io import TruncatedAudioWarning

        if self._installed:
            return
        self._installed = True
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if isinstance(message, TruncatedAudioWarning):
                with self._lock:
                    self._by_path[str(message.path)] = str(message)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", TruncatedAudioWarning)

    def take(self, path):
        """The warning about `path`, removed from the record, or None."""
        with self._lock:
            return self._by_path.pop(str(Path(path)), None)


TRUNCATIONS = _Truncations()


class Catalogue:
    """The index a server answers from.

    `identifier` is the `nnfp.catalogue.identify.Identifier` in use; `add` and `remove`
    change the index (one at a time, under the index's lock as the CLI's writers) and
    replace it with one loaded again. A change made by another process (`nnfp index add`,
    `nnfp index remove`, `nnfp index calibrate` on the same folder) is seen by the next
    request: `identifier` compares the folder's version (inode of the folder, and inode,
    size and time of `tracks.json` and `calibration.json`) with the one in use and loads it
    again when it changed. Callers take `identifier` once per request.

    Args:
        index_dir: a folder written by `nnfp index build`.
        runtime: `"auto"`, `"litert"` or `"tensorflow"` (see `Identifier`).
        pool_size: LiteRT interpreters fingerprinting at once (`EmbedderPool`).
    """

    def __init__(self, index_dir, runtime="auto", pool_size=POOL_SIZE):
        from nnfp.catalogue.identify import Identifier

        self.index_dir = Path(index_dir)
        self.runtime = runtime
        self.pool_size = int(pool_size)
        self._version = self._on_disk()
        first = Identifier(self.index_dir, runtime=runtime)
        self.pool = _embedder_pool(first, self.pool_size)
        self._identifier = Identifier(self.index_dir, db=first.db, embedder=self.pool)
        self._write_lock = threading.Lock()
        self._reload_lock = threading.Lock()

    def _on_disk(self):
        """What identifies the version of the index folder now (see the class docstring)."""
        version = []
        for path in (self.index_dir, self.index_dir / "tracks.json", self.index_dir / "calibration.json"):
            try:
                info = os.stat(path)
                version.append((info.st_ino, info.st_size, info.st_mtime_ns))
            except OSError:
                version.append(None)
        return tuple(version)

    @property
    def identifier(self):
        """The `Identifier` in use, loaded again first when another process changed the index."""
        if self._on_disk() != self._version and self._reload_lock.acquire(blocking=False):
            try:  # one request reloads; the others answer from the version in use meanwhile
                if self._on_disk() != self._version:
                    self.reload()
            except Exception as error:  # a half-written change of another tool: try again next time
                print(f"nnfp serve: note: the index changed and could not be loaded again ({error}); "
                      "answering from the version in use", file=sys.stderr, flush=True)
            finally:
                self._reload_lock.release()
        return self._identifier

    def reload(self):
        """Loads the index again and puts it in use; the model is checked against its probes."""
        from nnfp.catalogue.fingerprint import ModelMismatchError, check_model
        from nnfp.catalogue.identify import Identifier
        from nnfp.store.db import FingerprintDB

        version = self._on_disk()  # before loading: a change made meanwhile is loaded next time
        db = FingerprintDB.load(self.index_dir, threads=1)
        try:
            check_model(self.pool, db.metadata, self._identifier.sample_rate, "the served model")
        except ModelMismatchError:  # the index was rebuilt with another model meanwhile
            first = Identifier(self.index_dir, db=db, runtime=self.runtime)
            self.pool = _embedder_pool(first, self.pool_size)
        self._identifier = Identifier(self.index_dir, db=db, embedder=self.pool)
        self._version = version

    # -- reads ---------------------------------------------------------------

    def tracks(self):
        return [
            {"id": t["track_id"], "track": t["path"], "duration_s": round(float(t["duration_s"]), 3)}
            for t in self.identifier.db.live_tracks
        ]

    def size(self):
        """(tracks, segments) of the index in use, removed tracks left out."""
        db = self.identifier.db
        return db.n_live_tracks, db.n_live_segments

    def identify(self, path, name, n_results=5):
        """`nnfp identify --json`'s object for the audio file `path`, reported as `name`.

        Raises:
            nnfp.audio.io.AudioError: unreadable audio (its message names `path`).
            nnfp.catalogue.identify.QueryError: too short, silent or constant audio.
        """
        from nnfp.audio.io import load_audio
        from nnfp.catalogue.identify import identify_result

        identifier = self.identifier
        try:
            audio = load_audio(path, identifier.sample_rate)
        finally:
            warning = TRUNCATIONS.take(path)
        matches = identifier.identify_audio(audio, n_results=n_results, name=name)
        # `identifier.last_query_seconds` belongs to whichever request ran last.
        hint = identifier.long_query_hint(len(audio) / identifier.sample_rate)
        result = identify_result(name, matches, hint)
        if warning is not None:  # a cut file: answered from the audio that decodes, and said so
            result["warning"] = warning.replace(str(path), name)
        return result

    def monitor(self, path, name):
        """The plays in the audio file `path`, reported as recording `name` (`Detection.as_dict()`s,
        `nnfp monitor --json`), and a note on odd input (`input_note`) or None.

        Raises:
            nnfp.audio.io.AudioError: unreadable audio, or none in the file (names `path`).
        """
        from nnfp.audio.io import AudioError
        from nnfp.catalogue.monitor import input_note, monitor_stream, read_blocks
        from nnfp.defaults import FILE_BATCH_SIZE

        identifier = self.identifier
        stats = {}
        blocks = read_blocks(path, identifier.sample_rate)
        try:
            plays = [
                play.as_dict()
                for play in monitor_stream(identifier, blocks, name, batch_size=FILE_BATCH_SIZE, stats=stats)
            ]
        finally:
            warning = TRUNCATIONS.take(path)
        note = input_note(stats)
        if warning is not None:
            note = "; ".join(filter(None, [warning.replace(str(path), name), note]))
        if not stats.get("n_samples"):
            raise AudioError(path, note)
        return plays, note

    # -- changes -------------------------------------------------------------

    def add(self, path, name):
        """Fingerprints the audio file `path` into the index as track `name`; the new track dict."""
        from nnfp.catalogue.build import add_track

        with self._write_lock:
            track = add_track(
                self.index_dir, path, name=name, lock_timeout=LOCK_TIMEOUT_SECONDS, runtime=self.runtime,
                progress=False,
            )
            self.reload()
        return track

    def remove(self, track_id):
        """Removes track `track_id`; its track dict. `KeyError` for a track not in the index."""
        from nnfp.catalogue.build import remove_tracks

        with self._write_lock:
            if not self._identifier.db.is_live(track_id):
                raise KeyError(track_id)
            try:
                (removed,) = remove_tracks(self.index_dir, [track_id])
            except ValueError as error:  # removed by another writer meanwhile
                raise KeyError(track_id) from error
            finally:
                self.reload()
        return removed


# ------------------------------------------------------------------ uploads


def _upload_name(filename):
    """The file name of an upload without folders: reported, never used as a path."""
    name = PurePosixPath(str(filename or "").replace("\\", "/")).name.strip()
    return name or "upload"


def _safe_suffix(filename):
    """The extension of an upload (decoders guess formats from it) when it is plain, else ''."""
    suffix = PurePosixPath(str(filename or "").replace("\\", "/")).suffix
    return suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""


def _copy_to_temp(upload):
    fd, path = tempfile.mkstemp(prefix="nnfp-upload-", suffix=_safe_suffix(upload.filename))
    try:
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, _COPY_BYTES)
    except BaseException:
        os.unlink(path)
        raise
    return path


@contextlib.asynccontextmanager
async def _uploaded(request):
    """The multipart field `file` of `request` in a temporary file: `(path, name, form)`.

    The body's size is held to the limit by `_BodyLimit` while it is parsed; Starlette keeps
    a file part past 1 MB on disk, so memory stays bounded whatever the upload.
    """
    try:
        form = await request.form(max_files=1, max_fields=8)
    except ClientDisconnect:  # gone, or cut off by `_BodyLimit`: nobody reads this answer
        raise HTTPException(400, "the client went away during the upload") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, "send the audio as the file field `file` of a multipart/form-data body")
        path = await run_in_threadpool(_copy_to_temp, upload)
        try:
            yield path, _upload_name(upload.filename), form
        finally:
            os.unlink(path)
    finally:
        await form.close()


def _upload_body(extra_fields=None):
    """OpenAPI description of a multipart body with a file `file` (routes parse it themselves)."""
    properties = {"file": {"type": "string", "format": "binary", "description": "audio, any format nnfp reads"}}
    properties.update(extra_fields or {})
    schema = {"type": "object", "properties": properties, "required": ["file"]}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


# ------------------------------------------------------------------ middleware


class _BodyLimit:
    """Answers 413 to a request body over `max_bytes`: at once when its Content-Length says
    so, and as soon as the bytes received pass it otherwise (chunked uploads, a lying
    header); the app then sees the client gone and its answer is replaced."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            declared = int(length)
            return await self._refuse(receive, send, drain=declared if declared <= 2 * self.max_bytes else 0)
        received = 0
        over = False

        async def counted_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not over:
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await self._refuse(receive, send, drain=self.max_bytes)

    async def _refuse(self, receive, send, drain):
        # Up to `drain` more bytes of the body are read and dropped first: a client that sends
        # its whole body before it reads the answer (most do) then gets the 413 rather than a
        # broken connection. A larger rest is cut off: the connection closes after the answer.
        dropped = 0
        while dropped < drain:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
            dropped += len(message.get("body", b""))
        mb = self.max_bytes / 2**20
        response = JSONResponse(
            {"error": f"the upload is larger than the server's limit of {mb:g} MB (--max-upload-mb)"},
            status_code=413, headers={"Connection": "close"},
        )
        await response({"type": "http"}, receive, send)


_KNOWN_PATHS = ("/identify", "/monitor", "/tracks", "/health", "/metrics", "/", "/stream")
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Metrics:
    """Prometheus counters of every request (and WebSocket session), by endpoint (the route's
    path template, so `/tracks/{id}` is one endpoint) and status, their latencies, and the
    size of the index."""

    def __init__(self, catalogue):
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "nnfp_requests", "Requests answered, by endpoint, method and status.",
            ("endpoint", "method", "status"), registry=self.registry,
        )
        self.errors = prometheus_client.Counter(
            "nnfp_request_errors", "Requests answered with a 4xx or 5xx status, by endpoint and status.",
            ("endpoint", "status"), registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "nnfp_request_duration_seconds", "Time from a request's arrival to the end of its answer.",
            ("endpoint",), buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        tracks = prometheus_client.Gauge("nnfp_catalogue_tracks", "Tracks in the index.", registry=self.registry)
        tracks.set_function(lambda: catalogue.size()[0])
        segments = prometheus_client.Gauge(
            "nnfp_catalogue_segments", "Fingerprinted segments in the index.", registry=self.registry
        )
        segments.set_function(lambda: catalogue.size()[1])

    def observe(self, endpoint, method, status, seconds):
        self.requests.labels(endpoint, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self):
        return prometheus_client.generate_latest(self.registry)


class _Measured:
    """Middleware counting every request and WebSocket session into `_Metrics`."""

    def __init__(self, app, metrics):
        self.app = app
        self.metrics = metrics

    @staticmethod
    def _endpoint(scope):
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        path = scope.get("path", "")
        if path.startswith("/static/"):
            return "/static"
        return path if path in _KNOWN_PATHS else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        began = time.perf_counter()
        status = 500

        async def watched_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and status != 101:
                status = 403  # closed before it was accepted
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            method = scope.get("method", "WEBSOCKET")
            self.metrics.observe(self._endpoint(scope), method, status, time.perf_counter() - began)


# ------------------------------------------------------------------ the app


class _PcmInbox:
    """The bytes a WebSocket client sends, read as a binary stream (`read(n)`) by
    `read_pcm_blocks` in the monitor's thread; `b""` once the input is closed."""

    def __init__(self, max_pending=STREAM_MAX_PENDING):
        self.messages = queue.Queue(maxsize=max_pending)
        self.reader_gone = False  # the monitor ended (a fault): what is sent is dropped
        self._rest = b""
        self._ended = False

    def read(self, n):
        if not self._rest and not self._ended:
            message = self.messages.get()
            if message is None:
                self._ended = True
            else:
                self._rest = message
        out, self._rest = self._rest[:n], self._rest[n:]
        return out

    async def put(self, message):
        while not self.reader_gone:  # a client sending faster than the monitor keeps up waits here
            try:
                return self.messages.put_nowait(message)
            except queue.Full:
                await asyncio.sleep(0.02)


def _check_token(request, token):
    """401/403 for a change of the catalogue that the request may not make."""
    if token is None:
        raise HTTPException(
            403, "changing the catalogue is off: start the server with --token TOKEN (or $NNFP_TOKEN)"
        )
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise HTTPException(
            401, "changing the catalogue needs the header `Authorization: Bearer TOKEN`",
            headers={"WWW-Authenticate": "Bearer"},
        )


def create_app(catalogue, token=None, max_upload_mb=50.0):
    """The FastAPI app serving `catalogue` (a `Catalogue`).

    Args:
        token: the bearer token that `POST /tracks` and `DELETE /tracks/{id}` need; None
            refuses them (403). Reads need none.
        max_upload_mb: larger request bodies are refused (413).
    """
    from nnfp.audio.io import AudioError
    from nnfp.catalogue.identify import QueryError
    from nnfp.catalogue.monitor import monitor_stream, read_pcm_blocks
    from nnfp.defaults import STREAM_BATCH_SIZE

    TRUNCATIONS.install()  # a cut upload is answered with a "warning" naming both lengths

    if not max_upload_mb > 0:
        raise ValueError(f"`max_upload_mb` must be > 0. Received: max_upload_mb={max_upload_mb}")
    measured = _Metrics(catalogue)
    app = fastapi.FastAPI(
        title="nnfp",
        summary="Neural audio fingerprinting: which catalogue track is playing, and where.",
    )

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        what = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', '')}" for e in error.errors()
        )
        return JSONResponse({"error": what or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request, error):  # a bug: said as one line, logged with its traceback
        message = str(error).replace("\n", " ")
        return JSONResponse({"error": f"internal error: {type(error).__name__}: {message}"}, status_code=500)

    def refused(error, path=None, name=None):
        """422 with the error's one-line message, the upload's temporary file named as the client named it."""
        message = str(error) if path is None else str(error).replace(str(path), name)
        return HTTPException(422, message.replace("\r", "\\r").replace("\n", "\\n"))

    @app.get("/health")
    def health():
        """Liveness and the size of the index."""
        n_tracks, n_segments = catalogue.size()
        return {"status": "ok", "tracks": n_tracks, "segments": n_segments}

    @app.post("/identify", openapi_extra=_upload_body())
    async def identify(request: Request, top_k: int = Query(5, ge=1, le=100)):
        """The track and offset of a query recording: what `nnfp identify --json` prints."""
        async with _uploaded(request) as (path, name, _):
            try:
                return await run_in_threadpool(catalogue.identify, path, name, top_k)
            except (AudioError, QueryError) as error:
                raise refused(error, path, name) from None

    @app.post("/monitor", openapi_extra=_upload_body())
    async def monitor(request: Request):
        """Every play of a catalogue track in a recording: what `nnfp monitor --json` prints."""
        async with _uploaded(request) as (path, name, _):
            try:
                plays, note = await run_in_threadpool(catalogue.monitor, path, name)
            except AudioError as error:
                raise refused(error, path, name) from None
        return {"plays": plays, **({"note": note} if note else {})}

    @app.get("/tracks")
    def tracks():
        """The tracks of the index."""
        return {"tracks": catalogue.tracks()}

    name_field = {"name": {"type": "string", "description": "the track's name (default: the file's name)"}}

    @app.post("/tracks", status_code=201, openapi_extra=_upload_body(name_field))
    async def add_track(request: Request):
        """Adds a track (needs the token); the next query can match it."""
        _check_token(request, token)
        async with _uploaded(request) as (path, upload_name, form):
            name = form.get("name")
            name = upload_name if not isinstance(name, str) or not name.strip() else name.strip()
            try:
                track = await run_in_threadpool(catalogue.add, path, name)
            except TimeoutError as error:  # nnfp.catalogue.build.IndexLockedError
                raise HTTPException(503, str(error), headers={"Retry-After": "5"}) from None
            except ValueError as error:  # a bad name, audio already in the index, unreadable audio
                raise refused(error, path, upload_name) from None
        return {"id": track["track_id"], "track": track["path"]}

    @app.delete("/tracks/{track_id}")
    async def remove_track(track_id: int, request: Request):
        """Removes a track (needs the token): it is never answered again."""
        _check_token(request, token)
        try:
            track = await run_in_threadpool(catalogue.remove, track_id)
        except KeyError:
            raise HTTPException(404, f"no track {track_id} in the index") from None
        except TimeoutError as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "5"}) from None
        return {"id": track["track_id"], "track": track["path"], "removed": True}

    @app.websocket("/stream")
    async def stream(websocket: WebSocket, rate: str = "8000"):
        """Live monitoring: binary messages of 16-bit little-endian mono PCM at `rate` Hz in,
        each play out as a JSON text message as it ends; text "end" (or closing) ends the
        input, the plays still open are then sent and the server closes the socket."""
        await websocket.accept()
        if not rate.isdigit() or not 1000 <= int(rate) <= 768_000:
            error = f"`rate` must be a sample rate in Hz (1000-768000). Received: rate={rate!r}"
            await websocket.send_json({"error": error})
            return await websocket.close(code=1008)
        identifier = catalogue.identifier
        inbox = _PcmInbox()
        plays = asyncio.Queue()
        loop = asyncio.get_running_loop()
        done = object()

        def run_monitor():
            try:
                blocks = read_pcm_blocks(inbox, int(rate), identifier.sample_rate)
                for play in monitor_stream(identifier, blocks, "stream", batch_size=STREAM_BATCH_SIZE):
                    loop.call_soon_threadsafe(plays.put_nowait, play.as_dict())
            except Exception as error:  # a bug: the client is told, the server goes on
                message = f"internal error: {type(error).__name__}: {error}"
                loop.call_soon_threadsafe(plays.put_nowait, {"error": message})
            finally:
                inbox.reader_gone = True
                loop.call_soon_threadsafe(plays.put_nowait, done)

        async def send_plays():
            while (play := await plays.get()) is not done:
                with contextlib.suppress(Exception):  # a client gone: the monitor still ends
                    await websocket.send_json(play)
                    if "error" in play:
                        await websocket.close(code=1011)

        threading.Thread(target=run_monitor, name="nnfp-stream", daemon=True).start()
        sender = asyncio.create_task(send_plays())
        connected = True
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    connected = False
                    break
                if message.get("bytes"):
                    await inbox.put(message["bytes"])
                elif (message.get("text") or "").strip() == "end":
                    break
        except (WebSocketDisconnect, RuntimeError):  # gone, or closed after a fault
            connected = False
        finally:
            await inbox.put(None)
            await sender
        if connected:
            with contextlib.suppress(Exception):
                await websocket.close(code=1000)

    @app.get("/metrics")
    def metrics():
        """Prometheus metrics: requests and errors by endpoint, latencies, index size."""
        return Response(measured.text(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page():
        page = WEB_DIR / "index.html"
        if not page.is_file():
            raise HTTPException(404, f"no web page in this installation ({page} is missing); the API is at /docs")
        return FileResponse(page)

    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    app.add_middleware(_BodyLimit, max_bytes=int(max_upload_mb * 2**20))
    app.add_middleware(_Measured, metrics=measured)  # outside the limit: its 413s are counted
    return app


def serve(app, host="127.0.0.1", port=8000, on_ready=None):
    """Runs `app` with uvicorn until SIGINT/SIGTERM; `on_ready(url)` once the socket is bound.

    Returns 0 after a shutdown, 2 when the server could not start (uvicorn logs why: the
    port is taken, the address is not this machine's...). A stop signal ends the process by
    that signal once the shutdown is done (uvicorn raises it again).
    """
    config = uvicorn.Config(app, host=host, port=port, log_config=_log_config(), timeout_graceful_shutdown=5)
    server = _Server(config, on_ready)
    try:
        server.run()
    except SystemExit as exit:  # uvicorn's way out of a failed start
        if exit.code not in (0, None):
            return 2
    return 0 if server.started else 2


def _log_config():
    """uvicorn's logging with its access lines on stderr: stdout holds only the ready line."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


class _Server(uvicorn.Server):
    """A uvicorn server that calls `on_ready(url)` once its socket is bound."""

    def __init__(self, config, on_ready):
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets=None):
        await super().startup(sockets=sockets)
        if not self.started or self.on_ready is None:
            return
        host, port = self.config.host, self.config.port
        for server in getattr(self, "servers", ()):
            for sock in server.sockets or ():
                port = sock.getsockname()[1]  # the port given as 0: the one chosen
                break
        host = f"[{host}]" if ":" in host else host
        self.on_ready(f"http://{host}:{port}")
