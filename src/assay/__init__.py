"""assay: mine a huge unlabelled corpus for the data that matters.

Embed every item once, index the vectors, and do everything else as cheap vector math: duplicate removal,
text and exemplar search, active-learning selection over SEALS candidate pools, a labelling loop,
retraining, harvesting and export.

The public API is listed in ``__all__``; heavy dependencies (torch, onnxruntime, transformers) load only
when an encoder is loaded.
"""

from __future__ import annotations

from .catalog import Catalog, ItemRow
from .embed import EmbedReport, embed
from .encoders.base import Encoder, EncoderOutput, encoder_names, get_encoder
from .errors import (
    AssayError,
    CatalogError,
    DecodeError,
    EmptyPoolError,
    EncoderError,
    IndexNotBuiltError,
    InputError,
    MissingDependencyError,
    NoEmbeddingsError,
    NotFoundError,
    UnknownNameError,
    WorkspaceError,
)
from .ingest import IngestReport, ingest
from .precomputed import import_embeddings
from .vectors import VectorStore
from .workspace import Workspace

__version__ = "0.1.0"

# The rest of the job, one import away (loaded on first use: FAISS, scikit-learn and FastAPI stay unloaded
# for scripts that only ingest and embed). `assay.X` for X below is the same object as in its module.
_LAZY = {
    "build_index": "search", "Searcher": "search", "Hit": "search",
    "dedup": "dedup", "DedupResult": "dedup",
    "Miner": "loop", "read_label_file": "loop", "check_exemplars": "loop",
    "export": "interop.exports", "ExportReport": "interop.exports",
    "pseudo_label": "interop.pseudo",
    "simulate_workspace": "simulate", "SimulationConfig": "simulate",
    "embed_regions": "regions", "RegionMiner": "regions",
    "create_app": "server.app", "ServerConfig": "server.app",
    "StorageUnavailableError": "errors", "ClusterUnavailableError": "errors",
}


#: Lazy names that are submodules callable as their function.
_CALLABLE_MODULES = frozenset({"dedup"})


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'assay' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"{__name__}.{mod}")
    # `assay.dedup` is the (callable) module itself: it must not change with import order (see assay.dedup)
    value = module if name in _CALLABLE_MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "__version__",
    "Workspace",
    "Catalog",
    "ItemRow",
    "VectorStore",
    "ingest",
    "IngestReport",
    "embed",
    "EmbedReport",
    "import_embeddings",
    "Encoder",
    "EncoderOutput",
    "get_encoder",
    "encoder_names",
    "AssayError",
    "InputError",
    "EmptyPoolError",
    "UnknownNameError",
    "NotFoundError",
    "WorkspaceError",
    "IndexNotBuiltError",
    "NoEmbeddingsError",
    "EncoderError",
    "DecodeError",
    "CatalogError",
    "MissingDependencyError",
    *_LAZY,
]
