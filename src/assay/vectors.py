"""The embedding store: one folder per encoder, append-only float16 shards, memory-mapped on read.

Layout of ``<workspace>/vectors/<encoder key>/``::

    store.json                      encoder name, version, dim, extras (name -> width)
    shard-000001.npy                float16 [n, dim], L2-normalised rows
    shard-000001.ids.npy            int64 [n], the catalog item id of each row
    shard-000001.<extra>.npy        float16 [n, width], e.g. imagenet_logits
    shard-000001.json               the commit marker: rows, created, replaces (written last)

A shard exists once its ``.json`` marker exists; arrays are written to temporary names, fsynced and
renamed first, the marker last. Files of a shard without a marker are the leftovers of a crash and are
removed when the store is opened for writing. So a kill at any moment loses at most the shard being
written, which was not acknowledged, and never leaves a half shard that a reader could see.

Rows are removed by rewriting the affected shards (compaction); the new shard's marker names the shard it
replaces so that a crash between the two steps resolves to exactly one copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AssayError, DamagedStoreError, InputError, NoEmbeddingsError, NotFoundError, WorkspaceError, as_id_array

__all__ = ["VectorStore", "Shard", "ShardProblem", "encoder_key"]

#: What a damaged shard tells the user to do (every message about one ends with it).
REPAIR_HINT = "run `assay embed --repair` to drop the damaged shards and embed their items again"

_SHARD_RE = re.compile(r"^shard-(\d{6,})\.json$")


def encoder_key(name: str) -> str:
    """A folder name for an encoder name (``clip:/models/x`` -> ``clip__models_x``)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")
    return key or "encoder"


def _fsync_write_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StoreBusyError(WorkspaceError):
    """Another process holds the store's writer lock (an `assay embed` running)."""


@dataclass(frozen=True)
class Shard:
    seq: int
    rows: int
    path: Path  # the embeddings .npy
    stamp: str = ""  # the commit marker's random uid: tells a shard from a later one with the same number

    def ids(self) -> np.ndarray:
        ids = _load_npy(self.path.with_name(self.path.name[:-4] + ".ids.npy"), None)
        if ids.ndim != 1 or ids.dtype != np.int64 or len(ids) != self.rows:
            raise DamagedStoreError(
                f"the ids of embedding shard {self.path.name} are damaged (expected int64 [{self.rows}], found "
                f"{ids.dtype} {list(ids.shape)}); {REPAIR_HINT}"
            )
        return ids

    def vectors(self, mmap: bool = True) -> np.ndarray:
        return _load_npy(self.path, "r" if mmap else None)

    def extra(self, name: str, mmap: bool = True) -> np.ndarray:
        p = self.path.with_name(self.path.name[:-4] + f".{name}.npy")
        if not p.exists():
            raise NotFoundError(f"shard {self.seq} has no extra {name!r}")
        return _load_npy(p, "r" if mmap else None)


def _load_npy(path: Path, mmap_mode: Any) -> np.ndarray:
    """``np.load`` of a shard file; a missing, truncated or garbled file raises DamagedStoreError."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        what = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc})"
        raise DamagedStoreError(f"embedding shard file {path} is {what}; {REPAIR_HINT}") from exc


def _read_marker(path: Path) -> dict[str, Any]:
    """A shard's commit marker; an unreadable one raises DamagedStoreError."""
    try:
        info = json.loads(path.read_text())
        rows = int(info["rows"])
        if rows < 0:
            raise ValueError(f"negative row count {rows}")
        if info.get("replaces") is not None:
            int(info["replaces"])
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise DamagedStoreError(f"embedding shard marker {path} is unreadable ({exc}); {REPAIR_HINT}") from exc
    if not isinstance(info, dict):  # pragma: no cover - int(info["rows"]) fails first
        raise DamagedStoreError(f"embedding shard marker {path} is not a shard description; {REPAIR_HINT}")
    return info


@dataclass(frozen=True)
class ShardProblem:
    """A damaged shard found by :meth:`VectorStore.check`: its number, marker file and what is wrong."""

    seq: int
    marker: Path
    reason: str


