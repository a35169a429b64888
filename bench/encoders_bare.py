"""Bare throughput of efficientnet-lite0: ONNX Runtime versus eager torch, side by side in one run.

The model alone, on pre-decoded, pre-processed random tensors ``[batch, 3, 224, 224]`` (no decoding, no
resizing): the ceiling that the embedding pipeline is measured against. Prints one JSON object.

    python bench/encoders_bare.py                      # batch 64, 3 timed batches per backend
    python bench/encoders_bare.py --batch 32 64 --batches 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def bare_items_per_s(encoder, batch: int, n_batches: int, warmup: int, rng: np.random.Generator) -> dict:
    """Items/s of ``encoder.embed_batch`` on random preprocessed tensors, after ``warmup`` untimed batches."""
    shape = getattr(encoder, "pixels_shape", None)
    if shape is not None:  # the input the embedding pipeline feeds it: uint8 pixels [batch, 224, 224, 3]
        x = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
    else:
        x = rng.uniform(-1.0, 1.0, size=(batch, *encoder.input_shape)).astype(np.float32)  # [batch, 3, H, W]
    for _ in range(warmup):
        encoder.embed_batch(x)
    times = []
    for _ in range(n_batches):
        t0 = time.perf_counter()
        encoder.embed_batch(x)
        times.append(time.perf_counter() - t0)
    total = float(sum(times))
    return {
        "items_per_s": round(batch * n_batches / total, 2),
        "best_batch_items_per_s": round(batch / min(times), 2),
        "seconds": round(total, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[64], help="batch sizes to time (default 64)")
    ap.add_argument("--batches", type=int, default=3, help="timed batches per backend and batch size")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    ap.add_argument("--backends", nargs="+", default=["onnx", "torch"], choices=["onnx", "torch"])
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: os.cpu_count())")
    ap.add_argument("--cache-dir", default=None, help="ONNX cache (default: a fresh temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from assay.encoders.efficientnet import EfficientNetLite0Encoder

    threads = args.threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="assay-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        result: dict = {
            "benchmark": "efficientnet-lite0 bare model (pre-processed random tensors)",
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "machine": platform.machine(),
            "batches_timed": args.batches,
            "results": {},
        }
        for backend in args.backends:
            enc = EfficientNetLite0Encoder(
                backend=backend, cache_dir=cache_dir, num_threads=threads, batch_size=max(args.batch)
            )
            t0 = time.perf_counter()
            enc.load()
            result.setdefault("load_seconds", {})[backend] = round(time.perf_counter() - t0, 3)
            for b in args.batch:
                rng = np.random.default_rng(args.seed)
                result["results"].setdefault(f"batch_{b}", {})[backend] = bare_items_per_s(
                    enc, b, args.batches, args.warmup, rng
                )
        if {"onnx", "torch"} <= set(args.backends):
            for res in result["results"].values():
                res["onnx_over_torch"] = round(res["onnx"]["items_per_s"] / res["torch"]["items_per_s"], 2)
        if "onnx" in args.backends:
            import onnxruntime

            result["onnxruntime"] = onnxruntime.__version__
        if "torch" in args.backends:
            import torch

            result["torch"] = torch.__version__
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
