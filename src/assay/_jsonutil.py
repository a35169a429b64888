"""JSON helpers shared by the CLI, the reports and the readers: encoding numpy scalars, arrays and paths,
and reading a JSON-lines file's objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["json_default", "jsonl_objects"]


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


class _RepeatedKey(Exception):
    pass


def jsonl_objects(text: str, where: str) -> list[dict[str, Any]]:
    """The JSON object on each non-blank line of ``text``; a line that is not one raises InputError naming
    ``where`` and the line (1-based)."""
    import json

    from .errors import InputError

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) < len(pairs):  # json.loads would keep the last copy silently
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    raise _RepeatedKey(k)
                seen.add(k)
        return d

    out: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=no_repeats)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where} line {n}: not JSON: {exc}") from None
        except _RepeatedKey as exc:
            raise InputError(f"{where} line {n}: the key {exc.args[0]!r} appears more than once in one object") from None
        if not isinstance(rec, dict):
            raise InputError(f"{where} line {n}: expected a JSON object per line, got {type(rec).__name__}")
        out.append(rec)
    return out