class VectorStore:
    """Embeddings of one encoder in one workspace.

    Parameters
    ----------
    root : path
        The store's folder (``<workspace>/vectors/<encoder key>``).
    """

    def __init__(self, root: str | os.PathLike[str], name: str | None = None) -> None:
        self.root = Path(root)
        self.name = name  # the encoder name it was asked for (messages), when known
        self._lock_fd: int | None = None
        self._index_cache: tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ metadata
    @property
    def meta_path(self) -> Path:
        return self.root / "store.json"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def _missing(self) -> AssayError:
        """The error for a store that does not exist, naming the stores the workspace does hold; for a name
        that is no encoder at all (a typo), the unknown-name error that lists the encoders."""
        if self.name is not None and self.name.partition(":")[0] != "precomputed":
            from .encoders.base import get_encoder

            try:
                get_encoder(self.name)
            except InputError as exc:
                return exc
            except Exception:  # noqa: BLE001 - a name that builds no encoder here is still reported as missing
                pass
        others = []
        if self.root.parent.is_dir():
            for d in sorted(self.root.parent.iterdir()):
                if d != self.root and not d.name.endswith("@regions") and (d / "store.json").is_file():
                    try:
                        others.append(f"{VectorStore(d).meta()['encoder']} ({VectorStore(d).readable_rows()} rows)")
                    except Exception:  # noqa: BLE001 - a damaged neighbour does not hide this message
                        others.append(d.name)
        name = self.name or self.root.name
        if others:
            return NoEmbeddingsError(
                f"no embeddings of {name} in this workspace; it holds embeddings of {', '.join(others)}: pass "
                f"--encoder NAME (or run `assay embed --encoder {name}`)")
        return NoEmbeddingsError(f"no embeddings at {self.root}; run `assay embed` first")

    def meta(self) -> dict[str, Any]:
        if not self.exists():
            raise self._missing()
        try:
            meta = json.loads(self.meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise WorkspaceError(
                f"the embedding store's metadata {self.meta_path} is unreadable ({exc}); restore it, or drop this "
                "store's embeddings with `assay embed --reset`"
            ) from exc
        if not isinstance(meta, dict) or "dim" not in meta:
            raise WorkspaceError(f"the embedding store's metadata {self.meta_path} is not a store description")
        return meta

    @property
    def dim(self) -> int:
        return int(self.meta()["dim"])

    def create(self, *, encoder: str, version: str, dim: int, extras: dict[str, int] | None = None) -> None:
        """Create the store, or check that an existing one was made by the same encoder version and dim."""
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise InputError(f"dim must be a positive integer, got {dim}")
        meta = {"encoder": encoder, "version": version, "dim": int(dim), "extras": dict(extras or {}), "format": 1}
        if self.exists():
            old = self.meta()
            if old["encoder"] != encoder:
                raise self._shared_folder(str(old["encoder"]), encoder)
            if int(old["dim"]) != dim or old["version"] != version:
                raise WorkspaceError(
                    f"the stored embeddings at {self.root} were made by {old['encoder']} version {old['version']} "
                    f"(dim {old['dim']}), not {encoder} version {version} (dim {dim}); "
                    + ("re-embed the regions with `assay embed --regions SPEC --reset-regions` to replace them (the "
                       "whole-image embeddings are kept)" if str(encoder).endswith("@regions") else
                       "re-embed with `assay embed --reset` to replace them")
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        _fsync_write_json(self.meta_path, meta)

    # ------------------------------------------------------------------ locking
    def lock(self) -> None:
        """Take the store's writer lock (one embedding run at a time), or fail fast if it is held."""
        self.lock_raw()
        try:
            self._cleanup()
        except BaseException:
            self.unlock()
            raise

    def lock_raw(self) -> None:
        """Take the writer lock without cleaning up after an interrupted write (what :meth:`repair` needs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise StoreBusyError(f"another process is writing embeddings to {self.root}; wait for it to finish") from exc
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "VectorStore":
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def _cleanup(self) -> None:
        """Remove leftovers of an interrupted write: temp files, shards without a marker, replaced shards."""
        committed = {s.seq for s in self.shards()}
        for p in self.root.glob("*.tmp"):
            p.unlink(missing_ok=True)
        for p in self.root.glob("shard-*.npy"):
            seq = int(p.name.split(".")[0].split("-")[1])
            if seq not in committed:
                p.unlink(missing_ok=True)
        for s in self.shards():
            replaces = _read_marker(self.root / f"shard-{s.seq:06d}.json").get("replaces")
            if replaces is not None and replaces in committed:
                self._delete_shard(int(replaces))

    # ------------------------------------------------------------------ reading
    def shards(self) -> list[Shard]:
        if not self.root.exists():
            return []
        out = []
        replaced: set[int] = set()
        for p in sorted(self.root.iterdir()):
            m = _SHARD_RE.match(p.name)
            if m:
                info = _read_marker(p)
                if info.get("replaces") is not None:
                    replaced.add(int(info["replaces"]))
                stamp = str(info.get("uid") or p.stat().st_mtime_ns)  # stores written before uids: the mtime
                out.append(Shard(seq=int(m.group(1)), rows=int(info["rows"]), path=p.with_suffix(".npy"), stamp=stamp))
        return [s for s in out if s.seq not in replaced]

    def __len__(self) -> int:
        return sum(s.rows for s in self.shards())

    def _scan_markers(self) -> tuple[list[tuple[int, Path, dict[str, Any]]], list[ShardProblem]]:
        """Every shard marker, tolerant of damage: ``(live, damaged)``, where ``live`` holds the readable
        markers of shards no other shard replaces, as ``(seq, marker path, info)``, by number."""
        readable: list[tuple[int, Path, dict[str, Any]]] = []
        damaged: list[ShardProblem] = []
        replaced: set[int] = set()
        for p in sorted(self.root.iterdir()):
            m = _SHARD_RE.match(p.name)
            if not m:
                continue
            try:
                info = _read_marker(p)
            except DamagedStoreError as exc:
                damaged.append(ShardProblem(int(m.group(1)), p, str(exc).split("; ")[0]))
                continue
            if info.get("replaces") is not None:
                replaced.add(int(info["replaces"]))
            readable.append((int(m.group(1)), p, info))
        return [r for r in readable if r[0] not in replaced], damaged

    def readable_rows(self) -> int:
        """Rows of the shards whose markers read (what :func:`len` counts, minus damaged markers)."""
        return sum(int(info["rows"]) for _, _, info in self._scan_markers()[0])

    def ids(self) -> np.ndarray:
        """Ids of every stored row, int64, in storage order."""
        parts = [s.ids() for s in self.shards()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def iter_shards(self, *, extra: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids [n], vectors [n, dim] float16, memory-mapped)`` per shard, or the named extra."""
        for s in self.shards():
            yield s.ids(), (s.vectors() if extra is None else s.extra(extra))

    def load(self, *, dtype: Any = np.float32, extra: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All rows at once: ``(ids [n], vectors [n, dim])`` (converted to ``dtype``)."""
        if not self.exists():
            raise self._missing()
        ids, vecs = [], []
        for i, v in self.iter_shards(extra=extra):
            ids.append(i)
            vecs.append(np.asarray(v, dtype=dtype))
        if not ids:
            width = self.dim if extra is None else self._extra_width(extra)
            return np.zeros(0, dtype=np.int64), np.zeros((0, width), dtype=dtype)
        return np.concatenate(ids), np.concatenate(vecs)

    def _locator(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shards = self.shards()
        # After a reset (by this or another process) new shards reuse the numbers: key on the markers too.
        key = tuple((s.seq, s.rows, s.stamp) for s in shards)
        if self._index_cache is None or self._index_cache[0] != key:
            ids, shard_no, rows = [], [], []
            for k, s in enumerate(shards):
                i = s.ids()
                ids.append(i)
                shard_no.append(np.full(len(i), k, dtype=np.int32))
                rows.append(np.arange(len(i), dtype=np.int64))
            all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
            order = np.argsort(all_ids, kind="stable")
            self._index_cache = (
                key,
                all_ids[order],
                (np.concatenate(shard_no) if ids else np.zeros(0, np.int32))[order],
                (np.concatenate(rows) if ids else np.zeros(0, np.int64))[order],
            )
        return self._index_cache[1], self._index_cache[2], self._index_cache[3]

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` have a stored row."""
        ids = np.asarray(ids, dtype=np.int64)
        sorted_ids, _, _ = self._locator()
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        return (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), dtype=bool)

    def get(self, ids: np.ndarray | list[int], *, dtype: Any = np.float32, extra: str | None = None) -> np.ndarray:
        """Rows for ``ids`` in the order given (``[len(ids), dim]``); unknown ids raise NotFoundError."""
        ids = as_id_array(ids, "ids")  # a fraction is refused, never truncated to another item's row
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise InputError(f"dtype must be a numpy dtype such as float32, got {dtype!r}") from None
        width = self.dim if extra is None else self._extra_width(extra)
        sorted_ids, shard_no, rows = self._locator()
        out = np.empty((len(ids), width), dtype=dtype)
        if len(ids) == 0:
            return out
        pos = np.searchsorted(sorted_ids, ids)
        ok = pos < len(sorted_ids)
        ok[ok] = sorted_ids[pos[ok]] == ids[ok]
        if not ok.all():
            missing = ids[~ok][:5].tolist()
            raise NotFoundError(f"{int((~ok).sum())} ids have no stored embedding, e.g. {missing} (not embedded yet, "
                                "their files failed, or they changed since: run `assay embed`, then `assay index`)")
        shards = self.shards()
        for k in np.unique(shard_no[pos]):
            sel = shard_no[pos] == k
            arr = shards[k].vectors() if extra is None else shards[k].extra(extra)
            out[sel] = np.asarray(arr[rows[pos[sel]]], dtype=dtype)
        return out

    # ------------------------------------------------------------------ writing
    def _next_seq(self) -> int:
        seqs = [int(p.name[6:12]) for p in self.root.glob("shard-*.json")] if self.root.exists() else []
        return max(seqs, default=0) + 1

    def append(
        self, ids: np.ndarray, vectors: np.ndarray, extras: dict[str, np.ndarray] | None = None, *,
        replaces: int | None = None,
    ) -> int:
        """Write one shard durably and return its sequence number.

        ``vectors`` ``[n, dim]`` are stored as float16; they must be finite. Ids already stored raise
        InputError (a row is embedded exactly once).
        """
        meta = self.meta()
        ids = as_id_array(ids, "ids")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise InputError(f"expected vectors of shape [{len(ids)}, {meta['dim']}], got {list(vectors.shape)}")
        if vectors.shape[1] != int(meta["dim"]):
            raise InputError(f"store has dim {meta['dim']}, vectors have dim {vectors.shape[1]}")
        if len(np.unique(ids)) != len(ids):
            raise InputError("ids within one shard must be unique")
        if vectors.dtype.kind not in "fiu":
            raise InputError(f"vectors must be numbers, got dtype {vectors.dtype}")
        if not np.isfinite(vectors).all():
            raise InputError("vectors contain NaN or inf")
        with np.errstate(over="ignore"):
            if not np.isfinite(vectors.astype(np.float16)).all():  # stored as float16: at most 65504 in size
                raise InputError("vectors hold values beyond float16's range (+-65504); embeddings are unit-norm")
        if replaces is None and len(ids) and self.contains(ids).any():
            dup = ids[self.contains(ids)][:5].tolist()
            raise InputError(f"ids already embedded in this store, e.g. {dup}")
        extras = {name: np.asarray(arr) for name, arr in (extras or {}).items()}
        for name, arr in extras.items():
            if name not in meta["extras"]:
                raise InputError(f"unknown extra {name!r}; the store declares {sorted(meta['extras'])}")
            if arr.shape != (len(ids), int(meta["extras"][name])):
                raise InputError(f"extra {name!r} must have shape [{len(ids)}, {meta['extras'][name]}], got {list(arr.shape)}")
            if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
                raise InputError(f"extra {name!r} must hold finite numbers")
            extras[name] = np.clip(arr, -65504, 65504)  # float16's range: a huge logit is kept as its largest
        seq = self._next_seq()
        base = self.root / f"shard-{seq:06d}"
        with np.errstate(over="ignore"):
            _fsync_write_npy(base.with_name(base.name + ".npy"), vectors.astype(np.float16))
            for name, arr in extras.items():
                _fsync_write_npy(base.with_name(base.name + f".{name}.npy"), np.asarray(arr).astype(np.float16))
        _fsync_write_npy(base.with_name(base.name + ".ids.npy"), ids)
        _fsync_write_json(base.with_name(base.name + ".json"), {"rows": int(len(ids)), "created": time.time(), "replaces": replaces,
                                                            "uid": os.urandom(8).hex()})
        self._index_cache = None
        return seq

    def _delete_shard(self, seq: int) -> None:
        for p in self.root.glob(f"shard-{seq:06d}.*"):
            p.unlink(missing_ok=True)
        _fsync_dir(self.root)

    def delete(self, ids: np.ndarray | list[int]) -> int:
        """Remove the rows of ``ids`` (rewriting the shards that hold them); return how many were removed."""
        ids = as_id_array(ids, "ids")
        extras_names = list(self.meta().get("extras", {}))
        removed = 0
        for s in self.shards():
            sid = s.ids()
            drop = np.isin(sid, ids)
            if not drop.any():
                continue
            keep = ~drop
            removed += int(drop.sum())
            if keep.any():
                self.append(
                    sid[keep], np.asarray(s.vectors()[keep]),
                    {n: np.asarray(s.extra(n)[keep]) for n in extras_names}, replaces=s.seq,
                )
            else:
                # An empty replacement shard records the removal durably before the old files go.
                self.append(
                    sid[:0], np.zeros((0, self.dim), np.float16),
                    {n: np.zeros((0, int(self.meta()["extras"][n])), np.float16) for n in extras_names},
                    replaces=s.seq,
                )
            self._delete_shard(s.seq)
        self._index_cache = None
        return removed

    # ------------------------------------------------------------------ damage
    def check(self) -> list[ShardProblem]:
        """Read every committed shard in full and return the damaged ones (empty: the store is sound).

        A shard is damaged when its marker is unreadable, a file is missing, truncated or garbled, the ids
        are not ``int64 [rows]``, the vectors not ``float16 [rows, dim]``, an extra not ``[rows, width]``,
        or a vector is not finite. Reading every file costs a full pass over the store."""
        meta = self.meta()
        dim, extras = int(meta["dim"]), {str(k): int(v) for k, v in meta.get("extras", {}).items()}
        live, problems = self._scan_markers()
        for seq, p, info in live:
            shard = Shard(seq=seq, rows=int(info["rows"]), path=p.with_suffix(".npy"))
            try:
                shard.ids()
                v = shard.vectors(mmap=False)
                if v.dtype != np.float16 or v.shape != (shard.rows, dim):
                    raise DamagedStoreError(f"vectors are {v.dtype} {list(v.shape)}, expected float16 [{shard.rows}, {dim}]")
                if not np.isfinite(v).all():
                    raise DamagedStoreError("vectors contain NaN or inf")
                for name, width in extras.items():
                    e = shard.extra(name, mmap=False)
                    if e.shape != (shard.rows, width):
                        raise DamagedStoreError(f"extra {name!r} is {list(e.shape)}, expected [{shard.rows}, {width}]")
            except (DamagedStoreError, NotFoundError) as exc:
                problems.append(ShardProblem(seq, p, str(exc).split("; ")[0]))
        return problems

    def repair(self) -> list[ShardProblem]:
        """Drop every damaged shard (see :meth:`check`) and return what was dropped.

        The items of a dropped shard count as not embedded, so the next ``embed`` embeds them again. Takes
        the writer lock unless this process holds it already. The marker goes first, so a crash part-way
        leaves uncommitted files that the next writer removes."""
        if not self.exists():
            return []
        held = self._lock_fd is not None
        if not held:
            self.lock_raw()
        try:
            problems = self.check()
            for pr in problems:
                pr.marker.unlink(missing_ok=True)
                _fsync_dir(self.root)
                self._delete_shard(pr.seq)
            self._index_cache = None
            if problems:
                self._cleanup()
            return problems
        finally:
            if not held:
                self.unlock()

    def _extra_width(self, extra: str) -> int:
        extras = self.meta().get("extras", {})
        if extra not in extras:
            raise NotFoundError(f"the store of {self.meta()['encoder']} keeps no extra {extra!r}; it keeps "
                                f"{', '.join(sorted(extras)) or 'none'}")
        return int(extras[extra])

    def _shared_folder(self, held: str, wanted: str) -> InputError:
        return InputError(
            f"the encoder names {wanted!r} and {held!r} map to the same folder {self.root} (characters other "
            "than letters, digits, '.', '_' and '-' become '_'); its embeddings are those of "
            f"{held!r}: give {wanted!r} another name")

    def reset(self) -> None:
        """Remove every shard and the store's metadata.

        A store opened for an encoder name (``Workspace.vectors(name)``) refuses to reset a folder that holds
        another name's embeddings (two names that map to one folder): that would destroy them.

        Crash-safe order: the shard markers (``shard-*.json``, what makes a shard count) go first, then the
        arrays, and the store description (``store.json``, which names the encoder version) last. A kill
        part-way leaves the old description over fewer shards, so the next plain ``embed`` still refuses to
        mix versions and asks for ``--reset`` again, never a new description over old vectors."""
        if self.name is not None and self.exists():
            held = str(self.meta()["encoder"])
            if held != self.name:
                raise self._shared_folder(held, self.name)
        if self.root.exists():
            files = [p for p in self.root.iterdir() if p.name != ".lock" and p.is_file()]
            rank = {True: 0, False: 1}
            files.sort(key=lambda p: (2 if p.name == "store.json" else rank[p.name.endswith(".json")], p.name))
            for p in files:
                p.unlink(missing_ok=True)
        self._index_cache = None
