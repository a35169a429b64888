"""Benchmark: items/s of the whole `assay embed` path versus the bare model on pre-decoded tensors.

Runs on the CIFAR-10 JPEGs and on the ImageNet sample photos from the shared data, measured in the same
run. Prints one JSON object: per dataset, pipeline items/s, bare-model items/s, their ratio (target >= 0.8),
and the process's peak memory.

    python bench/embed.py [--data ../shared/data] [--cifar-n 2000] [--encoder efficientnet-lite0]
                          [--repeats 3] [--datasets cifar10,imagenet_sample]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _util import emit, machine, peak_rss_mb, shared_data


def bare_items_per_s(enc, tensors: np.ndarray, batch_size: int) -> float:
    enc.embed_batch(tensors[:batch_size])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, len(tensors), batch_size):
        enc.embed_batch(tensors[s : s + batch_size])
    return len(tensors) / (time.perf_counter() - t0)


def run_dataset(name: str, manifest: Path, encoder: str, batch_size: int, tmp: Path, repeats: int = 1) -> dict:
    """Bare model and whole pipeline, measured ``repeats`` times in alternation; medians are reported."""
    from assay import Workspace, embed, get_encoder, ingest
    from assay.embed import model_input
    from assay.encoders.base import draft_size
    from assay.media import decode_image, decode_pixels, read_bytes

    enc = get_encoder(encoder)
    enc.load()
    # The same model as one ONNX session with all the threads (replicas=1), for comparison with the default
    # layout of several sessions side by side; the ratio below uses the default (the faster bare model).
    single = None
    if hasattr(enc, "session_layout") and enc.session_layout()[0] > 1 and getattr(enc, "backend", "") == "onnx":
        single = get_encoder(encoder, replicas=1)
        single.load()
    bares, pipes, ingests, singles = [], [], [], []
    decode_s = 0.0
    rows: list = []
    errors = 0
    for rep in range(repeats):
        ws = Workspace.init(tmp / f"ws-{name}-{rep}", default_encoder=encoder)
        t0 = time.perf_counter()
        ing = ingest(ws.catalog, [manifest])
        ingests.append(ing.seen / (time.perf_counter() - t0))
        rows = ws.catalog.get_many(ws.catalog.ids())
        # Bare model: decode and preprocess everything first (timed apart), then time inference only.
        t0 = time.perf_counter()
        prep = model_input(enc)  # what the pipeline feeds the model (uint8 pixels for efficientnet)
        # the pipeline's own decode: numpy pixels where the encoder takes them, else Pillow images
        decode = decode_pixels if getattr(enc, "takes_pixels", False) else decode_image
        tensors = np.stack([prep(decode(read_bytes(r.uri), draft_size=draft_size(enc))) for r in rows])
        decode_s = time.perf_counter() - t0
        bares.append(bare_items_per_s(enc, tensors, batch_size))
        if single is not None:
            singles.append(bare_items_per_s(single, tensors, batch_size))
        del tensors
        # The whole pipeline: read, decode, preprocess, infer, store.
        t0 = time.perf_counter()
        rep_ = embed(ws, enc, batch_size=batch_size)
        pipes.append(rep_.embedded / (time.perf_counter() - t0))
        errors = rep_.errors
    bare, pipeline = float(np.median(bares)), float(np.median(pipes))
    layout = {}
    if hasattr(enc, "session_layout"):
        layout["onnx_sessions_x_threads"] = list(enc.session_layout())
    if singles:
        layout["bare_model_one_session_items_per_s"] = round(float(np.median(singles)), 2)
        layout["pipeline_to_one_session_bare"] = round(pipeline / float(np.median(singles)), 3)
    return {
        "items": len(rows),
        "repeats": repeats,
        "ingest_items_per_s": round(float(np.median(ingests)), 1),
        "decode_preprocess_items_per_s_serial": round(len(rows) / decode_s, 1),
        "bare_model_items_per_s": round(bare, 2),
        "pipeline_items_per_s": round(pipeline, 2),
        "ratio_pipeline_to_bare": round(pipeline / bare, 3),
        "ratios_per_repeat": [round(p / b, 3) for p, b in zip(pipes, bares)],
        # each repeat measures bare and pipeline back to back: the median of their ratios cancels slow drift
        # in a shared machine's speed, which the ratio of the two medians does not
        "median_ratio_per_repeat": round(float(np.median([p / b for p, b in zip(pipes, bares)])), 3),
        "target_ratio": 0.8,
        "errors": errors,
        **layout,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=None)
    ap.add_argument("--cifar-n", type=int, default=2000)
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="bare/pipeline measurements in alternation (median)")
    ap.add_argument("--datasets", default="cifar10,imagenet_sample", help="comma-separated subset")
    args = ap.parse_args()
    from assay.datasets import write_cifar10, write_imagenet_sample

    data = shared_data(args.data)
    if data is None:
        emit({"benchmark": "embed", "skipped": "shared data not found (pass --data or set ASSAY_SHARED_DATA)"})
        return
    out: dict = {"benchmark": "embed", "encoder": args.encoder, "batch_size": args.batch_size, "machine": machine()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        wanted = set(args.datasets.split(","))
        if "cifar10" in wanted:
            cifar = write_cifar10(data / "cifar10" / "cifar10_jpeg_bytes.npz", tmp / "cifar", n=args.cifar_n)
            out["cifar10"] = run_dataset("cifar10", cifar, args.encoder, args.batch_size, tmp, args.repeats)
        if "imagenet_sample" in wanted:
            inet = write_imagenet_sample(data / "imagenet-sample" / "imagenet-sample.tar", tmp / "inet")
            out["imagenet_sample"] = run_dataset("imagenet", inet, args.encoder, args.batch_size, tmp, args.repeats)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(out)


if __name__ == "__main__":
    main()
