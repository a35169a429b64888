"""The FastAPI application of ``assay serve``: a REST API over a workspace, and the labelling page.

Routes (all under one optional bearer token; the OpenAPI spec is at ``/openapi.json``)::

    GET  /                                       the labelling page (static files under /static)
    GET  /api/health
    GET  /api/concepts                           list, with label counts
    POST /api/concepts                           create {name, text?, exemplars?}
    GET  /api/concepts/{name}                    one concept
    GET  /api/concepts/{name}/rounds             every round (provenance)
    GET  /api/concepts/{name}/rounds/latest      the latest proposed batch, with pre-labels and answers so far
    GET  /api/concepts/{name}/rounds/{number}    one round's batch
    POST /api/concepts/{name}/rounds             propose the next batch in the background (202)
    GET  /api/concepts/{name}/proposer           the background proposer's state (?wait=s long-polls)
    POST /api/concepts/{name}/labels             submit answers {submission_id, annotator, round, labels, skipped}
    GET  /api/concepts/{name}/labels             label history (?item_id=)
    GET  /api/concepts/{name}/conflicts          items where annotators disagree
    GET  /api/concepts/{name}/progress           labels spent, positives found, pre-label quality, per round
    GET  /api/search                             ?text= or ?item= (more like this; repeat it for several), k
    GET  /api/items/{id}                         one item's metadata
    GET  /api/items/{id}/thumb                   its JPEG thumbnail (?size=), made and cached server side

Errors are JSON ``{"detail": ...}``: 400 bad input, 401 missing or wrong token, 404 unknown concept, round
or item, 409 a stale round / busy proposer / reused submission id, 413 an oversized body, 422 a body that
does not match the schema. Nothing is written by a request that fails.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import numpy as np

from ..errors import (
    AssayError,
    CatalogError,
    InputError,
    MissingDependencyError,
    NotFoundError,
    UnknownNameError,
    WorkspaceError,
)
from ..loop import Miner
from ..workspace import Workspace

try:
    import sqlalchemy as sa
    from fastapi import Body, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles
    from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(getattr(exc, "name", None) or "fastapi", "server", "the labelling web app") from exc

from ..catalog import Catalog, iso_utc, labels_table
from ..regions import (
    RegionMiner, region_ids, region_label_rows, region_labels_table, region_proposals, region_spec_of, region_store, slot_of,
)
from ..regions import region_labels as current_region_labels
from . import records
from .records import ConflictError, StaleRoundError
from .thumbnails import DEFAULT_THUMB_SIZE, THUMB_SIZES, thumbnail_path

__all__ = ["TOKEN_COOKIE", "ServerConfig", "ServerThread", "create_app"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
TOKEN_COOKIE = "assay_token"
MAX_ID = 2**63 - 1
def _json_safe(v: Any) -> Any:
    """``v`` with non-finite floats as strings and anything else JSON cannot hold as its ``str``."""
    import math

    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return str(v)


_ANSWER_SOURCES = Catalog.ANSWER_SOURCES  # the answers a person (or a stand-in) gave; pseudo-labels are not


@dataclass
class ServerConfig:
    """Settings of one server. ``token=None`` turns authentication off (only sensible on 127.0.0.1)."""

    token: str | None = None
    encoder: str | None = None
    strategy: str = "seals:entropy"
    batch: int = 50
    proxy: str = "logistic"
    seals_k: int = 100
    open_rounds: int = 2  # the latest round and the one before it accept labels; older ones are stale
    auto_propose: bool = True  # propose the next batch once every item of the latest batch is answered
    max_body_bytes: int = 512 * 1024
    max_labels: int = 1000
    #: Without a token, answer only requests whose Host is a loopback name (localhost, 127.0.0.1, [::1]): a web
    #: page elsewhere cannot then reach the server through DNS rebinding. `assay serve --host` on a
    #: non-loopback address turns it off (the server is meant to be reached by other names there).
    check_host: bool = True

    def __post_init__(self) -> None:
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 8):
            raise InputError("the server token must be a string of at least 8 characters")
        if not isinstance(self.batch, int) or not 1 <= self.batch <= 1000:
            raise InputError(f"batch must be an integer in [1, 1000], got {self.batch!r}")
        if self.open_rounds < 1:
            raise InputError(f"open_rounds must be at least 1, got {self.open_rounds}")


# ---------------------------------------------------------------------------------------------- request bodies
def _concept_name(v: str) -> str:
    from ..catalog import Catalog

    Catalog.check_concept_name(v)  # the CLI's rule (InputError is a ValueError: a 422 naming the rule)
    return v


#: A concept name: the rule of `assay concept add` (any script; no '/', '\\', control characters, '.' or '..').
ConceptName = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_concept_name)]


def _annotator_name(v: str) -> str:
    from ..catalog import Catalog

    v = v.strip()
    if not v:
        raise ValueError("an annotator must be named: got only spaces")
    Catalog.check_annotator(v)  # the catalog's rule (InputError is a ValueError: a 422 naming the rule)
    return v


#: Who answered: any script (names like "José" or "王芳" are fine), at most 200 characters, no control
#: characters (the same rule as ``assay label --annotator``). The page shows names as text, never as HTML.
Annotator = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_annotator_name)]
ItemId = Annotated[int, Field(ge=1, le=MAX_ID)]
ConceptPath = Annotated[str, PathParam(min_length=1, max_length=200, description="Concept name")]


class ConceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: ConceptName
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)] | None = None
    exemplars: list[ItemId] = Field(default_factory=list, max_length=100)


class LabelIn(BaseModel):
    # strict: an id or answer must be a JSON integer; "73", 1.0 and true are refused, not coerced
    model_config = ConfigDict(extra="forbid", strict=True)
    item_id: ItemId
    value: Annotated[int, Field(ge=0, le=1)] = Field(description="1 = yes (positive), 0 = no (negative)")
    region_slot: Annotated[int, Field(ge=0, le=1023)] | None = Field(
        None, description="The answer is about this region of the image too (the box shown; the region's slot "
                          "in its image, as the batch gives it: region ids exceed JavaScript's exact integers): "
                          "the value is stored for the region and for the image")


class SubmissionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    submission_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")] = Field(
        description="Made by the client, new for each submission and reused only to retry it")
    annotator: Annotator
    round: Annotated[int, Field(ge=1, le=2**31 - 1)] = Field(description="The round number the batch came from")
    labels: list[LabelIn] = Field(default_factory=list, max_length=1000)
    skipped: list[ItemId] = Field(default_factory=list, max_length=1000)


class ProposeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "batch": "10" is refused, as in the labels body
    strategy: Annotated[str, StringConstraints(pattern=r"^[a-z:_-]{1,64}$")] | None = None
    batch: Annotated[int, Field(ge=1, le=1000)] | None = None
    proxy: Literal["logistic", "mlp", "ensemble", "svm"] | None = None
    seed: Annotated[int, Field(ge=0, le=2 ** 31 - 1)] | None = None
    regions: bool | None = Field(None, description="Mine per image with region evidence (needs `assay embed --regions`)")


# ---------------------------------------------------------------------------------------------- the proposer
@dataclass
class _Job:
    state: str = "idle"  # idle | running | done | error
    round: int | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    def public(self) -> dict[str, Any]:
        now = time.time()
        return {
            "state": self.state, "round": self.round, "error": self.error, "params": self.params,
            "elapsed_s": None if self.started_at is None else round((self.finished_at or now) - self.started_at, 3),
        }


class _Proposer:
    """Runs ``Miner.propose`` on one background thread; one job per concept at a time."""

    def __init__(self, ws: Workspace, encoder: str | None) -> None:
        self.ws = ws
        self.encoder = encoder
        self._lock = threading.Lock()
        self._jobs: dict[int, _Job] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._searcher: Any = None
        self._searcher_key: Any = None

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assay-propose")
            return self._executor

    def close(self) -> None:
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def searcher(self):
        """A Searcher kept between rounds (its index stays loaded); renewed when the index is rebuilt."""
        from ..search import Searcher

        enc = self.encoder or self.ws.default_encoder
        meta = self.ws.index_dir(enc) / "main" / "meta.json"
        graph = self.ws.index_dir(enc) / "knn" / "meta.json"  # a kNN graph built later (`assay index --knn K`)
        key = (enc, meta.stat().st_mtime_ns if meta.exists() else None,
               graph.stat().st_mtime_ns if graph.exists() else None)
        with self._lock:
            if self._searcher is None or self._searcher_key != key:
                s = Searcher(self.ws, enc)
                if key[1] is not None:
                    s.index()
                self._searcher, self._searcher_key = _MemoSearcher(s), key
            return self._searcher

    def status(self, concept_id: int) -> dict[str, Any]:
        with self._lock:
            return self._jobs.get(concept_id, _Job()).public()

    def wait(self, concept_id: int, timeout: float) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(concept_id)
        if job is not None and timeout > 0:
            job.done.wait(timeout)
        return self.status(concept_id)

    def running(self, concept_id: int) -> bool:
        with self._lock:
            job = self._jobs.get(concept_id)
            return job is not None and job.state == "running"

    def start(self, concept: Any, params: dict[str, Any], *, only_if_idle: bool = False,
              still_wanted: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Start a job. ``only_if_idle``: return the running job's state instead of refusing; ``still_wanted``
        is checked under the lock, after any earlier job of this concept has recorded its round."""
        with self._lock:
            job = self._jobs.get(concept.id)
            if job is not None and job.state == "running":
                if only_if_idle:
                    return job.public()
                raise ConflictError(f"a batch for concept {concept.name!r} is being proposed already; "
                                    f"poll /api/concepts/{concept.name}/proposer")
            if still_wanted is not None and not still_wanted():
                return (job or _Job()).public()
            job = _Job(state="running", started_at=time.time(), params=dict(params))
            self._jobs[concept.id] = job
        try:
            self._pool().submit(self._run, concept.name, job, params)
        except RuntimeError as exc:  # the executor is shutting down
            job.state, job.error, job.finished_at = "error", f"the server is shutting down: {exc}", time.time()
            job.done.set()
        return job.public()

    def _run(self, concept_name: str, job: _Job, params: dict[str, Any]) -> None:
        try:
            searcher = self.searcher()
            params = dict(params)
            cls = _KeptSearcherRegionMiner if params.pop("regions", False) else _KeptSearcherMiner
            miner = cls(self.ws, concept_name, encoder=self.encoder, searcher=searcher)
            row, _ = miner.propose(**params)
            job.round, job.state = row.number, "done"
        except AssayError as exc:
            job.state, job.error = "error", str(exc)
        except Exception as exc:  # a background failure must reach the page, not vanish in a thread
            log.exception("proposing a batch for %r failed", concept_name)
            job.state, job.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()
            job.done.set()


