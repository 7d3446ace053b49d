"""The Milvus backend of the fingerprint store: an index's segment fingerprints in a Milvus
collection, in a Milvus Lite file inside the index folder or on a Milvus server or cluster.

A collection holds one entity per DB row: `row` (INT64 primary key: the row's global number),
`track` (INT64 track id: removals delete by expression) and `vector` (FLOAT_VECTOR, inner
product). `MilvusIndex` answers what `FingerprintDB` asks of a faiss index (`ntotal`, `search`,
`add`), and `MilvusRows` what it asks of its stored fingerprints (`rows[ids]`, fetched by id in
batches, kept in a local cache), so candidates come from Milvus' ANN search and the sequence
scores, phases, interpolation and decisions are the faiss backend's own code.

Writes are idempotent and resumable: primary keys are row numbers, a build fills the collection
in row order and a build run again after a kill carries on from the rows already there (same
catalogue: `content_key`), an add upserts its rows, and every writer ends by deleting what a
killed writer left (`settle`: rows past the index's rows, rows of removed tracks). Readers ignore
rows past the `n_rows` of the version they loaded, so a server can serve while an add inserts.

Milvus Lite serves one process per file (its `LOCK`); a file open in another process is
refused (`MilvusError`), e.g. `nnfp index add` while `nnfp serve` runs: change it through the
server, or put the collection on a Milvus server (`--milvus-uri`).

>>> index = MilvusIndex.create(MilvusTarget(None, "nnfp_demo", "work/milvus.db"), d=128, index_type="flat", params={})
>>> index.fill(embeddings, segment_track); index.search(queries, 20)[1]  # (n, 20) DB rows
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import threading
import weakref
from pathlib import Path

import numpy as np

from nnfp.extras import require
from nnfp.store.integrity import REBUILD_HINT, CorruptIndexError

__all__ = [
    "BACKENDS",
    "LITE_FILE",
    "TOKEN_VARIABLES",
    "URI_VARIABLE",
    "MilvusError",
    "MilvusIndex",
    "MilvusRows",
    "MilvusTarget",
    "PROBE_ROWS",
    "check_collection_name",
    "check_uri",
    "content_key",
    "default_collection",
    "release_lite",
]

BACKENDS = ("faiss", "milvus")
LITE_FILE = "milvus.db"  # the Milvus Lite data folder inside an index folder (no --milvus-uri)
TOKEN_VARIABLES = ("NNFP_MILVUS_TOKEN", "MILVUS_TOKEN")  # a server's token: never written to the index
# The server of a saved index, seen from here, when it is not the address recorded at build time
# (the index built from one host or container, served from another).
URI_VARIABLE = "NNFP_MILVUS_URI"
FORMAT = "1"  # `nnfp.format` property of the collections nnfp creates
MILVUS_INDEX_TYPES = {"flat": "FLAT", "ivf": "IVF_FLAT", "ivfpq": "IVF_PQ", "hnsw": "HNSW"}
LITE_INDEX_TYPES = ("flat", "ivf", "hnsw")  # Milvus Lite 3 has no product quantisation
HNSW_EF_CONSTRUCTION = 40  # faiss' default, so both backends build the same kind of graph
INSERT_BATCH_ROWS = 8192  # rows per insert request (4 MB at d=128, far below gRPC's 64 MB)
FETCH_BATCH_ROWS = 4096  # ids per fetch request
SEARCH_BATCH_QUERIES = 1024  # query vectors per search request (Milvus takes at most 16384)
CACHE_ROWS = 262_144  # fetched rows kept per open index (128 MB at d=128)
PROBE_ROWS = 8  # stored rows whose digest the integrity record keeps (checked on load)
DELETE_IDS_PER_EXPRESSION = 1000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


class MilvusError(OSError):
    """A Milvus call failed (a server not reached, a refused token, a Milvus Lite file open in
    another process). The message names the server or file and the collection."""


def check_collection_name(name):
    """`name` if Milvus takes it as a collection name, else `ValueError` saying what it takes."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            "a Milvus collection name is 1-255 letters, digits and underscores, not starting with a "
            f"digit. Received: collection={name!r}"
        )
    return name


