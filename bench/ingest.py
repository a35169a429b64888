"""Benchmark: ingest of local files (hashing and header probing, no full decode), items/s.

Target: at least 2,000 items/s on the reference machine. Uses CIFAR-10 JPEGs written to a temporary folder
(from the shared data), or synthetic PNGs when the shared data is absent. Prints one JSON object.

    python bench/ingest.py [--data ../shared/data] [--n 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _util import emit, machine, peak_rss_mb, shared_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    from assay import Workspace, ingest
    from assay.datasets import write_cifar10

    out: dict = {"benchmark": "ingest", "machine": machine()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = shared_data(args.data)
        if data is not None:
            write_cifar10(data / "cifar10" / "cifar10_jpeg_bytes.npz", tmp / "c", n=args.n)
            folder, kind = tmp / "c" / "images", "cifar10 jpeg files"
        else:
            from PIL import Image

            folder, kind = tmp / "s", "synthetic png files"
            folder.mkdir()
            rng = np.random.default_rng(0)
            for i in range(args.n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        for name, url in (("sqlite", None),):
            ws = Workspace.init(tmp / f"ws-{name}")
            t0 = time.perf_counter()
            rep = ingest(ws.catalog, [folder])
            s = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = ingest(ws.catalog, [folder])
            s2 = time.perf_counter() - t0
            out[name] = {
                "files": kind, "items": rep.seen, "new": rep.new, "errors": rep.errors, "seconds": round(s, 3),
                "items_per_s": round(rep.seen / s, 1), "target_items_per_s": 2000,
                "reingest_items_per_s": round(again.seen / s2, 1), "reingest_new": again.new,
            }
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(out)


if __name__ == "__main__":
    main()
