"""A workspace: one corpus on disk — its config, catalog, embedding stores, indexes and caches.

Layout::

    <root>/assay.json        config (format, catalog URL, default encoder)
    <root>/catalog.db        the SQLite catalog (unless the config names a PostgreSQL URL)
    <root>/vectors/<enc>/    embedding shards per encoder (see :mod:`assay.vectors`)
    <root>/index/<enc>/      FAISS indexes per encoder
    <root>/cache/            thumbnails and other keyed caches

Opening a workspace reads its config only; the catalog connects on first use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .errors import (
    DamagedStoreError, InputError, NoWorkspaceError, WorkspaceError, WorkspaceExistsError, as_id_array, check_encoder_name,
    check_folder,
)
from .vectors import StoreBusyError, VectorStore, encoder_key

#: In an index folder: ids of items whose files changed (embeddings dropped) since the index was built.
CHANGED_IDS_FILE = "changed-items.npy"
#: Catalog key/value entry holding the catalog's identity (a UUID), recorded in assay.json too.
CATALOG_ID_KEY = "catalog_id"
#: The last entry of the catalog's change log whose embeddings this workspace has dropped.
CHANGES_APPLIED_FILE = "changes-applied.json"
log = logging.getLogger(__name__)

_LOCKS = threading.local()  # lock files this thread holds (the locks are re-entrant within a thread)


@contextlib.contextmanager
def exclusive_lock(path: Path, waiting_message: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if needed) for the block: other processes,
    and other threads of this one, wait (logging ``waiting_message`` once). Re-entrant within a thread."""
    import fcntl

    key = str(Path(path).absolute())
    held: set[str] = _LOCKS.__dict__.setdefault("held", set())
    if key in held:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s", waiting_message)
            fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

__all__ = ["Workspace", "WorkspaceConfig", "CONFIG_NAME", "DEFAULT_ENCODER"]

CONFIG_NAME = "assay.json"
DEFAULT_ENCODER = "efficientnet-lite0"
_SQLITE_DEFAULT = "sqlite:///catalog.db"