def check_uri(uri):
    """A Milvus server address (`http://host:19530`, `https://...`, `tcp://...`), else `ValueError`."""
    if not isinstance(uri, str) or not re.fullmatch(r"(https?|tcp|grpc)://[^\s/]+(/\S*)?", uri):
        raise ValueError(
            "--milvus-uri must be a Milvus server address like http://localhost:19530 (without it, the "
            f"fingerprints go to a Milvus Lite file inside the index folder). Received: {uri!r}"
        )
    return uri


def default_collection(index_dir):
    """The collection name an index folder gets without `--collection`: `nnfp_<folder name>`."""
    return check_collection_name("nnfp_" + re.sub(r"\W", "_", Path(index_dir).name, flags=re.ASCII)[:240])


def content_key(embeddings, segment_track, segment_start):
    """A digest naming a catalogue's fingerprints: the row count, the segment table and a sample
    of rows spread over the store (a build run again fills on from the rows already stored only
    when it is the same catalogue)."""
    n_rows, d = embeddings.shape
    digest = hashlib.sha256(f"{n_rows}x{d}".encode())
    digest.update(np.ascontiguousarray(segment_track, np.int64).tobytes())
    digest.update(np.ascontiguousarray(segment_start, np.float32).tobytes())
    sample = np.unique(np.linspace(0, n_rows - 1, min(n_rows, 1024)).astype(np.int64))
    digest.update(np.ascontiguousarray(np.asarray(embeddings[sample], np.float32)).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class MilvusTarget:
    """Where a build puts its fingerprints.

    Attributes:
        uri: a Milvus server (`http://host:19530`; its token from `NNFP_MILVUS_TOKEN` or
            `MILVUS_TOKEN`), or None for the Milvus Lite folder `lite_path`.
        collection: the collection name.
        lite_path: the Milvus Lite data folder (a build's work folder; `save` moves it into
            the index folder as `milvus.db`).
        replace: a collection of another catalogue may be dropped and made again (`--overwrite`).
    """

    uri: str | None
    collection: str
    lite_path: str | Path | None = None
    replace: bool = False

    def __post_init__(self):
        check_collection_name(self.collection)
        if self.uri is not None:
            check_uri(self.uri)
        elif self.lite_path is None:
            raise ValueError("a Milvus target needs a server `uri` or a Milvus Lite `lite_path`")

    @property
    def where(self):
        return self.uri if self.uri is not None else str(self.lite_path)

    def check_index_type(self, index_type):
        """`ValueError` for an index Milvus Lite does not have ("auto" is resolved later, and fits)."""
        if self.uri is None and index_type not in (*LITE_INDEX_TYPES, "auto"):
            raise ValueError(
                f"Milvus Lite has no {MILVUS_INDEX_TYPES.get(index_type, index_type)} index: use --index-type "
                f"{', '.join(LITE_INDEX_TYPES)} or a Milvus server (--milvus-uri). Received: index_type={index_type!r}"
            )


# ------------------------------------------------------------------ Milvus Lite in this process


_lite_lock = threading.RLock()
_lite_open = {}  # data folder -> [generation, users]: the Milvus Lite servers this process started


def _lite_server(path):
    """The address of this process' Milvus Lite server for the data folder `path` (started, or
    shared with the other indexes open on it) and its generation (see `release_lite`)."""
    require("milvus_lite", "milvus", "a Milvus Lite file (--backend milvus without --milvus-uri)")
    import logging

    from milvus_lite import server_manager_instance

    path = str(Path(path).absolute())
    _release_collected()
    with _lite_lock:
        quiet = logging.getLogger("milvus_lite.server_manager")
        level, quiet.level = quiet.level, logging.CRITICAL  # its traceback: we raise our own error
        try:
            uri = server_manager_instance.start_and_get_uri(path)
        finally:
            quiet.level = level
        if uri is None:
            _refuse_if_locked(path)
            raise MilvusError(f"{path}: Milvus Lite could not open this file (damaged?); {REBUILD_HINT}")
        entry = _lite_open.setdefault(path, [_lite_generation.get(path, 0), 0])
        entry[1] += 1
        return uri, entry[0]


_lite_generation = {}  # data folder -> times its server was stopped (a stale client is told apart)


def _refuse_if_locked(path):
    """`MilvusError` when another process holds the Milvus Lite file `path` (its `LOCK`)."""
    lock = Path(path) / "LOCK"
    if not lock.is_file():
        return
    import fcntl

    with open(lock, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MilvusError(
                f"{path}: this Milvus Lite file is open in another process (Milvus Lite serves one "
                "process at a time): wait for it, make the change through it (e.g. `nnfp serve`'s "
                "/tracks), or keep the fingerprints on a Milvus server (`--milvus-uri`)"
            ) from None
        fcntl.flock(handle, fcntl.LOCK_UN)


_lite_collected = []  # (folder, generation) of indexes garbage-collected, let go at the next open


def _lite_collected_index(path, generation):
    """The finalizer of an index on a Lite file: may run inside any allocation (garbage collection),
    even one made under `_lite_lock` or inside Milvus Lite, so it only takes note."""
    _lite_collected.append((path, generation))


def _release_collected():
    while _lite_collected:
        _lite_done(*_lite_collected.pop())


def _lite_done(path, generation):
    """One index on the Milvus Lite folder `path` is closed; the last one stops its server."""
    path = str(Path(path).absolute())
    with _lite_lock:
        entry = _lite_open.get(path)
        if entry is None or entry[0] != generation:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
    release_lite(path)


def release_lite(path):
    """Stops this process' Milvus Lite server for the data folder `path`, whoever uses it (before
    the folder is moved or deleted); indexes still open on it connect again when next used."""
    path = str(Path(path).absolute())
    with _lite_lock:
        entry = _lite_open.pop(path, None)
        if entry is None:
            return
        _lite_generation[path] = entry[0] + 1
    from milvus_lite import server_manager_instance

    server_manager_instance.release_server(path)


def _token():
    for name in TOKEN_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return ""


# ------------------------------------------------------------------ the index


class MilvusIndex:
    """A Milvus collection of DB rows, used by `FingerprintDB` as it uses a faiss index.

    Args:
        target: the `MilvusTarget` (server or Milvus Lite folder, collection).
        n_rows: rows of the DB version this index serves (`ntotal`); rows past it are ignored.
        d: fingerprint size.
        index_type: `"flat"`, `"ivf"`, `"ivfpq"` (servers only) or `"hnsw"`.
        params: nnfp's index parameters (`nprobe`, `ef_search`...), as `FingerprintDB.index_params`.

    Open one with `MilvusIndex.create` (a build) or `MilvusIndex.open` (a saved index).
    """

    backend = "milvus"

    def __init__(self, target, n_rows, d, index_type, params):
        self.target = target
        self.ntotal = int(n_rows)
        self.d = int(d)
        self.index_type = index_type
        self.params = dict(params)
        self.zero_rows = None  # dead-air rows written by this process (`fill`), None: unknown
        self.key = None  # the catalogue's `content_key` (a build)
        self.recorded_uri = target.uri  # the server address the index records (`$NNFP_MILVUS_URI` may differ)
        self.rows = MilvusRows(self)
        self._client = None
        self._generation = None
        self._finalizer = None

    # -------------------------------------------------------------- connection

    @property
    def where(self):
        return f"{self.target.where} (collection {self.target.collection})"

    @property
    def client(self):
        if self.target.uri is None:
            path = str(Path(self.target.lite_path).absolute())
            entry = _lite_open.get(path)
            if self._client is None or entry is None or entry[0] != self._generation:
                self._disconnect()
                uri, self._generation = _lite_server(path)
                self._finalizer = weakref.finalize(self, _lite_collected_index, path, self._generation)
                self._client = self._connect(uri)
        elif self._client is None:
            self._client = self._connect(self.target.uri, _token())
        return self._client

    def _connect(self, uri, token=""):
        pymilvus = require("pymilvus", "milvus", "the Milvus backend (--backend milvus)")
        try:
            return pymilvus.MilvusClient(uri=uri, token=token)
        except Exception as error:  # MilvusException: unreachable server, refused token
            raise MilvusError(f"{self.target.where}: cannot connect to Milvus ({_message(error)})") from None

    def _disconnect(self):
        if self._finalizer is not None:
            attached = self._finalizer.detach()
            if attached is not None:
                _lite_done(*attached[2])  # this index no longer uses its Lite server
            self._finalizer = None
        self._client = None

    def close(self):
        """Lets go of the connection (the last index on a Milvus Lite file stops its server)."""
        self._disconnect()

    def _call(self, method, *args, **kwargs):
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except MilvusError:
            raise
        except Exception as error:
            if type(error).__name__ != "MilvusException":
                raise
            raise MilvusError(f"{self.where}: Milvus {method} failed ({_message(error)})") from None

    # -------------------------------------------------------------- create, open

    @classmethod
    def create(cls, target, d, index_type, params, key):
        """The collection for a build at `target` of the catalogue `key` (`content_key`): created,
        or the one an earlier run of the same build left (`fill` carries on). A collection nnfp did
        not create is never written to; one of another catalogue is dropped only with
        `target.replace` (`ValueError` otherwise, and nothing is written)."""
        target.check_index_type(index_type)
        index = cls(target, 0, d, index_type, params)
        index.key = key
        name = target.collection
        if index._call("has_collection", name):
            properties, dim = index._describe()
            if properties.get("nnfp.format") is None:
                raise ValueError(
                    f"{index.where}: a collection nnfp did not create; nnfp never writes into or drops it: "
                    "choose another --collection (nothing was written)"
                )
            if (dim, properties.get("nnfp.index"), properties.get("nnfp.content")) == (d, index._spec()[0], key):
                index._load()
                return index
            if not target.replace:
                raise ValueError(
                    f"{index.where}: holds the fingerprints of another nnfp index; pass --overwrite to replace "
                    "them, or choose another --collection (nothing was written)"
                )
            index._call("drop_collection", name)
        index._create_collection(key)
        return index

    @classmethod
    def open(cls, target, n_rows, d, index_type, params):
        """The collection of a saved index (`CorruptIndexError` when it is missing or holds others)."""
        if target.uri is None and not Path(target.lite_path).is_dir():
            raise FileNotFoundError(
                f"Fingerprint DB directory {Path(target.lite_path).parent} is missing its Milvus Lite folder "
                f"{LITE_FILE}: {target.lite_path}; {REBUILD_HINT}"
            )
        recorded = target.uri
        if target.uri is not None and os.environ.get(URI_VARIABLE):
            target = dataclasses.replace(target, uri=check_uri(os.environ[URI_VARIABLE]))
        index = cls(target, n_rows, d, index_type, params)
        index.recorded_uri = recorded
        if not index._call("has_collection", target.collection):
            raise CorruptIndexError(f"{index.where}: the index's collection is not there; {REBUILD_HINT}")
        properties, dim = index._describe()
        if properties.get("nnfp.format") != FORMAT or dim != index.d:
            raise CorruptIndexError(
                f"{index.where}: holds other fingerprints than this index ({dim}-d, nnfp.format="
                f"{properties.get('nnfp.format')!r}; the index has {index.d}-d); {REBUILD_HINT}"
            )
        index._load()
        return index

    def _describe(self):
        info = self._call("describe_collection", self.target.collection)
        dims = [int(f.get("params", {}).get("dim", 0)) for f in info.get("fields", []) if f.get("name") == "vector"]
        return dict(info.get("properties") or {}), (dims[0] if dims else None)

    def _spec(self):
        """`(text, build parameters)` of the collection's vector index (the text is recorded in it)."""
        build = {
            "flat": {},
            "ivf": {"nlist": self.params.get("nlist")},
            "ivfpq": {"nlist": self.params.get("nlist"), "m": self.params.get("m"), "nbits": self.params.get("nbits")},
            "hnsw": {"M": self.params.get("hnsw_m"), "efConstruction": HNSW_EF_CONSTRUCTION},
        }[self.index_type]
        return MILVUS_INDEX_TYPES[self.index_type] + "".join(f",{k}={v}" for k, v in build.items()), build

    def _create_collection(self, key):
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("track", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.d)
        spec, build = self._spec()
        index_params = self.client.prepare_index_params()
        index_params.add_index(
            field_name="vector", index_type=MILVUS_INDEX_TYPES[self.index_type], metric_type="IP", params=build
        )
        # Strong consistency: a query right after an add or a removal sees it.
        self._call(
            "create_collection", self.target.collection, schema=schema, consistency_level="Strong",
            properties={"nnfp.format": FORMAT, "nnfp.index": spec, "nnfp.content": key},
        )
        # Not waited for: Milvus indexes the rows as its segments fill (and Milvus Lite has no
        # timestamp service for the wait).
        self._call("create_index", self.target.collection, index_params, sync=False)
        self._load()

    def _load(self):
        state = self._call("get_load_state", self.target.collection).get("state")
        if getattr(state, "name", str(state)) != "Loaded":
            self._call("load_collection", self.target.collection)

    # -------------------------------------------------------------- writes

    def insert_batch(self, first_row, vectors, tracks, upsert=False):
        """Writes rows `first_row, first_row + 1, ...` (one request); `upsert` replaces rows
        already stored under those numbers."""
        data = [
            {"row": first_row + i, "track": track, "vector": vector}
            for i, (track, vector) in enumerate(zip(np.asarray(tracks).tolist(), vectors, strict=True))
        ]
        self._call("upsert" if upsert else "insert", self.target.collection, data)

    def fill(self, embeddings, segment_track):
        """Stores rows 0..N-1 of a build, once each. Rows an earlier, killed run of the same build
        stored (rows 0..C-1, written in order) are kept and the rest written; anything else in the
        collection means it is made again. Returns the number of rows written now."""
        n_rows = len(embeddings)
        stored = self.count()
        if stored and not self._holds_first(stored, n_rows):
            self._call("drop_collection", self.target.collection)
            self._create_collection(self.key)
            stored = 0
        zero_rows = 0
        for first in range(0, n_rows, INSERT_BATCH_ROWS):
            last = min(first + INSERT_BATCH_ROWS, n_rows)
            block = np.ascontiguousarray(embeddings[first:last], np.float32)
            zero_rows += int(np.count_nonzero(~block.any(axis=1)))
            if last > stored:
                begin = max(first, stored)
                self.insert_batch(begin, block[begin - first :], segment_track[begin:last])
        self._call("flush", self.target.collection)
        self.ntotal, self.zero_rows = n_rows, zero_rows
        return n_rows - stored

    def _holds_first(self, stored, n_rows):
        """Whether the `stored` rows of the collection are rows 0..stored-1 (each once)."""
        if stored > n_rows:
            return False
        last = self._call("get", self.target.collection, ids=[stored - 1], output_fields=["row"])
        beyond = self._call(
            "query", self.target.collection, filter=f"row >= {stored}", output_fields=["row"], limit=1
        )
        return len(last) == 1 and not len(beyond)

    def add(self, vectors, tracks):
        """Appends rows `ntotal, ntotal + 1, ...` (upserted: rows a killed add left under those
        numbers are replaced)."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        tracks = np.asarray(tracks)
        for first in range(0, len(vectors), INSERT_BATCH_ROWS):
            self.insert_batch(
                self.ntotal + first, vectors[first : first + INSERT_BATCH_ROWS],
                tracks[first : first + INSERT_BATCH_ROWS], upsert=True,
            )
        self._call("flush", self.target.collection)
        self.ntotal += len(vectors)
        self.rows.forget()

    def settle(self, n_live, removed_track_ids):
        """Deletes what a killed or unfinished writer left once the index's version is in place:
        rows past `ntotal` and the rows of removed tracks (idempotent; nothing to do, and one
        count, when the collection holds the `n_live` rows of the index)."""
        if self.count() == n_live:
            return
        self._call("delete", self.target.collection, filter=f"row >= {self.ntotal}")
        ids = sorted(int(i) for i in removed_track_ids)
        for first in range(0, len(ids), DELETE_IDS_PER_EXPRESSION):
            self._call("delete", self.target.collection, filter=f"track in {ids[first : first + DELETE_IDS_PER_EXPRESSION]}")
        self._call("flush", self.target.collection)
        self.rows.forget()

    def move_lite(self, folder, final_folder):
        """Moves the Milvus Lite data folder into `folder` (a new index folder being written, later
        renamed to `final_folder`), its server stopped first. A server's collection stays put."""
        if self.target.uri is not None:
            return
        source = Path(self.target.lite_path).absolute()
        if source == (Path(final_folder) / LITE_FILE).absolute():
            return
        if (source.parent / "tracks.json").is_file():
            raise ValueError(
                f"{source}: the Milvus Lite file of the index {source.parent}; it is saved over its own folder "
                "only (copy the folder to copy the index)"
            )
        self._call("flush", self.target.collection)
        self._disconnect()
        release_lite(source)
        os.rename(source, Path(folder) / LITE_FILE)
        self.target = dataclasses.replace(self.target, lite_path=Path(final_folder).absolute() / LITE_FILE)

    # -------------------------------------------------------------- reads

    def count(self, expression=""):
        """Rows in the collection (that match `expression`)."""
        result = self._call("query", self.target.collection, filter=expression, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def set_search_params(self, nprobe=None, ef_search=None):
        if nprobe is not None:
            self.params["nprobe"] = int(nprobe)
        if ef_search is not None:
            self.params["ef_search"] = int(ef_search)

    def search(self, x, k):
        """`(scores, rows)`, each (n, k), of the `k` nearest rows of each query vector (inner
        product), best first, as faiss' `Index.search`: row -1 where there is none (fewer rows,
        or rows past `ntotal`: added by a writer after this version)."""
        x = np.ascontiguousarray(x, np.float32)
        k = int(k)
        rows = np.full((len(x), k), -1, np.int64)
        scores = np.full((len(x), k), -np.inf, np.float32)
        extra = {}
        if self.index_type in ("ivf", "ivfpq"):
            extra = {"nprobe": int(self.params.get("nprobe", 16))}
        elif self.index_type == "hnsw":
            extra = {"ef": max(int(self.params.get("ef_search", 128)), k)}
        search_params = {"metric_type": "IP", "params": extra}
        for first in range(0, len(x), SEARCH_BATCH_QUERIES):
            result = self._call(
                "search", self.target.collection, data=x[first : first + SEARCH_BATCH_QUERIES], limit=k,
                output_fields=["row"], search_params=search_params,
            )
            for i, hits in enumerate(result):
                ids = getattr(hits, "ids", None)
                ids = [hit["row"] for hit in hits] if ids is None else list(ids)
                distances = getattr(hits, "distances", None)
                distances = [hit["distance"] for hit in hits] if distances is None else list(distances)
                rows[first + i, : len(ids)] = ids
                scores[first + i, : len(ids)] = distances
        past = rows >= self.ntotal
        rows[past], scores[past] = -1, -np.inf
        return scores, rows

    def fetch(self, ids):
        """(len(ids), d) float32 stored fingerprints of the sorted unique rows `ids`, fetched by id in
        batches; zeros for a row the collection does not hold (removed, or past `ntotal`)."""
        ids = np.asarray(ids, np.int64)
        out = np.zeros((len(ids), self.d), np.float32)
        wanted = np.flatnonzero((ids >= 0) & (ids < self.ntotal))
        for first in range(0, len(wanted), FETCH_BATCH_ROWS):
            part = wanted[first : first + FETCH_BATCH_ROWS]
            got = self._call(
                "get", self.target.collection, ids=ids[part].tolist(), output_fields=["vector"], strict_float32=True
            )
            if not len(got):
                continue
            found = np.fromiter((entity["row"] for entity in got), np.int64, len(got))
            vectors = np.stack([np.asarray(entity["vector"], np.float32) for entity in got])
            out[part[np.searchsorted(ids[part], found)]] = vectors
        return out

    # -------------------------------------------------------------- integrity

    def record(self, probe_rows):
        """The `store` entry of the index's tracks.json: where the collection is and the digest of
        the stored `probe_rows` (a few live rows, checked by `check` on every load)."""
        probe_rows = np.unique(np.asarray(probe_rows, np.int64))
        return {
            "backend": self.backend,
            "uri": self.recorded_uri,
            "lite_file": LITE_FILE if self.target.uri is None else None,
            "collection": self.target.collection,
            "probe": {"rows": probe_rows.tolist(), "sha256": _digest(self.fetch(probe_rows))},
        }

    def check(self, n_live, removed_track_ids, probe):
        """Checks on load that the collection holds the index's `n_live` live rows, and that its
        `probe` rows (`record`) are the ones saved; `CorruptIndexError` naming the collection."""
        stored = self.count()
        if stored != n_live:  # rows a writer adds or deletes right now, or left when killed: not counted
            removed = sorted(int(i) for i in removed_track_ids)
            expression = f"row < {self.ntotal}" + (f" and track not in {removed}" if removed else "")
            stored = self.count(expression)
        if stored != n_live:
            raise CorruptIndexError(
                f"{self.where}: holds {stored} of the index's {n_live} live rows (changed by another program, or "
                f"damaged); {REBUILD_HINT}"
            )
        if probe and _digest(self.fetch(np.asarray(probe["rows"], np.int64))) != probe["sha256"]:
            raise CorruptIndexError(
                f"{self.where}: its stored fingerprints differ from the ones recorded at save time (probe rows "
                f"{probe['rows'][:4]}...); {REBUILD_HINT}"
            )


def _digest(vectors):
    return hashlib.sha256(np.ascontiguousarray(vectors, np.float32).tobytes()).hexdigest()


def _message(error):
    return " ".join(str(getattr(error, "message", None) or error).split())


class MilvusRows:
    """The stored fingerprints of a Milvus-backed DB as a read-only (n_rows, d) float32 array:
    `rows[ids]` (ids, a slice or a row) fetches the rows by id from the collection, in batches,
    and keeps up to `cache_rows` of them (first in, first out), so the overlapping windows of a
    query's phases and of a stream's windows are fetched once.

    >>> db.embeddings[[12, 13, 14]]  # (3, d), as from the faiss backend's embeddings.npy
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, index, cache_rows=CACHE_ROWS):
        self.index = index
        self.cache_rows = int(cache_rows)
        self._lock = threading.Lock()  # `nnfp serve` answers several queries at once
        self.forget()

    def forget(self):
        """Drops the cached rows (after a write)."""
        self._slot_of = {}  # row -> slot of `_cache`
        self._cache = None
        self._owner = None
        self._next = 0

    @property
    def shape(self):
        return (self.index.ntotal, self.index.d)

    @property
    def nbytes(self):
        return self.index.ntotal * self.index.d * 4

    def __len__(self):
        return self.index.ntotal

    def __array__(self, dtype=None, copy=None):
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            ids = np.arange(*key.indices(len(self)), dtype=np.int64)
        elif np.isscalar(key):
            return self[np.array([key])][0]
        else:
            ids = np.asarray(key)
            if ids.dtype == bool:
                ids = np.flatnonzero(ids)
            ids = ids.astype(np.int64)
            if ids.size and (ids.min() < -len(self) or ids.max() >= len(self)):
                raise IndexError(f"row ids must be in [0, {len(self)}). Received: {ids.min()}..{ids.max()}")
            ids = np.where(ids < 0, ids + len(self), ids)
        unique, where = np.unique(ids.ravel(), return_inverse=True)
        return self._rows(unique)[where].reshape(*ids.shape, self.index.d)

    def _rows(self, unique):
        with self._lock:
            if self._cache is None:
                self._cache = np.zeros((self.cache_rows, self.index.d), np.float32)
                self._owner = np.full(self.cache_rows, -1, np.int64)
            slots = np.fromiter((self._slot_of.get(row, -1) for row in unique.tolist()), np.int64, len(unique))
            out = np.empty((len(unique), self.index.d), np.float32)
            cached = slots >= 0
            out[cached] = self._cache[slots[cached]]
            missing = unique[~cached]
            if missing.size:
                fetched = self.index.fetch(missing)
                out[~cached] = fetched
                self._keep(missing[-self.cache_rows :], fetched[-self.cache_rows :])
            return out

    def _keep(self, rows, vectors):
        slots = (self._next + np.arange(len(rows))) % self.cache_rows
        for old in self._owner[slots].tolist():
            if old >= 0:
                self._slot_of.pop(old, None)
        self._owner[slots] = rows
        self._cache[slots] = vectors
        self._slot_of.update(zip(rows.tolist(), slots.tolist(), strict=True))
        self._next = int((self._next + len(rows)) % self.cache_rows)
