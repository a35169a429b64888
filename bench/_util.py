"""Small helpers shared by the benchmarks (not part of the library)."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path


def shared_data(path: str | None) -> Path | None:
    cand = path or os.environ.get("ASSAY_SHARED_DATA") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    p = Path(cand)
    return p if p.is_dir() else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, indent=1) + "\n")