@dataclass
class WorkspaceConfig:
    format: int = 1
    catalog: str = _SQLITE_DEFAULT  # relative sqlite paths are resolved against the workspace root
    default_encoder: str = DEFAULT_ENCODER
    catalog_id: str | None = None  # the identity of the catalog the stored embeddings' ids belong to

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorkspaceConfig":
        """The config of a parsed ``assay.json``; raises TypeError naming what is malformed (a hand edit)."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        known = {k: d[k] for k in ("format", "catalog", "default_encoder", "catalog_id") if k in d}
        for k in ("catalog", "default_encoder"):
            if k in known and (not isinstance(known[k], str) or not known[k].strip()):
                raise TypeError(f"{k!r} must be a non-empty string, got {known[k]!r}")
        if "catalog_id" in known and known["catalog_id"] is not None and not isinstance(known["catalog_id"], str):
            raise TypeError(f"'catalog_id' must be a string, got {known['catalog_id']!r}")
        if "format" in known and (isinstance(known["format"], bool) or not isinstance(known["format"], int)):
            raise TypeError(f"'format' must be an integer, got {known['format']!r}")
        return cls(**known)


class Workspace:
    """A corpus on disk. Use :meth:`init` to create one and :meth:`open` to open one."""

    def __init__(self, root: str | os.PathLike[str], config: WorkspaceConfig | None = None) -> None:
        """``Workspace(root)`` opens the workspace at ``root`` (as :meth:`open`); :meth:`init` creates one."""
        if config is None:
            opened = Workspace.open(root)
            root, config = opened.root, opened.config
        self.root = Path(root).absolute()
        self.config = config
        self._catalog: Catalog | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def init(
        cls, root: str | os.PathLike[str], *, catalog: str | None = None, default_encoder: str = DEFAULT_ENCODER
    ) -> "Workspace":
        """Create a workspace in ``root`` (created if missing; must not hold a workspace already)."""
        if not isinstance(root, (str, os.PathLike)) or not str(root).strip():
            raise InputError(f"a workspace folder must be a path, got {root!r}")
        if catalog is not None and not isinstance(catalog, str):
            raise InputError(f"catalog must be a database URL string such as postgresql://user@host/db, got {catalog!r}")
        root = Path(root).absolute()
        if (root / CONFIG_NAME).exists():
            raise WorkspaceExistsError(f"{root} already holds an assay workspace")
        for parent in root.parents:  # the stores, indexes and caches of a workspace are its own
            if (parent / CONFIG_NAME).is_file() and root.relative_to(parent).parts[0] in ("vectors", "index", "cache"):
                raise WorkspaceExistsError(f"{root} lies inside the {root.relative_to(parent).parts[0]}/ folder of the "
                                           f"workspace {parent}; choose a folder outside it")
        if root.exists() and not root.is_dir():
            raise InputError(f"workspace path {root} exists and is not a folder")
        check_folder(root.parent, f"cannot create workspace {root}")
        if not isinstance(default_encoder, str) or default_encoder.split(":", 1)[0] != "precomputed":
            from .encoders.base import canonical_encoder_name, get_encoder

            get_encoder(default_encoder)  # an unknown name fails now, not at the first embed (nothing is loaded)
            default_encoder = canonical_encoder_name(default_encoder)  # the spelling its embeddings go under
        if catalog is not None and "://" not in catalog:
            raise InputError(f"--catalog must be a database URL such as postgresql://user@host/db, got {catalog!r}")
        made = [p for p in (root, root / "vectors", root / "index", root / "cache") if not p.exists()]
        for p in made:
            p.mkdir(parents=True, exist_ok=True)
        cfg = WorkspaceConfig(catalog=catalog or _SQLITE_DEFAULT, default_encoder=default_encoder)
        ws = cls(root, cfg)
        try:
            ws.catalog.open()  # create the tables now, so a bad URL fails at init rather than later
        except BaseException:
            ws.close()
            for p in reversed(made):  # leave the folder as it was (a retry with the right URL then works)
                try:
                    p.rmdir()
                except OSError:
                    pass
            raise
        ws._write_config()
        ws._set_applied_seq(ws.catalog.changes_since(2**62)[1])  # a new workspace has no old embeddings
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> "Workspace":
        """Open the workspace at ``root`` (default: the current directory)."""
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise InputError(f"a workspace folder must be a path, got {type(root).__name__} {root!r}")
        root = Path(root if root is not None else os.getcwd()).absolute()
        cfg_path = root / CONFIG_NAME
        if not cfg_path.exists():
            hint = "" if root.exists() else " (the folder does not exist)"
            raise NoWorkspaceError(
                f"no assay workspace at {root}{hint}; create one with `assay init DIR` or pass -w/--workspace DIR"
            )
        try:
            cfg = WorkspaceConfig.from_dict(json.loads(cfg_path.read_text()))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError, OSError) as exc:
            raise WorkspaceError(f"workspace config {cfg_path} is unreadable: {exc}") from exc
        return cls(root, cfg)

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ parts
    @property
    def catalog_url(self) -> str:
        """The catalog URL; ``ASSAY_CATALOG_URL`` overrides the config (read when called)."""
        url = os.environ.get("ASSAY_CATALOG_URL") or self.config.catalog
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url[len("sqlite:///") :]
            if rel and not os.path.isabs(rel) and rel != ":memory:":
                url = "sqlite:///" + str(self.root / rel)
        return url

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            url = self.catalog_url
            if url.startswith("sqlite:///") and self.config.catalog_id is not None:
                path = Path(url[len("sqlite:///"):])
                if str(path) != ":memory:" and not path.exists():
                    # a workspace whose catalog was recorded: an empty new file would pass for it
                    raise WorkspaceError(
                        f"the workspace's catalog {path} is missing (deleted or moved?): restore it from a backup, "
                        "or point ASSAY_CATALOG_URL at it; assay does not start an empty catalog for a workspace "
                        "whose embeddings and labels refer to its items")
            cat = Catalog(url)
            self._check_catalog_identity(cat)
            self._catalog = cat
        return self._catalog

    def _check_catalog_identity(self, cat: Catalog) -> None:
        """Refuse a catalog other than the one this workspace's embeddings and indexes were made with (item
        ids mean other items there): e.g. ``ASSAY_CATALOG_URL`` set for another workspace. Several workspaces
        may share one catalog (a team on PostgreSQL); each records its identity when it is created."""
        import uuid

        from .errors import CatalogError

        mine = self.config.catalog_id
        try:
            theirs = cat.get_value(CATALOG_ID_KEY)
            if theirs is None and mine is not None and cat.count()["total"] == 0 and self._stores()[0]:
                theirs = "(an empty catalog)"
            elif theirs is None:
                theirs = cat.ensure_value(CATALOG_ID_KEY, mine or uuid.uuid4().hex)
        except CatalogError as exc:
            if getattr(exc, "final", False):  # unreachable after its retries: say so now, not after a second round
                cat.close()
                raise
            log.debug("catalog identity not checked: %s", exc)  # e.g. a read-only catalog
            return
        if mine is None:  # a workspace made before identities were recorded: it adopts its catalog's
            self.config.catalog_id = theirs
            if (self.root / CONFIG_NAME).exists():
                self._write_config()
        elif theirs != mine:
            cat.close()
            raise WorkspaceError(
                f"the catalog at {_redact(self.catalog_url)} is not the one the workspace {self.root} was made with "
                f"(catalog {theirs}, workspace {mine}): its item ids name other items than the stored embeddings "
                "and index. Point ASSAY_CATALOG_URL (or the catalog in assay.json) at the workspace's own catalog, "
                "or make a new workspace for this one (`assay init DIR --catalog URL`)"
            )

    def _write_config(self) -> None:
        from ._atomic import atomic_output

        with atomic_output(self.root / CONFIG_NAME) as tmp:  # a temporary name of its own per writer
            tmp.write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @property
    def default_encoder(self) -> str:
        return self.config.default_encoder

    def vectors(self, encoder: str | None = None) -> VectorStore:
        check_encoder_name(encoder)
        from .encoders.base import canonical_encoder_name

        name = canonical_encoder_name(encoder or self.default_encoder)
        return VectorStore(self.root / "vectors" / encoder_key(name), name=name)

    def embedded_encoders(self) -> dict[str, int]:
        """``{encoder name: number of stored embeddings}`` for every store in the workspace."""
        return self._stores()[0]

    def _stores(self) -> tuple[dict[str, int], dict[str, str]]:
        """``({encoder: stored rows}, {encoder: what is damaged})``; a damaged store counts its readable shards."""
        out: dict[str, int] = {}
        damaged: dict[str, str] = {}
        vdir = self.root / "vectors"
        if vdir.exists():
            for d in sorted(vdir.iterdir()):
                store = VectorStore(d)
                if not store.exists():
                    continue
                name = str(store.meta()["encoder"])
                try:
                    out[name] = len(store)
                except DamagedStoreError as exc:
                    damaged[name] = str(exc)
                    out[name] = store.readable_rows()
        return out, damaged

    def forget_embeddings(self, ids: Any) -> int:
        """Remove the stored embeddings of items ``ids`` from every store of the workspace (their regions
        too), e.g. after their files changed; ``embed`` then embeds them again and ``index`` drops the old
        vectors. Returns how many rows were removed."""
        ids = np.unique(as_id_array(ids, "ids"))  # a fraction is refused, never truncated to another item
        vdir = self.root / "vectors"
        if not len(ids) or not vdir.exists():
            return 0
        from .regions import parent_ids

        removed = 0
        for d in sorted(vdir.iterdir()):
            store = VectorStore(d)
            if not store.exists():
                continue
            with store:
                have = store.ids()
                drop = have[np.isin(parent_ids(have), ids)]  # an item's own row, and its regions' rows
                if not len(drop):
                    continue
                removed += store.delete(drop)
            idir = self.root / "index" / d.name.split("@", 1)[0]
            if idir.is_dir():  # the index still holds the old vectors: `assay index` rebuilds, search skips them
                # Under the index's write lock: a build running now finishes first, then sees this marker.
                with exclusive_lock(idir / ".write.lock", f"an index build at {idir} is running; waiting for it"):
                    marker = idir / CHANGED_IDS_FILE
                    old = np.load(marker) if marker.exists() else np.zeros(0, np.int64)
                    tmp = marker.with_name(marker.name + ".tmp.npy")
                    np.save(tmp, np.union1d(old, ids).astype(np.int64))
                    os.replace(tmp, marker)
        return removed

    # ------------------------------------------------------------------ changed items
    def _applied_path(self) -> Path:
        return self.root / CHANGES_APPLIED_FILE

    def _applied_seq(self) -> int:
        try:
            return int(json.loads(self._applied_path().read_text())["seq"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _set_applied_seq(self, seq: int) -> None:
        from ._atomic import atomic_output

        with atomic_output(self._applied_path()) as tmp:  # a temporary name of its own per writer
            tmp.write_text(json.dumps({"seq": int(seq)}) + "\n")

    def pending_changes(self) -> np.ndarray:
        """Ids of items whose bytes changed (in the catalog's change log) since this workspace last dropped
        its embeddings of changed items: their stored vectors describe the old bytes."""
        return self.catalog.changes_since(self._applied_seq())[0]

    def apply_changes(self) -> int:
        """Drop this workspace's embeddings of items whose bytes changed since it last looked (whoever
        re-ingested them: this workspace, another one on a shared catalog, or a run that was killed before
        it got here). ``embed``, ``index`` and ``ingest`` call it; returns the rows dropped."""
        ids, last = self.catalog.changes_since(self._applied_seq())
        try:
            removed = self.forget_embeddings(ids) if len(ids) else 0
        except StoreBusyError as exc:
            # an `assay embed` holds a store: leave the changes pending (searches and rounds skip those items
            # meanwhile) and drop their embeddings at the next command, instead of failing this one
            log.warning("%d changed items keep their old embeddings until the running embed finishes (%s)", len(ids), exc)
            return 0
        if last != self._applied_seq():
            self._set_applied_seq(last)
        return removed

    def changed_since_index(self, encoder: str | None = None) -> np.ndarray | None:
        """Ids of items whose embeddings were dropped (changed files) since ``encoder``'s index was built,
        or None when there are none."""
        marker = self.index_dir(encoder) / CHANGED_IDS_FILE
        return np.load(marker) if marker.exists() else None

    def index_dir(self, encoder: str | None = None) -> Path:
        check_encoder_name(encoder)
        from .encoders.base import canonical_encoder_name

        return self.root / "index" / encoder_key(canonical_encoder_name(encoder or self.default_encoder))

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def status(self) -> dict[str, Any]:
        """What the workspace holds, as one JSON-ready dict."""
        counts = self.catalog.count()
        stores, damaged = self._stores()
        indexes, region_indexes = self._indexes(stores)
        return {
            "workspace": str(self.root),
            "catalog": _redact(self.catalog_url),
            "items": {"total": counts["total"], "ok": counts["ok"], "error": counts["error"],
                      "image": counts["image"], "text": counts["text"]},
            "exact_duplicates": counts["exact_duplicates"],
            "embeddings": stores,
            "pending": self._pending(stores, damaged),
            "indexes": indexes,
            **({"region_indexes": region_indexes} if region_indexes else {}),
            "default_encoder": self.default_encoder,
            **({"damaged": damaged} if damaged else {}),
        }

    def _pending(self, stores: dict[str, int], damaged: dict[str, str]) -> dict[str, int]:
        """``{encoder: ok items of its modalities that it has not embedded yet}`` (the default encoder's
        too when it has no store yet)."""
        from .encoders.base import get_encoder

        out: dict[str, int] = {}
        for name in dict.fromkeys([self.default_encoder, *stores]):
            if name in damaged:
                continue
            try:
                modalities = [m for m in ("image", "text") if m in get_encoder(name).modalities]
            except Exception:  # an encoder this installation cannot make (a missing extra): not counted
                continue
            ids = np.concatenate([self.catalog.ids(status="ok", modality=m) for m in modalities] or [np.zeros(0, np.int64)])
            store = self.vectors(name)
            out[name] = int(len(ids) - (store.contains(ids).sum() if store.exists() and len(ids) else 0))
        return out

    def _indexes(self, stores: dict[str, int]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """``({encoder: {"vectors", "built_on", "up_to_date"}}, {encoder: {"spec", "vectors", "up_to_date"}})``:
        each index of items, and each joint index of items and regions, with whether it holds what `assay
        index` would put in it now."""
        from .regions import REGION_INDEX_DIR, parent_ids, region_spec_of, region_store
        from .search import pca_mismatch

        facts: dict[str, Any] = {}

        def ok_ids() -> np.ndarray:  # read once for every index, and only where there is one
            if "ok" not in facts:
                facts["ok"], facts["changes_pending"] = self.catalog.ids(status="ok"), len(self.pending_changes()) > 0
            return facts["ok"]

        out: dict[str, dict[str, Any]] = {}
        regions: dict[str, dict[str, Any]] = {}
        for name, rows in stores.items():
            if name.endswith("@regions"):
                base = name[: -len("@regions")]
                rstore, istore = region_store(self, base), self.vectors(base)
                try:
                    rmeta = rstore.meta()
                    spec_ = region_spec_of(self, base)
                    spec = spec_.key if spec_ is not None else None
                    meta = json.loads((self.index_dir(base) / REGION_INDEX_DIR / "meta.json").read_text())
                except (OSError, ValueError, WorkspaceError):
                    regions[base] = {"spec": None, "vectors": 0, "up_to_date": False,
                                     "problem": "no region index yet; run `assay index`"}
                    continue
                ok = ok_ids()
                try:
                    want = int(np.isin(istore.ids(), ok).sum() if istore.exists() else 0) + int(
                        np.isin(parent_ids(rstore.ids()), ok).sum())
                except DamagedStoreError:
                    want = -1
                vectors = int(meta.get("count", 0))
                same = meta.get("encoder_version") == rmeta.get("version")
                regions[base] = {"spec": spec, "vectors": vectors,
                                 "up_to_date": bool(same and vectors == want and not facts["changes_pending"])}
                continue
            meta_path = self.index_dir(name) / "main" / "meta.json"
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            built_on = meta.get("metadata", {}).get("store_rows")
            changed = self.changed_since_index(name)
            vectors = int(meta.get("count", 0))
            # What an index built now would hold: the stored vectors of items that are ok (a file gone since
            # is left out by the next `assay index`).
            store = self.vectors(name)
            ok = ok_ids()
            try:
                want = int(np.isin(store.ids(), ok).sum()) if store.exists() else 0
            except DamagedStoreError:  # reported apart ("damaged"); the index state is not judged
                want = vectors
            # a `--rebuild --pca` cut short leaves another PCA beside the index: search refuses it
            pca_ok = not meta.get("metadata", {}).get("pca") or not pca_mismatch(self.index_dir(name), meta["metadata"])
            out[name] = {"vectors": vectors, "built_on": built_on,
                         "up_to_date": built_on == rows and changed is None and vectors == want
                         and not facts["changes_pending"] and pca_ok,
                         **({} if pca_ok else {"problem": "its PCA comes from another build; run `assay index`"})}
        return out, regions


def _redact(url: str) -> str:
    from .catalog import _redact as r

    return r(url)
