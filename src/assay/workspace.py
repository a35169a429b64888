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

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .errors import DamagedStoreError, InputError, NoWorkspaceError, WorkspaceError, check_folder
from .vectors import VectorStore, encoder_key

__all__ = ["Workspace", "WorkspaceConfig", "CONFIG_NAME", "DEFAULT_ENCODER"]

CONFIG_NAME = "assay.json"
DEFAULT_ENCODER = "efficientnet-lite0"
_SQLITE_DEFAULT = "sqlite:///catalog.db"


@dataclass
class WorkspaceConfig:
    format: int = 1
    catalog: str = _SQLITE_DEFAULT  # relative sqlite paths are resolved against the workspace root
    default_encoder: str = DEFAULT_ENCODER

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorkspaceConfig":
        known = {k: d[k] for k in ("format", "catalog", "default_encoder") if k in d}
        return cls(**known)


class Workspace:
    """A corpus on disk. Use :meth:`init` to create one and :meth:`open` to open one."""

    def __init__(self, root: str | os.PathLike[str], config: WorkspaceConfig) -> None:
        self.root = Path(root).absolute()
        self.config = config
        self._catalog: Catalog | None = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def init(
        cls, root: str | os.PathLike[str], *, catalog: str | None = None, default_encoder: str = DEFAULT_ENCODER
    ) -> "Workspace":
        """Create a workspace in ``root`` (created if missing; must not hold a workspace already)."""
        root = Path(root).absolute()
        if (root / CONFIG_NAME).exists():
            raise WorkspaceError(f"{root} already holds an assay workspace")
        if root.exists() and not root.is_dir():
            raise InputError(f"workspace path {root} exists and is not a folder")
        check_folder(root.parent, f"cannot create workspace {root}")
        if not isinstance(default_encoder, str) or default_encoder.split(":", 1)[0] != "precomputed":
            from .encoders.base import get_encoder

            get_encoder(default_encoder)  # an unknown name fails now, not at the first embed (nothing is loaded)
        if catalog is not None and "://" not in catalog:
            raise InputError(f"--catalog must be a database URL such as postgresql://user@host/db, got {catalog!r}")
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("vectors", "index", "cache"):
            (root / sub).mkdir(exist_ok=True)
        cfg = WorkspaceConfig(catalog=catalog or _SQLITE_DEFAULT, default_encoder=default_encoder)
        ws = cls(root, cfg)
        ws.catalog.open()  # create the tables now, so a bad URL fails at init rather than later
        tmp = root / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        os.replace(tmp, root / CONFIG_NAME)
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> "Workspace":
        """Open the workspace at ``root`` (default: the current directory)."""
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
            self._catalog = Catalog(self.catalog_url)
        return self._catalog

    @property
    def default_encoder(self) -> str:
        return self.config.default_encoder

    def vectors(self, encoder: str | None = None) -> VectorStore:
        return VectorStore(self.root / "vectors" / encoder_key(encoder or self.default_encoder))

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

    def index_dir(self, encoder: str | None = None) -> Path:
        return self.root / "index" / encoder_key(encoder or self.default_encoder)

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def status(self) -> dict[str, Any]:
        """What the workspace holds, as one JSON-ready dict."""
        counts = self.catalog.count()
        stores, damaged = self._stores()
        return {
            "workspace": str(self.root),
            "catalog": _redact(self.catalog_url),
            "items": {"total": counts["total"], "ok": counts["ok"], "error": counts["error"],
                      "image": counts["image"], "text": counts["text"]},
            "exact_duplicates": counts["exact_duplicates"],
            "embeddings": stores,
            "default_encoder": self.default_encoder,
            **({"damaged": damaged} if damaged else {}),
        }


def _redact(url: str) -> str:
    from .catalog import _redact as r

    return r(url)