class _MemoSearcher:
    """The server's Searcher with a memo in front of ``neighbors``.

    A SEALS round asks for the neighbours of every labelled item; the neighbourhoods do not change
    while the index does not, so the kept searcher answers the items it has seen from memory and only
    the newly labelled ones reach FAISS (at 1M items this took a round from ~0.3-0.5 s, growing with
    the labels, to a constant). The memo dies with the searcher when the index is rebuilt.
    """

    def __init__(self, searcher: Any, *, vector_memo_bytes: int = 512 << 20) -> None:
        from ..select.pools import CachedNeighbors

        self._inner = searcher
        self._memo = CachedNeighbors(searcher.neighbors)
        self._lock = threading.Lock()
        self._corpus: np.ndarray | None = None
        self.store = _MemoStore(searcher.store, vector_memo_bytes)

    def neighbors(self, ids: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._memo(np.asarray(ids, dtype=np.int64), k)

    def sorted_corpus(self) -> np.ndarray:
        """The index's ids, sorted once per index (a 1M-id sort cost ~60 ms a round)."""
        with self._lock:
            if self._corpus is None:
                self._corpus = np.sort(self._inner.index().ids)
            return self._corpus

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _MemoStore:
    """The vector store behind the kept searcher, with a float32 memo of the rows read for rounds.

    Each round scores the SEALS pool, which changes little between rounds; the memo
    (:class:`~assay.select.strategies.CachedVectors`) keeps the rows it has read, up to ``max_bytes``, after
    which reads go to the store again. Everything but ``get`` of plain float32 vectors goes to the store.
    """

    def __init__(self, store: Any, max_bytes: int) -> None:
        from ..select.strategies import CachedVectors

        self._store = store
        self._max_rows = max(0, int(max_bytes) // (4 * max(1, int(store.dim)))) if store.exists() else 0
        self._memo = CachedVectors(lambda ids: store.get(ids, dtype=np.float32))
        self._lock = threading.Lock()

    def _fits(self, n: int) -> bool:
        """Whether ``n`` more rows stay within the memo's budget (call under the lock)."""
        return len(self._memo) + n <= self._max_rows

    def get(self, ids: Any, *, dtype: Any = np.float32, extra: str | None = None) -> np.ndarray:
        if extra is None and np.dtype(dtype) == np.float32:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            with self._lock:
                if self._fits(ids.size):
                    return self._memo(ids)
        return self._store.get(ids, dtype=dtype, extra=extra)

    def __call__(self, ids: Any) -> np.ndarray:
        """float32 rows of ``ids`` (a vector lookup for the selection engine)."""
        return self.get(ids)

    def map_rows(self, fn: Callable[[np.ndarray], np.ndarray], ids: Any) -> np.ndarray:
        """``fn(rows of ids)``, scored in place in the memo while it is within its budget."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            if self._fits(ids.size):
                return self._memo.map_rows(fn, ids)
        return np.asarray(fn(self._store.get(ids, dtype=np.float32)), dtype=np.float64)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _KeptSearcherMiner(Miner):
    """A Miner that reuses the server's Searcher, so the index is not reloaded every round."""

    def __init__(self, ws: Workspace, concept: str, *, encoder: str | None, searcher: Any) -> None:
        super().__init__(ws, concept, encoder=encoder)
        self._kept = searcher

    def _searcher(self):
        return self._kept

    def _index_ids(self, searcher) -> np.ndarray:
        kept = getattr(searcher, "sorted_corpus", None)
        return kept() if kept is not None else super()._index_ids(searcher)


class _KeptSearcherRegionMiner(RegionMiner, _KeptSearcherMiner):
    """A RegionMiner (rounds with region evidence) that reuses the server's Searcher like _KeptSearcherMiner."""


# ---------------------------------------------------------------------------------------------- guard middleware
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _loopback_host(host: str) -> bool:
    """Whether a Host header (``name``, ``name:port``, ``[v6]:port``) names this machine's loopback."""
    h = host.strip().lower()
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h in _LOOPBACK_NAMES or h.endswith(".localhost"):  # *.localhost resolves to loopback (RFC 6761)
        return True
    try:  # an address literal; a name like 127.evil.example is a name, and its owner decides where it points
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _cookie_name(scope: dict) -> str:
    """The token cookie's name: one per port, since browsers share cookies between the ports of a host and two
    servers on one machine would otherwise sign each other out."""
    server = scope.get("server") or (None, None)
    return f"{TOKEN_COOKIE}_{server[1]}" if server[1] else TOKEN_COOKIE


def _cookie(headers: dict[str, str], name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header, read the way browsers write it (``a=1; b=2``); other
    cookies of the host, however they are written (raw JSON, spaces), are ignored."""
    for part in headers.get("cookie", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None



class _Guard:
    """Pure ASGI middleware: bearer-token auth for every route, a body size limit, and security headers."""

    def __init__(self, app: Any, *, token: str | None, max_body: int, check_host: bool = True) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.check_host = check_host

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is None and self.check_host and not _loopback_host(headers.get("host", "")):
            await JSONResponse(
                {"detail": f"Host {headers.get('host', '')!r} refused: without a token this server answers only "
                           "requests to localhost, 127.0.0.1 or [::1] (start it with --token to serve other names)"},
                status_code=421)(scope, receive, send)
            return
        cookie_name = _cookie_name(scope)
        if self.token is not None:
            if path == "/" and scope.get("method") == "GET":
                given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
                if given is not None:
                    if self._ok(given):  # take the token once, keep it in a cookie, drop it from the address bar
                        resp = RedirectResponse("/", status_code=303)
                        resp.set_cookie(cookie_name, given, httponly=True, samesite="strict", path="/")
                        await resp(scope, receive, send)
                    else:
                        await self._deny(scope, receive, send, "wrong token in ?token=")
                    return
            if not self._authorised(headers, cookie_name):
                why = ("missing token" if not headers.get("authorization") and _cookie(headers, cookie_name) is None
                       else "wrong token")
                await self._deny(scope, receive, send, why)
                return
        if scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    await JSONResponse({"detail": "Content-Length must be a non-negative integer"}, 400)(scope, receive, send)
                    return
                if int(length) > self.max_body:
                    await self._too_large(scope, receive, send, int(length))
                    return
            body = bytearray()
            while True:  # buffer the body (chunked uploads too) up to the limit
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body.extend(msg.get("body", b""))
                if len(body) > self.max_body:
                    await self._too_large(scope, receive, send, len(body))
                    return
                if not msg.get("more_body", False):
                    break
            sent = False

            async def replay() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            receive = replay
        no_csp = path.startswith(("/docs", "/redoc"))

        async def send_with_headers(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer")]
                if not no_csp:
                    extra.append((b"content-security-policy",
                                  (b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                   b"frame-ancestors 'none'")))
                msg = {**msg, "headers": list(msg.get("headers", [])) + extra}
            await send(msg)

        await self.app(scope, receive, send_with_headers)

    def _ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode("utf-8", "replace"), self.token)

    def _authorised(self, headers: dict[str, str], cookie_name: str) -> bool:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and self._ok(auth[7:].strip()):
            return True
        value = _cookie(headers, cookie_name)
        return value is not None and self._ok(value)

    async def _deny(self, scope, receive, send, why: str) -> None:
        resp = JSONResponse(
            {"detail": f"{why}: send 'Authorization: Bearer <token>', or open /?token=<token> once in the browser"},
            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="assay"'},
        )
        await resp(scope, receive, send)

    async def _too_large(self, scope, receive, send, n: int) -> None:
        await JSONResponse({"detail": f"request body of {n} bytes is over the limit of {self.max_body} bytes"}, 413)(
            scope, receive, send)


# ---------------------------------------------------------------------------------------------- helpers
def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1][:200]


def _answers(cat: Any, concept_id: int, item_ids: list[int] | None) -> dict[int, list[dict[str, Any]]]:
    """Latest answer per (item, annotator), from human/oracle/import labels, per item; times as ISO 8601."""
    out = cat.latest_answers(concept_id, item_ids)
    for ans in out.values():
        for a in ans:
            a["at"] = iso_utc(a["at"])
    return out


def _thumb_url(item: Any) -> str | None:
    """The thumbnail's URL; ``v`` follows the file's content, so a browser never shows a cached thumbnail of
    bytes that re-ingest has replaced."""
    if item.modality != "image":
        return None
    return f"/api/items/{item.id}/thumb?v={(item.sha256 or '')[:12]}"


def _item_view(item: Any, answers: list[dict[str, Any]]) -> dict[str, Any]:
    values = {a["value"] for a in answers}
    return {
        "id": item.id, "modality": item.modality, "name": _name(item.uri),
        "text": (item.text or "")[:500] if item.modality == "text" else None,
        "thumb": _thumb_url(item),
        "label": answers[-1]["value"] if answers else None,
        "answers": [{k: a[k] for k in ("annotator", "value", "source", "at")} for a in answers],
        "conflict": len(values) > 1,
    }


def _round_view(row: Any) -> dict[str, Any]:
    return {"round": row.number, "round_id": row.id, "strategy": row.strategy, "params": row.params,
            "encoder": row.encoder, "encoder_version": row.encoder_version, "proxy": row.proxy,
            "pool_size": row.pool_size, "scanned_fraction": row.scanned_fraction, "seconds": row.seconds,
            "created_at": iso_utc(row.created_at)}


# ---------------------------------------------------------------------------------------------- the app
def create_app(ws: Workspace, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app over ``ws``. Opens the catalog and creates the server's table."""
    cfg = config or ServerConfig()
    cat = ws.catalog
    cat.open()
    records.ensure_tables(cat.engine)
    proposer = _Proposer(ws, cfg.encoder)
    write_lock = threading.Lock()  # one writer at a time inside this process (the database serialises across processes)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        proposer.close()

    app = FastAPI(title="assay labelling API", version="1", lifespan=lifespan,
                  description="Concepts, rounds, proposed batches, labels, search and thumbnails of an assay workspace.")
    app.state.workspace = ws
    app.state.config = cfg
    app.state.proposer = proposer

    # ------------------------------------------------------------------ errors -> HTTP
    def _handler(status: int) -> Callable:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)
        return handle

    for exc_type, status in ((StaleRoundError, 409), (ConflictError, 409), (NotFoundError, 404), (InputError, 400),
                             (WorkspaceError, 409), (CatalogError, 503), (MissingDependencyError, 501)):
        app.add_exception_handler(exc_type, _handler(status))

    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input; a NaN or Infinity in the body (Python's json reads
        # them) would then make the 422 itself fail to serialise, a 500. Inputs are made JSON-safe here.
        return JSONResponse({"detail": _json_safe(exc.errors())}, status_code=422)

    app.add_exception_handler(RequestValidationError, _validation)

    def concept_of(name: str):
        return cat.concept(name)

    def round_of(concept: Any, number: int):
        rows = cat.rounds(concept.id)
        for r in rows:
            if r.number == number:
                return r, rows
        latest = rows[-1].number if rows else None
        raise NotFoundError(f"concept {concept.name!r} has no round {number}"
                            + (f"; the latest is {latest}" if latest else "; propose one first"))

    def batch_view(concept: Any, row: Any, latest: int) -> dict[str, Any]:
        props = cat.proposals(row.id)
        ids = [int(p["item_id"]) for p in props]
        items = {it.id: it for it in cat.get_many(ids)}
        answers = _answers(cat, concept.id, ids)
        skipped = records.skips(cat.engine, row.id)
        regions = region_proposals(ws, row.id) if (row.params or {}).get("regions") else {}
        out = []
        for p in props:
            it = items.get(int(p["item_id"]))
            if it is None:
                continue
            view = _item_view(it, answers.get(it.id, []))
            view.update(rank=p["rank"], score=p["score"], prelabel=p["prelabel"], reason=p["reason"],
                        skipped=it.id in skipped,
                        skipped_by=[{"annotator": k["annotator"], "at": iso_utc(k["at"])} for k in skipped.get(it.id, [])])
            reg = regions.get(it.id)
            view["region"] = ({"id": reg["region"], "slot": int(slot_of([reg["region"]])[0]), "box": reg["box"],
                               "image_size": reg["image_size"]} if reg and reg["box"] is not None else None)
            out.append(view)
        open_ = row.number > latest - cfg.open_rounds
        return {**_round_view(row), "concept": concept.name, "latest": latest, "open": open_, "items": out,
                "answered": sum(1 for v in out if v["label"] is not None or v["skipped"])}

    def default_params(concept: Any) -> dict[str, Any]:
        rows = cat.rounds(concept.id)
        p = rows[-1].params if rows else {}
        base_strategy = rows[-1].strategy if rows else cfg.strategy
        if base_strategy.startswith("cold-start("):
            base_strategy = base_strategy[len("cold-start("):-1]
        if base_strategy.startswith("regions("):
            base_strategy = base_strategy[len("regions("):-1]
        out = {"strategy": base_strategy or cfg.strategy, "batch": int(p.get("batch") or cfg.batch),
               "proxy": p.get("proxy") or cfg.proxy, "seals_k": int(p.get("seals_k") or cfg.seals_k)}
        if p.get("regions"):
            out["regions"] = True  # a concept mined with regions keeps being mined with regions
        return out

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ concepts
    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        return {"ok": True, "workspace": ws.root.name, "encoder": cfg.encoder or ws.default_encoder,
                "auth": cfg.token is not None, "max_labels": cfg.max_labels}

    @app.get("/api/concepts", tags=["concepts"])
    def list_concepts() -> dict[str, Any]:
        out = []
        for c in cat.concepts():
            ids, vals = cat.current_labels(c.id)
            rows = cat.rounds(c.id)
            out.append({"id": c.id, "name": c.name, "text": c.text, "exemplars": c.exemplars,
                        "labels": len(ids), "positives": int((vals == 1).sum()), "rounds": len(rows),
                        "latest_round": rows[-1].number if rows else None})
        return {"concepts": out}

    @app.post("/api/concepts", status_code=201, tags=["concepts"])
    def create_concept(body: ConceptIn) -> dict[str, Any]:
        if body.exemplars:
            from ..loop import check_exemplars

            check_exemplars(ws, body.exemplars, cfg.encoder)  # as `assay concept add` does
        with write_lock:
            c = cat.add_concept(body.name, text=body.text, exemplars=list(dict.fromkeys(body.exemplars)),
                                exemplar_annotator="exemplar")
        return {"id": c.id, "name": c.name, "text": c.text, "exemplars": c.exemplars}

    @app.get("/api/concepts/{name}", tags=["concepts"])
    def get_concept(name: ConceptPath) -> dict[str, Any]:
        c = concept_of(name)
        ids, vals = cat.current_labels(c.id)
        rows = cat.rounds(c.id)
        return {"id": c.id, "name": c.name, "text": c.text, "exemplars": c.exemplars, "labels": len(ids),
                "positives": int((vals == 1).sum()), "rounds": len(rows),
                "latest_round": rows[-1].number if rows else None, "proposer": proposer.status(c.id)}

    # ------------------------------------------------------------------ rounds
    @app.get("/api/concepts/{name}/rounds", tags=["rounds"])
    def list_rounds(name: ConceptPath) -> dict[str, Any]:
        c = concept_of(name)
        return {"concept": c.name, "rounds": [_round_view(r) for r in cat.rounds(c.id)]}

    @app.get("/api/concepts/{name}/rounds/latest", tags=["rounds"])
    def latest_round(name: ConceptPath) -> dict[str, Any]:
        c = concept_of(name)
        rows = cat.rounds(c.id)
        if not rows:
            raise NotFoundError(f"concept {c.name!r} has no rounds yet; propose one with POST /api/concepts/{c.name}/rounds")
        return batch_view(c, rows[-1], rows[-1].number)

    @app.get("/api/concepts/{name}/rounds/{number}", tags=["rounds"])
    def get_round(name: ConceptPath, number: Annotated[int, PathParam(ge=1, le=2**31 - 1)]) -> dict[str, Any]:
        c = concept_of(name)
        row, rows = round_of(c, number)
        return batch_view(c, row, rows[-1].number)

    @app.post("/api/concepts/{name}/rounds", status_code=202, tags=["rounds"])
    def propose(name: ConceptPath, body: Annotated[ProposeIn | None, Body()] = None) -> dict[str, Any]:
        from ..loop import PROXIES
        from ..select.strategies import get_strategy

        c = concept_of(name)
        params = default_params(c)
        if body is not None:
            params.update({k: v for k, v in body.model_dump().items() if v is not None})
        if params["proxy"] not in PROXIES:
            raise UnknownNameError("proxy", params["proxy"], PROXIES)
        get_strategy(params["strategy"])  # an unknown name fails now, listing the valid ones
        if params.get("regions") and region_spec_of(ws, cfg.encoder) is None:  # now, not in the background
            raise InputError("regions: true needs region vectors, and the workspace has none; run "
                             "`assay embed --regions grid:2,3` (or a dense spec) first")
        return proposer.start(c, params)

    @app.get("/api/concepts/{name}/proposer", tags=["rounds"])
    def proposer_status(name: ConceptPath,
                        wait: Annotated[float, Query(ge=0, le=30, description="Seconds to wait for a running job")] = 0
                        ) -> dict[str, Any]:
        c = concept_of(name)
        st = proposer.wait(c.id, wait)
        rows = cat.rounds(c.id)
        return {**st, "latest_round": rows[-1].number if rows else None}

    # ------------------------------------------------------------------ labels
    @app.post("/api/concepts/{name}/labels", tags=["labels"])
    def submit_labels(name: ConceptPath, body: SubmissionIn) -> dict[str, Any]:
        c = concept_of(name)
        row, rows = round_of(c, body.round)
        latest = rows[-1].number
        ids = [lab.item_id for lab in body.labels]
        payload = {"concept": c.id, "round": row.number, "annotator": body.annotator,
                   "labels": [[lab.item_id, lab.value] + ([lab.region_slot] if lab.region_slot is not None else [])
                              for lab in body.labels], "skipped": list(body.skipped)}
        digest = records.payload_digest(payload)
        batch = {int(p["item_id"]) for p in cat.proposals(row.id)}
        # A retry of a submission already recorded is answered from the record, whatever happened since (the
        # round went stale, the region store changed): the annotator's answers were saved.
        res = records.replay_of(cat.engine, submission_id=body.submission_id, concept_id=c.id, digest=digest)
        if res is None:
            if row.number <= latest - cfg.open_rounds:
                raise StaleRoundError(f"round {row.number} is stale: the latest round is {latest} and labels are taken "
                                      f"for rounds {max(1, latest - cfg.open_rounds + 1)}..{latest}; reload the batch")
            res = _write_submission(c, row, body, ids, batch, digest)
        # The batch is complete once every proposed item has an answer or a skip from someone.
        answered = set(_answers(cat, c.id, sorted(batch))) | records.skipped_items(cat.engine, row.id)
        complete = batch <= answered
        nxt = proposer.status(c.id)
        if complete and cfg.auto_propose and row.number == latest and not res["replayed"]:
            nxt = proposer.start(c, default_params(c), only_if_idle=True,
                                 still_wanted=lambda: cat.rounds(c.id)[-1].number == row.number)
        return {"concept": c.name, "round": row.number, "written": res["written"], "replayed": res["replayed"],
                "recorded": res["recorded"], "complete": complete, "remaining": len(batch - answered), "next": nxt}

    def _write_submission(c: Any, row: Any, body: SubmissionIn, ids: list[int], batch: set[int], digest: str) -> Any:
        if len(body.labels) + len(body.skipped) == 0:
            raise InputError("a submission needs at least one label or skipped item")
        if len(body.labels) > cfg.max_labels:
            raise InputError(f"at most {cfg.max_labels} labels per request, got {len(body.labels)}")
        every = ids + list(body.skipped)
        if len(set(every)) != len(every):
            seen: set[int] = set()
            dup = sorted({i for i in every if i in seen or seen.add(i)})
            raise InputError(f"each item may appear once per submission (in labels or skipped); repeated: {dup[:10]}")
        outside = [i for i in every if i not in batch]
        if outside:
            unknown = set(outside) - set(cat.get_ids_existing(outside))
            parts = [f"item ids {outside[:10]} are not in the batch of round {row.number}"]
            if unknown:
                parts.append(f"{sorted(unknown)[:10]} are not in the catalog at all")
            raise InputError("; ".join(parts))
        region_labels = [lab for lab in body.labels if lab.region_slot is not None]
        rids: list[int] = []
        if region_labels:
            rids = [int(r) for r in region_ids([lab.item_id for lab in region_labels], [lab.region_slot for lab in region_labels])]
            if not (row.params or {}).get("regions"):  # the body does not fit this round: 400, not a missing thing
                raise InputError(f"round {row.number} showed no regions, so its answers are for the images only; "
                                 "leave region_slot out")
            rstore = region_store(ws, cfg.encoder)
            known = rstore.contains(rids) if rstore.exists() else np.zeros(len(rids), bool)
            if not known.all():
                bad = [(lab.item_id, lab.region_slot) for lab, k in zip(region_labels, known) if not k]
                raise NotFoundError(f"(item, region slot) pairs {bad[:10]} are not embedded regions of this workspace")
            shown = (row.params or {}).get("regions")
            shown = shown if isinstance(shown, str) else None
            spec_now = region_spec_of(ws, cfg.encoder)
            current = None if spec_now is None else spec_now.key
            if shown is not None and current is not None and shown != current:
                raise StaleRoundError(
                    f"round {row.number} showed regions of spec {shown}, but the workspace's regions are now "
                    f"{current}: region slots no longer name the boxes that were shown; label the image, or "
                    "reload a new batch")
            # a region answer is about the box the round showed for that image, and no other
            showed = region_proposals(ws, row.id) if shown is not None else {}
            off = [(lab.item_id, lab.region_slot) for lab, r in zip(region_labels, rids)
                   if (showed.get(lab.item_id) or {}).get("region") != r]
            if off:
                raise InputError(
                    f"(item, region slot) pairs {off[:10]} are not the boxes round {row.number} showed (a region "
                    "answer names the slot of the box shown with the image); label the image instead")
        extra = []
        if region_labels:  # written with the submission, in its transaction: all of it or none
            vals = [lab.value for lab in region_labels]
            had_ids, had_vals = current_region_labels(ws, c.name, cfg.encoder)  # each region's current label (this spec)
            latest = dict(zip(had_ids.tolist(), had_vals.tolist()))
            keep = [k for k, (r, v) in enumerate(zip(rids, vals)) if latest.get(r) != v]  # repeats add no row
            extra = [(region_labels_table, region_label_rows(ws, c.id, [rids[k] for k in keep], [vals[k] for k in keep],
                                                             source="human", annotator=body.annotator,
                                                             encoder=cfg.encoder))]
        with write_lock:
            return records.record_submission(
                cat.engine, submission_id=body.submission_id, concept_id=c.id, round_id=row.id,
                annotator=body.annotator, digest=digest, item_ids=ids,
                values=[lab.value for lab in body.labels], skipped=body.skipped, extra_rows=extra)

    @app.get("/api/concepts/{name}/labels", tags=["labels"])
    def label_history(name: ConceptPath, item_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
                      limit: Annotated[int, Query(ge=1, le=5000)] = 500,
                      offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0) -> dict[str, Any]:
        c = concept_of(name)
        t = labels_table
        q = sa.select(t).where(t.c.concept_id == c.id).order_by(t.c.id).limit(limit).offset(offset)
        if item_id is not None:
            q = q.where(t.c.item_id == item_id)
        with cat.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        number = {r.id: r.number for r in cat.rounds(c.id)}
        for r in rows:
            r["created_at"] = iso_utc(r["created_at"])
            r["round"] = number.get(r["round_id"])  # the round's number (round_id is the catalog's row id)
        return {"concept": c.name, "labels": rows}

    @app.get("/api/concepts/{name}/conflicts", tags=["labels"])
    def conflicts(name: ConceptPath, limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> dict[str, Any]:
        c = concept_of(name)
        out = [{"item_id": x["item_id"], "current": x["current"],
                "answers": [{"annotator": a["annotator"], "value": a["value"], "source": a["source"],
                             "at": iso_utc(a["at"])} for a in x["answers"]]}
               for x in cat.label_conflicts(c.id)]
        return {"concept": c.name, "count": len(out), "conflicts": out[:limit]}

    @app.get("/api/concepts/{name}/progress", tags=["labels"])
    def progress(name: ConceptPath) -> dict[str, Any]:
        c = concept_of(name)
        return _progress(cat, c)

    # ------------------------------------------------------------------ search and items
    @app.get("/api/search", tags=["search"])
    def search(text: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
               item: Annotated[list[ItemId] | None,
                               Query(max_length=100, description="More like this item; several (?item=1&item=2): "
                                                                 "one query by all of them, their mean vector")] = None,
               k: Annotated[int, Query(ge=1, le=200)] = 24) -> dict[str, Any]:
        if (text is None) == (not item):
            raise InputError("give exactly one of ?text= or ?item=")
        if text is not None and not text.strip():
            raise InputError("the text query must not be blank")
        s = proposer.searcher()
        query_item: Any = None if not item else (item[0] if len(item) == 1 else item)
        hits = s.search(text=text, k=k) if text is not None else s.search(item=query_item, k=k)
        items = {it.id: it for it in cat.get_many([h.id for h in hits])}
        matched = s.text_matches([text]) if text is not None else None
        return {"query": {"text": text, "item": query_item, "k": k},
                **({"matched": matched[0]} if matched else {}),  # what the WordNet bridge read the text as
                "hits": [{**_item_view(items[h.id], []), "score": h.score} for h in hits if h.id in items]}

    @app.get("/api/items/{item_id}", tags=["items"])
    def get_item(item_id: Annotated[int, PathParam(ge=1, le=MAX_ID)]) -> dict[str, Any]:
        it = cat.get(item_id)
        return {"id": it.id, "modality": it.modality, "name": _name(it.uri), "width": it.width, "height": it.height,
                "format": it.format, "status": it.status, "text": (it.text or "")[:2000] if it.modality == "text" else None,
                "thumb": _thumb_url(it)}

    @app.get("/api/items/{item_id}/thumb", tags=["items"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def item_thumb(item_id: Annotated[int, PathParam(ge=1, le=MAX_ID)],
                   size: Annotated[int, Query(description=f"One of {list(THUMB_SIZES)}")] = DEFAULT_THUMB_SIZE):
        # looked up each time (one catalog row): re-ingest may have given the item new bytes, and the cache
        # file's name carries their hash
        path = thumbnail_path(ws, item_id, size)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    app.add_middleware(_Guard, token=cfg.token, max_body=cfg.max_body_bytes, check_host=cfg.check_host)
    return app


def _progress(cat: Any, c: Any) -> dict[str, Any]:
    """Per round: labels spent, positives found (cumulative), and how well the pre-labels predicted the answers."""
    t = labels_table
    with cat.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.id, t.c.item_id, t.c.value, t.c.round_id, t.c.annotator)
                            .where(t.c.concept_id == c.id).where(t.c.source.in_(_ANSWER_SOURCES)).order_by(t.c.id)).all()
    current: dict[int, int] = {}
    for r in rows:
        current[int(r.item_id)] = int(r.value)
    by_round: dict[int | None, list[Any]] = {}
    for r in rows:
        by_round.setdefault(None if r.round_id is None else int(r.round_id), []).append(r)
    rounds = cat.rounds(c.id)
    seen_items: set[int] = set()
    spent = 0

    def absorb(lst: list[Any]) -> None:
        nonlocal spent
        spent += len(lst)
        seen_items.update(int(r.item_id) for r in lst)

    absorb(by_round.get(None, []))
    curve = [{"round": 0, "labels_spent": spent, "labelled_items": len(seen_items),
              "positives_found": sum(1 for i in seen_items if current.get(i) == 1)}]
    out_rounds = []
    for rr in rounds:
        lst = by_round.get(rr.id, [])
        absorb(lst)
        props = cat.proposals(rr.id)
        answered = [(p["prelabel"], current[int(p["item_id"])]) for p in props if int(p["item_id"]) in current]
        with_pre = [(float(pl), y) for pl, y in answered if pl is not None]
        quality = None
        if with_pre:
            p = np.asarray([a for a, _ in with_pre])  # [m] pre-label P(positive)
            y = np.asarray([b for _, b in with_pre], dtype=np.float64)  # [m] the answers
            quality = {"n": len(with_pre), "accuracy": float(((p >= 0.5) == (y == 1)).mean()),
                       "brier": float(((p - y) ** 2).mean())}
        hits = sum(1 for _, y in answered if y == 1)
        out_rounds.append({
            "round": rr.number, "strategy": rr.strategy, "proposed": len(props), "answered": len(answered),
            "positives": hits, "hit_rate": hits / len(answered) if answered else None,
            "prelabel_quality": quality, "proxy": rr.proxy, "pool_size": rr.pool_size,
            "seconds": rr.seconds.get("total"),
        })
        curve.append({"round": rr.number, "labels_spent": spent, "labelled_items": len(seen_items),
                      "positives_found": sum(1 for i in seen_items if current.get(i) == 1)})
    annotators = sorted({r.annotator for r in rows if r.annotator})
    latest_q = next((r["prelabel_quality"] for r in reversed(out_rounds) if r["prelabel_quality"]), None)
    return {"concept": c.name, "labels_spent": len(rows), "labelled_items": len(current),
            "positives_found": sum(1 for v in current.values() if v == 1), "annotators": annotators,
            "quality_estimate": latest_q, "rounds": out_rounds, "curve": curve}


# ---------------------------------------------------------------------------------------------- running
class ServerThread:
    """Run an app under uvicorn on a background thread (tests, benchmarks): ``with ServerThread(app) as url: ...``.

    ``port=0`` picks a free port; :attr:`url` holds the address once started.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.url: str | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 20.0) -> str:
        import uvicorn

        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning", lifespan="on",
                                access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="assay-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=20)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
