"""Embedding on a Ray cluster: encoder actors do the work, the driver commits it, resumable.

How a run goes:

1. The driver takes the store's writer lock (one run per store), lists the workspace's ok items that have
   no committed vector for the encoder (the same rule as :func:`assay.embed.embed`, so a rerun after any
   crash picks up exactly the rest), and cuts them into tasks of ``task_size`` items. It reads each task's
   rows (id, uri, modality, text) from the catalog itself, so workers never talk to the database.
2. ``num_actors`` encoder actors (``num_gpus=1`` each when the cluster has GPUs) load the encoder once and
   run each task with the code of :mod:`assay.embed`: :func:`assay.embed._decode_one` in a decode thread
   pool, then :func:`assay.embed._run_batch` (which bisects a failing batch down to the bad item) or
   :func:`assay.embed._text_batch`. They return ids, vectors, extras and per-item errors.
3. The driver commits every task result as soon as it arrives, through
   :class:`assay.embed._ShardWriter`: one durable vector-store shard, then the task's bad items marked
   ``error`` in the catalog. A task is acknowledged when its shard is committed.

Faults:

* a worker (actor) that dies mid-task (OOM kill, segfault, node loss) is restarted by Ray; the driver
  resubmits its unacknowledged tasks, up to ``max_attempts`` times each, then splits the task in halves
  (so one poisonous item cannot sink its neighbours) and finally marks a single item that still kills
  its worker as ``error``;
* a driver killed or interrupted mid-run loses only the results not committed yet; the next run skips
  every committed id and embeds the rest;
* a bad item (cannot be read or decoded, inference fails, NaN output) is recorded on the item, exactly as
  the local path does, and never stops the run.

Ray is an optional dependency (``pip install 'assay[ray]'``), imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..catalog import ItemRow
from ..embed import EmbedReport, _decode_one, _run_batch, _ShardWriter, _text_batch, load_encoder
from ..encoders.base import Encoder, draft_size, get_encoder
from ..errors import ClusterUnavailableError, DecodeError, EncoderError, InputError, require

__all__ = ["embed_with_ray"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _ray_session(address: str | None, **init_kwargs: Any) -> Iterator[Any]:
    """The ray module, connected: to the running session, to ``address``, or to a new local cluster.

    A session started here is shut down on exit; one that was running already is left alone.
    """
    ray = require("ray", "ray", "distributed embedding and index building")
    if ray.is_initialized():
        yield ray
        return
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **init_kwargs)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise ClusterUnavailableError(f"cannot connect to the Ray cluster at {address!r}: {exc}".strip()) from exc
    else:
        ray.init(include_dashboard=False, **init_kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


#: Seconds to wait for a Ray address to accept a connection before giving up (Ray itself waits minutes).
CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str) -> None:
    """Fail fast, with one line, when ``host:port`` (or ``ray://host:port``) does not accept connections."""
    import socket

    hostport = address.split("://", 1)[1] if "://" in address else address
    if address == "auto" or ":" not in hostport:
        return  # "auto" finds a local cluster itself (and fails at once when there is none)
    host, _, port = hostport.rstrip("/").rpartition(":")
    try:
        port_no = int(port)
    except ValueError:
        raise InputError(f"Ray address must be host:port, ray://host:port or auto, got {address!r}") from None
    try:
        conn = socket.create_connection((host.strip("[]"), port_no), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise ClusterUnavailableError(
            f"cannot connect to the Ray cluster at {address!r}: {exc} (is `ray start --head` running there?)"
        ) from None
    # Something answers. Ray's head (GCS) and its client server speak gRPC, over HTTP/2; anything else (a web
    # server, a database) accepts the connection and ray.init then waits for minutes. An HTTP/2 server answers
    # the client preface with a SETTINGS frame. (With TLS, RAY_USE_TLS, the plain preface proves nothing.)
    with conn:
        if os.environ.get("RAY_USE_TLS", "").strip().lower() in ("1", "true", "yes"):
            return
        speaks = _speaks_http2(conn, CONNECT_TIMEOUT_S)
    if not speaks:
        raise ClusterUnavailableError(
            f"{address!r} accepts connections but does not answer as a Ray cluster (gRPC) within "
            f"{CONNECT_TIMEOUT_S:g} s: is it the Ray head's port (6379 by default, or ray://host:10001 for Ray "
            "Client)?"
        )


#: The HTTP/2 client connection preface, then an empty SETTINGS frame (RFC 9113, section 3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _speaks_http2(conn: Any, timeout: float) -> bool:
    """Whether the server on the connected socket ``conn`` answers an HTTP/2 preface with a frame header of
    type SETTINGS."""
    head = b""
    try:
        conn.settimeout(timeout)
        conn.sendall(_H2_PREFACE)
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:  # reset or timed out meanwhile
        return False
    return len(head) == 9 and head[3] == 0x04


class _Collector:
    """What an actor hands back for one task: the ``add``/``error`` interface of ``_ShardWriter``."""

    def __init__(self) -> None:
        self.ids: list[np.ndarray] = []
        self.vecs: list[np.ndarray] = []
        self.extras: dict[str, list[np.ndarray]] = {}
        self.errors: list[tuple[int, str]] = []

    def add(self, ids: np.ndarray, vecs: np.ndarray, extras: dict[str, np.ndarray]) -> None:
        self.ids.append(np.asarray(ids, dtype=np.int64))
        self.vecs.append(np.asarray(vecs, dtype=np.float32))
        for name, arr in extras.items():
            self.extras.setdefault(name, []).append(np.asarray(arr, dtype=np.float32))

    def error(self, item_id: int, reason: str) -> None:
        self.errors.append((int(item_id), reason))

    def result(self, dim: int) -> dict[str, Any]:
        return {
            "ids": np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64),
            "vecs": np.concatenate(self.vecs) if self.vecs else np.zeros((0, dim), np.float32),
            "extras": {k: np.concatenate(v) for k, v in self.extras.items()},
            "errors": self.errors,
        }


class _EmbedWorker:
    """The body of an encoder actor: load once, then embed task after task."""

    def __init__(self, encoder: str | Encoder, batch_size: int, decode_threads: int, cpus: float | None = None) -> None:
        if isinstance(encoder, str):
            encoder = get_encoder(encoder)
            # inference threads = the CPUs Ray gave this actor (not every core of the node: actors share it)
            if cpus and getattr(encoder, "num_threads", "unset") is None:
                encoder.num_threads = max(1, int(round(cpus)))
        self.enc = load_encoder(encoder)
        self.batch_size = batch_size
        self.decode_threads = decode_threads
        self.draft = draft_size(self.enc)

    def embed(self, items: list[ItemRow]) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        out = _Collector()
        images = [it for it in items if it.modality == "image"]
        texts = [it for it in items if it.modality == "text"]
        if images:
            with ThreadPoolExecutor(max_workers=self.decode_threads, thread_name_prefix="assay-decode") as pool:
                decoded = list(pool.map(lambda it: _decode_one(self.enc, it, self.draft), images))
            ok_ids: list[int] = []
            arrays: list[np.ndarray] = []
            for it, res in zip(images, decoded):
                if isinstance(res, DecodeError):
                    out.error(it.id, str(res))
                    continue
                ok_ids.append(it.id)
                arrays.append(res)
                if len(ok_ids) >= self.batch_size:
                    _run_batch(self.enc, ok_ids, arrays, out)
                    ok_ids, arrays = [], []
            if ok_ids:
                _run_batch(self.enc, ok_ids, arrays, out)
        for start in range(0, len(texts), self.batch_size):
            _text_batch(self.enc, texts[start : start + self.batch_size], out)
        return out.result(self.enc.dim)

    def ready(self) -> str:
        return self.enc.name


def _check_pos_int(name: str, v: Any, *, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise InputError(f"{name} must be a positive integer, got {v!r}")


def embed_with_ray(
    ws: Any,
    encoder: str | Encoder | None = None,
    *,
    address: str | None = None,
    num_actors: int | None = None,
    num_gpus_per_actor: float | None = None,
    num_cpus_per_actor: float = 1.0,
    batch_size: int = 64,
    task_size: int = 1024,
    decode_threads: int = 4,
    tasks_in_flight: int = 2,
    max_attempts: int = 3,
    limit: int | None = None,
    reset: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> EmbedReport:
    """Embed every ok item of ``ws`` that ``encoder`` has not embedded yet, on a Ray cluster.

    Parameters
    ----------
    ws : Workspace
    encoder : name or Encoder, optional
        Default: the workspace's. An Encoder instance is pickled to the actors (its class must be
        importable there); a name is resolved on each actor.
    address : str, optional
        The Ray cluster (``ray://host:10001`` or ``host:6379``); default: the session already initialised
        in this process, else a new local cluster (shut down at the end).
    num_actors : int, optional
        Encoder actors. Default: the cluster's GPU count when it has GPUs, else its CPU count divided by
        ``num_cpus_per_actor``.
    num_gpus_per_actor : float, optional
        Default 1 when the cluster has GPUs, else 0.
    num_cpus_per_actor : float
        CPUs reserved per actor.
    batch_size : int
        Items per inference call.
    task_size : int
        Items per task, which is also the rows per committed shard: the most work a crash can repeat.
    decode_threads : int
        Decode threads inside each actor.
    tasks_in_flight : int
        Tasks queued per actor (2 keeps an actor busy while the driver commits).
    max_attempts : int
        Runs of a task whose worker died before it is split (and, at one item, marked ``error``).
    limit : int, optional
        Embed at most this many items.
    reset : bool
        Drop the encoder's stored embeddings first.
    progress : callable, optional
        Called with the number of items finished after each committed task.
    on_start : callable, optional
        Called once with the number of pending items.

    Returns
    -------
    EmbedReport
        As :func:`assay.embed.embed`; ``shards`` counts committed tasks.
    """
    for name, v in (("batch_size", batch_size), ("task_size", task_size), ("decode_threads", decode_threads),
                    ("tasks_in_flight", tasks_in_flight), ("max_attempts", max_attempts)):
        _check_pos_int(name, v)
    _check_pos_int("num_actors", num_actors, allow_none=True)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InputError(f"limit must be a non-negative integer, got {limit!r}")
    if num_gpus_per_actor is not None and num_gpus_per_actor < 0:
        raise InputError(f"num_gpus_per_actor must be >= 0, got {num_gpus_per_actor!r}")
    t0 = time.perf_counter()
    enc_spec: str | Encoder = encoder or ws.default_encoder
    # Built here, loaded on the actors: the actors get this very object (class and parameters), so an encoder
    # registered in the driver's process need not be registered on the workers.
    meta_enc = get_encoder(enc_spec) if isinstance(enc_spec, str) else enc_spec
    ws.apply_changes()  # embeddings of items whose bytes changed since are dropped, so they are embedded again
    store = ws.vectors(meta_enc.name)
    report = EmbedReport(encoder=meta_enc.name, version=meta_enc.version, dim=meta_enc.dim)
    with store:
        if reset:
            store.reset()
        store.create(encoder=meta_enc.name, version=meta_enc.version, dim=meta_enc.dim,
                     extras=dict(getattr(meta_enc, "extras_spec", {})))
        pending_parts = []
        for m in (m for m in ("image", "text") if m in meta_enc.modalities):
            ids = ws.catalog.ids(status="ok", modality=m)
            pending_parts.append(ids[~store.contains(ids)] if len(ids) else ids)
        pending = np.concatenate(pending_parts) if pending_parts else np.zeros(0, np.int64)
        if limit is not None:
            pending = pending[:limit]
        report.pending = len(pending)
        if on_start is not None:
            on_start(report.pending)
        if report.pending:
            tasks = [pending[s : s + task_size] for s in range(0, len(pending), task_size)]
            writer = _ShardWriter(ws, store, shard_size=1 << 62, report=report)  # committed per task, by hand
            with _ray_session(address) as ray:
                _drive(ray, ws, meta_enc, tasks, writer, num_actors=num_actors, num_gpus=num_gpus_per_actor,
                       num_cpus=num_cpus_per_actor, batch_size=batch_size, decode_threads=decode_threads,
                       in_flight=tasks_in_flight, max_attempts=max_attempts, progress=progress)
        report.total_embedded = len(store)
    report.seconds = time.perf_counter() - t0
    return report


#: Waits for a restarting actor before a task sent to it counts as failed (``MAX * WAIT_S`` = 2 minutes).
UNAVAILABLE_WAIT_S = 0.5
MAX_UNAVAILABLE_WAITS = 240


def _drive(
    ray: Any, ws: Any, enc_spec: str | Encoder, tasks: list[np.ndarray], writer: _ShardWriter, *,
    num_actors: int | None, num_gpus: float | None, num_cpus: float, batch_size: int, decode_threads: int,
    in_flight: int, max_attempts: int, progress: Callable[[int], None] | None,
) -> None:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

    died = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    if num_gpus is None:
        num_gpus = 1.0 if gpus > 0 else 0.0
    if num_actors is None:
        if num_gpus > 0:
            num_actors = max(1, int(gpus // num_gpus))
        else:
            num_actors = max(1, int(float(resources.get("CPU", 1.0)) // max(num_cpus, 1e-9)))
    num_actors = min(num_actors, len(tasks))
    Actor = ray.remote(_EmbedWorker).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=-1, max_task_retries=0,
    )
    actors = [Actor.remote(enc_spec, batch_size, decode_threads, None if num_gpus else num_cpus)
              for _ in range(num_actors)]
    try:
        ray.get([a.ready.remote() for a in actors])
    except Exception as exc:  # the encoder cannot load on the workers: nothing to retry
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EncoderError(f"the encoder could not be loaded on the Ray workers: {cause}") from exc
    queue: list[tuple[np.ndarray, int]] = [(t, 0) for t in reversed(tasks)]  # (ids, attempts), popped from the end
    running: dict[Any, tuple[int, np.ndarray, int]] = {}  # ref -> (actor no, ids, attempts)
    load = [0] * num_actors
    unavailable_waits = 0

    alone = [False] * num_actors  # the actor runs a retried task and nothing beside it

    def submit() -> None:
        # A task that failed before runs alone on its actor: if the actor dies again, that task is the
        # cause, and no innocent task running beside it is charged an attempt (and split towards errors).
        while queue:
            ids, attempts = queue[-1]
            free = [j for j in range(num_actors) if not alone[j] and load[j] < (1 if attempts else in_flight)]
            if attempts:
                free = [j for j in free if load[j] == 0]
            if not free:
                return
            k = min(free, key=lambda j: load[j])
            queue.pop()
            items = ws.catalog.get_many(ids)
            running[actors[k].embed.remote(items)] = (k, ids, attempts)
            load[k] += 1
            alone[k] = attempts > 0

    try:
        submit()
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            k, ids, attempts = running.pop(ref)
            load[k] -= 1
            alone[k] = False
            try:
                res = ray.get(ref)
            except ActorUnavailableError as exc:
                # The actor is restarting after a death already counted against the task that caused it:
                # wait for it and send this task again, without counting an attempt (bounded, in case
                # the actor never comes back). On a busy machine a restart takes seconds.
                unavailable_waits += 1
                if unavailable_waits > MAX_UNAVAILABLE_WAITS:
                    _retry_or_fail(queue, writer, ids, attempts + 1, max_attempts, exc)
                else:
                    time.sleep(UNAVAILABLE_WAIT_S)
                    queue.append((ids, attempts))
                submit()
                continue
            except died as exc:
                _retry_or_fail(queue, writer, ids, attempts + 1, max_attempts, exc)
                submit()
                continue
            writer.add(res["ids"], res["vecs"], res["extras"])
            for item_id, reason in res["errors"]:
                writer.error(item_id, reason)
            writer.commit()  # the task is acknowledged once this returns
            submit()
            if progress is not None:
                progress(len(ids))
        writer.commit()  # errors of items that kept killing their worker
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)


def _retry_or_fail(
    queue: list[tuple[np.ndarray, int]], writer: _ShardWriter, ids: np.ndarray, attempts: int, max_attempts: int,
    exc: BaseException,
) -> None:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if attempts < max_attempts:
        log.warning("a Ray worker died while embedding %d items (attempt %d of %d), retrying: %s",
                    len(ids), attempts, max_attempts, first_line)
        queue.append((ids, attempts))
    elif len(ids) > 1:
        half = len(ids) // 2
        log.warning("a Ray worker died %d times on a task of %d items; splitting it", attempts, len(ids))
        queue.append((ids[half:], 0))
        queue.append((ids[:half], 0))
    else:
        writer.error(int(ids[0]), f"the embedding worker died {attempts} times on this item: {type(exc).__name__}")
