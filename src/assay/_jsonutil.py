"""JSON encoding of numpy scalars and arrays and paths, shared by the CLI and the reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["json_default"]


def json_default(o: Any) -> Any:
    """``default=`` hook for :func:`json.dumps`: numpy integers/floats/arrays and paths."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
