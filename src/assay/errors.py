"""The one exception tree of assay.

Every error that assay raises on purpose derives from :class:`AssayError`, so a caller can catch them
all at once, or one branch at a time::

    AssayError
    ├── InputError (also a ValueError)        bad argument or bad data given at a public boundary
    │   ├── EmptyPoolError                    a selection or search over nothing
    │   └── UnknownNameError                  an unknown strategy, encoder, index kind, ...; lists the valid ones
    ├── NotFoundError (also a LookupError)    an item id, concept, path or source that does not exist
    ├── WorkspaceError                        no workspace here, or a workspace in a bad state
    │   ├── NoWorkspaceError (+NotFoundError)  no workspace at the path given (or here)
    │   ├── WorkspaceExistsError (+InputError) init where a workspace is already (or inside one's folders)
    │   ├── IndexNotBuiltError                search or neighbours asked before `assay index`
    │   ├── DamagedStoreError                 a stored embedding shard is truncated, garbled or missing
    │   └── NoEmbeddingsError                 a step that needs embeddings before `assay embed`
    ├── EncoderError                          an encoder that cannot load or run
    │   └── EncoderSourceError (+InputError)  the model folder an encoder name points at is missing or wrong
    ├── DecodeError                           one item's bytes cannot be read or decoded (per-item, recorded)
    ├── StorageUnavailableError               an object store cannot be reached or refuses the credentials
    ├── ClusterUnavailableError               a Ray cluster address that does not answer
    ├── CatalogError                          the catalog database is unreachable or rejects a write
    └── MissingDependencyError (ImportError)  an optional extra is not installed; names the extra

Messages say what was expected and what came, e.g. ``k must be a positive integer, got 0``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

__all__ = [
    "AssayError",
    "InputError",
    "EmptyPoolError",
    "UnknownNameError",
    "NotFoundError",
    "WorkspaceError",
    "NoWorkspaceError",
    "WorkspaceExistsError",
    "as_item_id",
    "as_id_array",
    "check_workspace",
    "check_encoder_name",
    "check_folder",
    "check_one_label_each",
    "RowProblems",
    "IndexNotBuiltError",
    "NoEmbeddingsError",
    "DamagedStoreError",
    "EncoderError",
    "EncoderSourceError",
    "DecodeError",
    "StorageUnavailableError",
    "ClusterUnavailableError",
    "CatalogError",
    "MissingDependencyError",
]


class AssayError(Exception):
    """Base of every error assay raises on purpose."""


class InputError(AssayError, ValueError):
    """A bad argument or bad data at a public boundary."""


class EmptyPoolError(InputError):
    """A selection, search or score over an empty set of items."""


class UnknownNameError(InputError):
    """A name (strategy, encoder, index kind, method) that is not registered.

    The message lists the valid names.
    """

    def __init__(self, kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(set(valid))
        super().__init__(f"unknown {kind} {name!r}; expected one of: {', '.join(self.valid)}")


class NotFoundError(AssayError, LookupError):
    """An item id, concept, file or source that does not exist."""


class WorkspaceError(AssayError):
    """No workspace where one was expected, or a workspace in a state that cannot serve the request."""


class WorkspaceExistsError(WorkspaceError, InputError):
    """``init`` of a folder that holds a workspace already, or lies inside one's own folders."""


class NoWorkspaceError(WorkspaceError, NotFoundError):
    """No workspace at the path given (bad input: the CLI exits 2)."""


class IndexNotBuiltError(WorkspaceError):
    """A search was asked for before an index was built (run `assay index`)."""


class DamagedStoreError(WorkspaceError):
    """A file of the embedding store is missing, truncated or garbled (``assay embed --repair`` fixes it)."""


class NoEmbeddingsError(WorkspaceError):
    """A step needs embeddings that do not exist yet (run `assay embed`)."""


class EncoderError(AssayError):
    """An encoder could not be loaded or run."""


class EncoderSourceError(EncoderError, InputError):
    """The model an encoder name points at is not there: a missing folder, a folder that holds no model, a
    file. An encoder error, and a mistake in the input (exit code 2 on the command line)."""


class DecodeError(AssayError):
    """One item's bytes could not be read or decoded. Recorded on the item; never stops a run."""


class StorageUnavailableError(AssayError):
    """An object store that fails every request the same way: no or bad credentials, an endpoint that cannot
    be reached. Not an item's fault, so no item is marked; the command stops (what it finished is kept)."""


class ClusterUnavailableError(AssayError):
    """A Ray cluster that cannot be reached at the address given (or none running for ``auto``)."""


class CatalogError(AssayError):
    """The catalog database is unreachable or rejected a write."""


