"""A sharded IVF-PQ index: one trained codebook, ``n_shards`` shards filled in parallel, searched together.

Why shards: at a billion vectors one IVF-PQ file is too large to build on one machine in reasonable time
and too large to rebuild when a part changes. Here the coarse quantizer and the product-quantizer
codebooks are trained **once**, on a sample, and every shard is a copy of that trained, empty index filled
with its own rows (``add_with_ids``, global int64 item ids). Because the codebook is shared, a vector gets
the same list and the same code in whichever shard it lands, so the union of the shards answers exactly
what one IVF-PQ index with that codebook would (up to the order of exact ties).

Building runs one task per shard: Ray tasks when ``use_ray=True`` (each task reads its rows from the
vector store's float16 shard files, memory-mapped, so only file names travel; the index folder must be on
a filesystem that every node sees), else a local thread pool (FAISS releases the GIL; each thread gets
``cpus / workers`` OpenMP threads).

On disk, ``<directory>/``::

    codebook-<token>.faiss      the trained, empty IVF-PQ index
    shard-<k>-<token>.faiss     shard k, written to a temporary name, fsynced and renamed
    sharded.json                the commit point, written last: spec, dim, counts, files, bytes

:meth:`ShardedIndex.load` memory-maps every shard (``IO_FLAG_MMAP_IFC``, read-only; codes and inverted
lists stay on disk until touched) and joins them in a ``faiss.IndexShards`` (``successive_ids=False``:
each shard keeps the global ids it was given), which searches the shards in parallel threads and merges
their top-k.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IndexNotBuiltError, InputError, WorkspaceError
from ..index import ConcatRows, IndexSpec, _as_rows, _check_block, _f32, _new_trained_index, make_spec

__all__ = ["ShardedIndex", "build_sharded_index", "build_workspace_sharded_index", "train_codebook"]

_META = "sharded.json"
_FORMAT = "assay.sharded_ivfpq"
_BLOCK = 65_536  # rows converted to float32 and added at a time


def _faiss():
    import faiss

    return faiss


# ---------------------------------------------------------------------------------------------- training
def train_codebook(vectors: Any, *, spec: IndexSpec | None = None, rng: np.random.Generator | int = 0) -> bytes:
    """Train an empty IVF-PQ index on a sample of ``vectors`` ``[n, dim]`` and return it serialised.

    ``spec`` (kind ``ivf-pq``) defaults to :func:`assay.index.make_spec` for ``n`` and ``dim``; its
    ``train_size`` bounds the sample. The result is what every shard starts from.
    """
    rows = _as_rows(vectors)
    n, dim = int(rows.shape[0]), int(rows.shape[1])
    spec = _check_spec(spec, n, dim)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    faiss = _faiss()
    index, _ = _new_trained_index(faiss, spec, dim, rows, n, gen)
    return bytes(faiss.serialize_index(index))


def _check_spec(spec: IndexSpec | None, n: int, dim: int) -> IndexSpec:
    if spec is None:
        return make_spec("ivf-pq", n, dim)
    if not isinstance(spec, IndexSpec) or spec.kind != "ivf-pq":
        raise InputError(f"a sharded index needs an IndexSpec of kind 'ivf-pq', got {spec!r}")
    return spec


# ---------------------------------------------------------------------------------------------- filling shards
@dataclass(frozen=True)
class _Part:
    """Rows of one index shard: vector-store shard files (``files``) or arrays held in memory."""

    files: tuple[tuple[str, str], ...] = ()  # (ids .npy, vectors .npy) pairs, read memory-mapped
    ids: np.ndarray | None = None
    vectors: Any = None

    @property
    def rows(self) -> int:
        if self.ids is not None:
            return len(self.ids)
        return int(sum(np.load(i, mmap_mode="r").shape[0] for i, _ in self.files))

    def blocks(self):
        if self.ids is not None:
            for start in range(0, len(self.ids), _BLOCK):
                yield self.ids[start : start + _BLOCK], self.vectors[start : start + _BLOCK]
            return
        for ids_path, vec_path in self.files:
            ids = np.load(ids_path)
            vecs = np.load(vec_path, mmap_mode="r")
            for start in range(0, len(ids), _BLOCK):
                yield ids[start : start + _BLOCK], vecs[start : start + _BLOCK]


def _fill_shard(codebook: bytes, part: _Part, out_path: str, omp_threads: int | None = None) -> int:
    """Add ``part``'s rows to a copy of the trained index and write it durably to ``out_path``."""
    faiss = _faiss()
    if omp_threads:
        faiss.omp_set_num_threads(int(omp_threads))
    index = faiss.deserialize_index(np.frombuffer(codebook, dtype=np.uint8))
    for ids, block in part.blocks():
        x = _f32(block)  # [b, dim]
        _check_block(x, 0)
        index.add_with_ids(x, np.ascontiguousarray(ids, dtype=np.int64))
    tmp = out_path + ".tmp"
    faiss.write_index(index, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    return int(index.ntotal)


def _split_arrays(ids: np.ndarray, rows: Any, n_shards: int) -> list[_Part]:
    bounds = np.linspace(0, len(ids), n_shards + 1).astype(np.int64)
    return [_Part(ids=ids[a:b], vectors=rows[a:b]) for a, b in itertools.pairwise(bounds)]


def _split_files(files: Sequence[tuple[str, str, int]], n_shards: int) -> list[_Part]:
    """Assign store shards to index shards, largest first to the emptiest (balanced rows)."""
    bins: list[list[tuple[str, str]]] = [[] for _ in range(n_shards)]
    load = [0] * n_shards
    for ids_path, vec_path, rows in sorted(files, key=lambda f: -f[2]):
        k = int(np.argmin(load))
        bins[k].append((ids_path, vec_path))
        load[k] += rows
    return [_Part(files=tuple(sorted(b))) for b in bins if b]


def _run_parts(
    codebook: bytes, parts: list[_Part], directory: Path, token: str, *, use_ray: bool, address: str | None,
    workers: int | None, progress: Callable[[int], None] | None,
) -> list[tuple[str, int]]:
    names = [f"shard-{k:04d}-{token}.faiss" for k in range(len(parts))]
    paths = [str(directory / nm) for nm in names]
    counts: list[int] = [0] * len(parts)
    if use_ray:
        from .ray_embed import _ray_session

        with _ray_session(address) as ray:
            fill = ray.remote(num_cpus=1, max_retries=3)(_fill_shard)
            cb_ref = ray.put(codebook)
            refs = [fill.remote(cb_ref, p if p.ids is None else _Part(ids=p.ids, vectors=np.asarray(p.vectors)), path, 1)
                    for p, path in zip(parts, paths)]
            pending = {r: k for k, r in enumerate(refs)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                k = pending.pop(done[0])
                counts[k] = int(ray.get(done[0]))
                if progress is not None:
                    progress(counts[k])
    else:
        cpus = os.cpu_count() or 1
        workers = max(1, min(workers or cpus, len(parts)))
        omp = max(1, cpus // workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="assay-shard") as pool:
            futs = {pool.submit(_fill_shard, codebook, p, path, omp): k for k, (p, path) in enumerate(zip(parts, paths))}
            for fut, k in futs.items():
                counts[k] = fut.result()
                if progress is not None:
                    progress(counts[k])
    return list(zip(names, counts))


def _commit(
    directory: Path, token: str, spec: IndexSpec, dim: int, codebook: bytes, shards: list[tuple[str, int]],
    extra_meta: dict[str, Any], seconds: dict[str, float],
) -> None:
    cb_name = f"codebook-{token}.faiss"
    tmp = directory / (cb_name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(codebook)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / cb_name)
    count = sum(c for _, c in shards)
    file_bytes = sum((directory / nm).stat().st_size for nm, _ in shards)
    p = spec.params
    meta = {
        "format": _FORMAT, "format_version": 1, "spec": spec.to_dict(), "dim": dim, "count": count,
        "codebook": cb_name, "shards": [{"file": nm, "count": c} for nm, c in shards],
        "code_bytes_per_vector": (p["m"] * p["nbits"] + 7) // 8,
        "file_bytes_per_vector": file_bytes / count if count else 0.0,
        "file_bytes": file_bytes, "seconds": seconds,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra_meta,
    }
    old = _read_meta(directory) if (directory / _META).exists() else None
    tmp = directory / (_META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / _META)
    if old is not None:  # the previous build's files; a reader that mapped them keeps its (unlinked) copy
        for name in [old["codebook"]] + [s["file"] for s in old["shards"]]:
            if name not in {cb_name, *(nm for nm, _ in shards)}:
                (directory / name).unlink(missing_ok=True)


def _check_shards(n_shards: Any, n: int) -> int:
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards <= 0:
        raise InputError(f"n_shards must be a positive integer, got {n_shards!r}")
    if n < n_shards:
        raise InputError(f"n_shards={n_shards} is more than the {n} vectors to index")
    return int(n_shards)


def build_sharded_index(
    ids: Any, vectors: Any, directory: str | os.PathLike[str], *, n_shards: int = 4, spec: IndexSpec | None = None,
    codebook: bytes | None = None, rng: np.random.Generator | int = 0, use_ray: bool = False,
    address: str | None = None, workers: int | None = None, progress: Callable[[int], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> ShardedIndex:
    """Build a sharded IVF-PQ index of ``vectors`` ``[n, dim]`` (L2-normalised) with global ``ids`` ``[n]``.

    Parameters
    ----------
    ids : int64 [n]
        Unique item ids; search returns them.
    vectors : array-like [n, dim]
        float16/float32 rows (ndarray, memmap or :class:`assay.index.ConcatRows`); split into ``n_shards``
        contiguous parts.
    directory : path
        Where the shards and ``sharded.json`` go (created; a previous build there is replaced atomically).
    n_shards : int
        Number of shards (tasks).
    spec : IndexSpec, optional
        ``ivf-pq`` parameters (default :func:`assay.index.make_spec` for ``n``, ``dim``).
    codebook : bytes, optional
        A trained empty index from :func:`train_codebook`; trained here from ``vectors`` when absent.
    use_ray, address : bool, str
        Fill the shards as Ray tasks (on the cluster at ``address``, or the running/local one).
    workers : int, optional
        Local threads (default: the CPU count), when not on Ray.
    progress : callable, optional
        Called with a shard's row count as each shard finishes.
    """
    t0 = time.perf_counter()
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InputError(f"ids must be a 1-D integer array, got dtype {ids.dtype} and shape {ids.shape}")
    ids = ids.astype(np.int64)
    rows = _as_rows(vectors)
    if len(ids) != rows.shape[0]:
        raise InputError(f"{len(ids)} ids but {rows.shape[0]} vectors")
    if len(np.unique(ids)) != len(ids):
        raise InputError("ids must be unique")
    n, dim = int(rows.shape[0]), int(rows.shape[1])
    n_shards = _check_shards(n_shards, n)
    spec = _check_spec(spec, n, dim)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if codebook is None:
        codebook = train_codebook(rows, spec=spec, rng=rng)
    t_train = time.perf_counter() - t0
    token = uuid.uuid4().hex[:10]
    t1 = time.perf_counter()
    shards = _run_parts(codebook, _split_arrays(ids, rows, n_shards), directory, token, use_ray=use_ray,
                        address=address, workers=workers, progress=progress)
    secs = {"train": round(t_train, 3), "add": round(time.perf_counter() - t1, 3)}
    _commit(directory, token, spec, dim, codebook, shards, {"metadata": metadata or {}, "engine": "ray" if use_ray else "threads"}, secs)
    return ShardedIndex.load(directory)


def build_workspace_sharded_index(
    ws: Any, encoder: str | None = None, *, n_shards: int = 4, spec: IndexSpec | None = None,
    rng: np.random.Generator | int = 0, use_ray: bool = False, address: str | None = None,
    workers: int | None = None, directory: str | os.PathLike[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ShardedIndex:
    """Build the sharded IVF-PQ index of a workspace's embeddings (encoder default: the workspace's).

    Rows are read straight from the vector store's float16 shard files, memory-mapped; each index shard
    gets whole store shards, balanced by row count (so ``n_shards`` is at most the number of store shards).
    The index goes to ``<workspace>/index/<encoder>/sharded`` unless ``directory`` is given.
    """
    t0 = time.perf_counter()
    store = ws.vectors(encoder)
    if not store.exists():
        from ..errors import NoEmbeddingsError

        raise NoEmbeddingsError(f"no embeddings at {store.root}; run `assay embed` first")
    meta = store.meta()
    store_shards = [s for s in store.shards() if s.rows > 0]
    n = sum(s.rows for s in store_shards)
    dim = int(meta["dim"])
    n_shards = _check_shards(n_shards, n)
    n_shards = min(n_shards, len(store_shards))
    spec = _check_spec(spec, n, dim)
    rows = ConcatRows([s.vectors() for s in store_shards])
    codebook = train_codebook(rows, spec=spec, rng=rng)
    t_train = time.perf_counter() - t0
    files = [(str(s.path.with_name(s.path.name[:-4] + ".ids.npy")), str(s.path), s.rows) for s in store_shards]
    out = Path(directory) if directory is not None else ws.index_dir(meta["encoder"]) / "sharded"
    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:10]
    t1 = time.perf_counter()
    shards = _run_parts(codebook, _split_files(files, n_shards), out, token, use_ray=use_ray, address=address,
                        workers=workers, progress=progress)
    secs = {"train": round(t_train, 3), "add": round(time.perf_counter() - t1, 3)}
    extra = {"encoder": meta["encoder"], "encoder_version": meta["version"], "engine": "ray" if use_ray else "threads",
             "metadata": {}}
    _commit(out, token, spec, dim, codebook, shards, extra, secs)
    return ShardedIndex.load(out)


# ---------------------------------------------------------------------------------------------- reading
def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / _META
    if not path.exists():
        raise IndexNotBuiltError(f"no sharded index in {directory}; build one with `assay index --sharded`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WorkspaceError(f"{path} is unreadable: {exc}") from exc
    if meta.get("format") != _FORMAT:
        raise WorkspaceError(f"{path} is not a sharded IVF-PQ index (format {meta.get('format')!r})")
    return meta


class ShardedIndex:
    """IVF-PQ shards searched together. Use :meth:`load` (or the build functions) to get one.

    Attributes
    ----------
    directory : Path
    spec : IndexSpec
    dim, ntotal, n_shards : int
    load_mode : "mmap" or "read"
    """

    def __init__(self, directory: Path, meta: dict[str, Any], shards: list[Any], load_mode: str) -> None:
        faiss = _faiss()
        self.directory = directory
        self.meta = meta
        self.spec = IndexSpec.from_dict(meta["spec"])
        self.dim = int(meta["dim"])
        self.load_mode = load_mode
        self._shards = shards  # keep the Python objects alive: IndexShards does not own them
        self._joined = faiss.IndexShards(self.dim, True, False)
        for s in shards:
            self._joined.add_shard(s)
        self._ivfs = [faiss.extract_index_ivf(s) for s in shards]
        self.nprobe = int(self.spec.params["nprobe"])

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = True) -> ShardedIndex:
        """Open the index in ``directory``, memory-mapping the shards where FAISS allows."""
        directory = Path(directory)
        meta = _read_meta(directory)
        faiss = _faiss()
        shards, mode = [], "mmap" if mmap else "read"
        for s in meta["shards"]:
            path = str(directory / s["file"])
            index = None
            if mmap:
                try:
                    index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
                except RuntimeError:
                    index, mode = None, "read"
            if index is None:
                try:
                    index = faiss.read_index(path)
                except RuntimeError as exc:
                    raise WorkspaceError(f"cannot read index shard {path}: {exc}") from exc
            if int(index.ntotal) != int(s["count"]):
                raise WorkspaceError(f"{path} holds {index.ntotal} vectors, {_META} says {s['count']}: rebuild the index")
            shards.append(index)
        return cls(directory, meta, shards, mode)

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self._shards))

    def __len__(self) -> int:
        return self.ntotal

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    @property
    def bytes_per_vector(self) -> float:
        """On-disk (and, once touched, resident) bytes per vector: codes, ids and list overhead of all shards."""
        return float(self.meta["file_bytes_per_vector"])

    def info(self) -> dict[str, Any]:
        return {
            "kind": "ivf-pq-sharded", "spec": self.spec.to_dict(), "dim": self.dim, "count": self.ntotal,
            "n_shards": self.n_shards, "shard_counts": [int(s.ntotal) for s in self._shards],
            "code_bytes_per_vector": self.meta["code_bytes_per_vector"],
            "bytes_per_vector": round(self.bytes_per_vector, 2), "file_bytes": self.meta["file_bytes"],
            "load_mode": self.load_mode, "nprobe": self.nprobe, "directory": str(self.directory),
            "build_seconds": self.meta.get("seconds", {}),
        }

    def search(self, queries: Any, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best items over every shard: ``(scores [q, k] float32, ids [q, k] int64)``, best first.

        Scores are the PQ-approximated inner products; rows with fewer than ``k`` hits are padded with
        id ``-1`` and score ``-inf``.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"queries must have shape [q, {self.dim}], got {list(q.shape)}")
        q = _f32(q)  # [q, dim]
        if not np.isfinite(q).all():
            raise InputError("queries contain NaN or inf")
        probe = int(nprobe) if nprobe is not None else self.nprobe
        if probe <= 0:
            raise InputError(f"nprobe must be a positive integer, got {nprobe!r}")
        for ivf in self._ivfs:
            ivf.nprobe = min(probe, int(ivf.nlist))
        D, I = self._joined.search(q, int(k))  # [q, k], [q, k]
        D = np.asarray(D, dtype=np.float32)
        I = np.asarray(I, dtype=np.int64)
        D[I < 0] = -np.inf
        return D, I