class MissingDependencyError(AssayError, ImportError):
    """An optional dependency is missing. The message names the pip extra that provides it."""

    def __init__(self, package: str, extra: str | None, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        what = f" for {purpose}" if purpose else ""
        how = f"pip install 'assay[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{package} is needed{what} but is not installed; install it with: {how}")


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional module lazily, or raise :class:`MissingDependencyError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc


#: The largest id an int64 column holds.
MAX_INT64 = 2**63 - 1


def as_item_id(value: object, where: str = "item id") -> int:
    """``value`` as an item id: an int, a whole float (``12.0``, as JSON or Parquet may hold ids) or a string of
    digits, in ``0 .. 2**63 - 1``; booleans, fractions and anything else are refused with :class:`InputError`
    naming ``where``."""
    v = value.strip() if isinstance(value, str) else value
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        v = int(v)
    if isinstance(v, str) and v.lstrip("-").isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            import numpy as np

            if isinstance(v, np.integer):
                v = int(v)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{where} must be an integer, got {value!r}")
    if not 0 <= v <= MAX_INT64:
        raise InputError(f"{where} must be between 0 and 2**63 - 1, got {v}")
    return v


def check_workspace(ws: object, who: str) -> None:
    """InputError unless ``ws`` is an open :class:`~assay.workspace.Workspace` (not a path or None)."""
    from .workspace import Workspace

    if not isinstance(ws, Workspace):
        raise InputError(f"{who} needs a Workspace (Workspace.open(path)), got {type(ws).__name__} {ws!r}"[:300])


def check_encoder_name(name: object) -> None:
    """InputError unless ``name`` (an encoder name, or None for the workspace's default) is a non-empty string."""
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InputError(f"an encoder name must be a non-empty string such as 'efficientnet-lite0', got {name!r}")


def as_id_array(values: object, where: str = "item ids"):
    """``values`` (a sequence or array of ids) as int64 ``[n]``, each checked as :func:`as_item_id` checks one:
    a fraction (``1.5``), a bool, a negative number or text that is not digits raises :class:`InputError`
    naming ``where`` (a fraction is never truncated to another item's id). A bare string or a scalar is refused:
    a sequence of ids is expected."""
    import numpy as np

    if isinstance(values, (str, bytes)) or np.isscalar(values):
        raise InputError(f"{where} must be a sequence of ids, got {type(values).__name__} {values!r}")
    arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if arr.ndim > 1 and arr.size != arr.shape[0]:
        raise InputError(f"{where} must be a flat sequence of ids, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
            raise InputError(f"{where} must be non-negative integers, got {int(arr.min())}")
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > MAX_INT64:
            raise InputError(f"{where} must be at most 2**63 - 1, got {int(arr.max())}")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and (arr == np.floor(arr)).all() \
            and float(arr.min()) >= 0 and float(arr.max()) < 2**63:
        return arr.astype(np.int64)
    return np.asarray([as_item_id(v, where) for v in arr.tolist()], dtype=np.int64)


def check_one_label_each(ids: Iterable[int], values: Iterable[int], what: str = "item") -> None:
    """InputError when one call gives the same ``what`` (item, region) two different labels."""
    first: dict[int, int] = {}
    for i, v in zip(ids, values):
        if first.setdefault(i, v) != v:
            raise InputError(f"{what} {i} is given two different labels in one call; keep one")


def check_folder(folder: object, label: str, *, create: bool = False) -> None:
    """Raise :class:`InputError` naming ``label`` when ``folder``, or the nearest existing folder above it,
    is a file; with ``create``, make the missing folders (a failure is an InputError too). For output paths
    checked before any work is done."""
    from pathlib import Path

    folder = Path(folder)  # type: ignore[arg-type]
    for p in [folder, *folder.absolute().parents]:
        if p.exists():
            if not p.is_dir():
                raise InputError(f"{label}: {p} is a file, not a folder")
            break
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{label}: cannot create the folder {folder}: {exc}") from exc


class RowProblems:
    """Collects what is wrong with the rows of an input file, so that one run reports them all (the first
    ``show`` of them, and how many there are) instead of stopping at the first::

        problems = RowProblems(f"{path}")
        for n, row in enumerate(rows, 1):
            with problems.row(f"row {n}"):
                check(row)            # raises InputError
        problems.raise_if_any()       # one InputError listing them
    """

    def __init__(self, what: str | None, show: int = 10, *, header: str | None = None) -> None:
        # what: prefixed to a lone problem ("labels.csv" + " row 3: ..."); None when messages name their file.
        # header: names the input above a list of problems (default: what).
        self.what = what
        self.header = header if header is not None else (what or "the input")
        self.show = show
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    @contextlib.contextmanager
    def row(self, where: str) -> Iterator[None]:
        """A context in which an :class:`InputError` is recorded as ``where: message`` instead of raised."""
        try:
            yield
        except InputError as exc:
            self.add(f"{where}: {exc}")

    def __len__(self) -> int:
        return len(self.messages)

    def raise_if_any(self) -> None:
        if not self.messages:
            return
        n = len(self.messages)
        if n == 1:
            raise InputError(f"{self.what} {self.messages[0]}" if self.what else self.messages[0])
        shown = "\n  ".join(self.messages[: self.show])
        more = f"\n  ... and {n - self.show} more" if n > self.show else ""
        raise InputError(f"{self.header}: {n} bad rows, nothing recorded:\n  {shown}{more}")
