"""Benchmark the mining loop with a simulated annotator on a labelled workspace (CIFAR-10 by default).

The protocol of :mod:`assay.simulate` (the SEALS paper's): each class in turn is the concept; its positives
are subsampled to ``--prevalence`` (0.5 %) of the pool (the train split); a seed of 5 positives and 95
negatives; batches of ``--batch`` (100) until ``--budget`` (1,000) labels, the seed included; AP of the
proxy on the whole test split; ``--seeds`` (3) seeds. Every strategy of a class and seed mines the same
corpus from the same seed, so full-scan and SEALS runs are compared side by side in the same run.

Prints one JSON object::

    {"protocol": {...},
     "classes": {"<class>": {"<strategy>": {"ap", "recall", "labels", "scanned_fraction",
                                             "seconds_per_round", ...}}},       # means over seeds
     "overall": {"<strategy>": {...}},                                       # means over classes
     "seals_vs_full": {"<base>": {"ap_ratio", "recall_ratio", "min_class_ap_ratio", ...}},
     "targets": {...}}

The workspace needs embeddings and items carrying ``label`` and ``split`` metadata (e.g. ingested from
``write_cifar10``'s manifest); it is only read. SEALS neighbours come from an exact (flat) FAISS index
over each simulated corpus, built in memory.

Usage::

    python bench/mining.py -w /work/cifar/ws                        # 10 classes x 3 seeds, ~20-40 min
    python bench/mining.py -w /work/cifar/ws --classes cat,ship --seeds 1 --budget 400
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_STRATEGIES = (
    "random,entropy,seals:entropy,most-likely-positive,seals:most-likely-positive,"
    "most-likely-positive@svm,seals:most-likely-positive@svm"
)


_STATE: dict = {}


def _one_class(cls: str) -> tuple[str, dict, dict]:
    """Simulate one class (in a worker process forked after the ground truth and index were loaded)."""
    import time as _time

    from threadpoolctl import threadpool_limits

    from assay.simulate import simulate

    gt, index, cfg_kw, out_dir = _STATE["gt"], _STATE["index"], _STATE["cfg"], _STATE["out"]
    from assay.simulate import SimulationConfig

    t0 = _time.perf_counter()
    with threadpool_limits(limits=_STATE["threads"]):
        res = simulate(gt, SimulationConfig(positive=cls, **cfg_kw), index=index,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{cls}: {_time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if out_dir:
        from assay.report import write_report

        write_report(res, Path(out_dir) / cls)
    proto = {k: res.protocol[k] for k in ("corpus_size", "pool_positives", "test_positives", "index_kind")}
    return cls, {name: _final(s) for name, s in res.summary.items()}, proto


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-w", "--workspace", default="/work/cifar/ws")
    ap.add_argument("--classes", default=None, help="Comma-separated classes (default: every class).")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--prevalence", type=float, default=0.005)
    ap.add_argument("--proxy", default="logistic")
    ap.add_argument("--seals-k", type=int, default=100)
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads per process (1 is fastest for these small fits).")
    ap.add_argument("--jobs", type=int, default=1, help="Classes simulated in parallel (forked processes).")
    ap.add_argument("--index-kind", default="auto", help="FAISS index for SEALS neighbours: auto | flat | hnsw.")
    ap.add_argument("--out", default=None, help="Also write the JSON and a report per class under this folder.")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _util import emit, machine, peak_rss_mb

    from assay import Workspace
    from assay.simulate import build_pool_index, load_ground_truth

    t_start = time.perf_counter()
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    ws = Workspace.open(args.workspace)
    t0 = time.perf_counter()
    gt = load_ground_truth(ws, encoder=args.encoder)
    load_s = time.perf_counter() - t0
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else gt.classes
    t0 = time.perf_counter()
    # One thread in the parent: GNU OpenMP does not survive a fork after a parallel region.
    with threadpool_limits(limits=args.threads if args.jobs == 1 else 1):
        index = build_pool_index(gt, args.index_kind) if any(s.startswith("seals:") for s in strategies) else None
    index_s = time.perf_counter() - t0
    _STATE.update(gt=gt, index=index, out=args.out, threads=args.threads, cfg=dict(
        prevalence=args.prevalence, budget=args.budget, batch=args.batch, seeds=args.seeds,
        strategies=strategies, proxy=args.proxy, seals_k=args.seals_k, index_kind=args.index_kind))
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(args.jobs) as workers:
            results = workers.map(_one_class, classes, chunksize=1)
    else:
        results = [_one_class(c) for c in classes]
    per_class = {cls: summ for cls, summ, _ in results}
    protocols = {cls: proto for cls, _, proto in results}

    overall = {}
    for name in strategies:
        rows = [per_class[c][name] for c in classes]
        overall[name] = {k: _mean([r[k] for r in rows]) for k in rows[0] if k != "labels"}
        overall[name]["labels"] = rows[0]["labels"]
        overall[name]["min_class_recall"] = min(r["recall"] for r in rows)
    ratios = {}
    for name in strategies:
        if not name.startswith("seals:") or name.partition(":")[2] not in strategies:
            continue
        base = name.partition(":")[2]
        cls_ap = [per_class[c][name]["ap"] / per_class[c][base]["ap"] for c in classes]
        cls_rec = [per_class[c][name]["recall"] / per_class[c][base]["recall"] for c in classes]
        o, b = overall[name], overall[base]
        ratios[base] = {
            "ap_ratio": o["ap"] / b["ap"], "recall_ratio": o["recall"] / b["recall"],
            "min_class_ap_ratio": min(cls_ap), "min_class_recall_ratio": min(cls_rec),
            "scanned_fraction_seals": o["scanned_fraction"], "scanned_fraction_full": b["scanned_fraction"],
            "scanned_fraction_cumulative_seals": o["scanned_fraction_cumulative"],
            "seconds_per_round_seals": o["seconds_per_round"], "seconds_per_round_full": b["seconds_per_round"],
            "seconds_ratio": o["seconds_per_round"] / b["seconds_per_round"],
            "select_seconds_ratio": o["select_seconds_per_round"] / b["select_seconds_per_round"],
        }
    best = max(strategies, key=lambda n: overall[n]["recall"])
    targets = {
        "seals_ap_and_recall_at_least_0.98_of_full": bool(ratios) and all(
            r["ap_ratio"] >= 0.98 and r["recall_ratio"] >= 0.98 for r in ratios.values()),
        "best_strategy": best, "best_recall": overall[best]["recall"],
        "best_recall_at_least_0.75": overall[best]["recall"] >= 0.75,
    }
    out = {
        "benchmark": "mining", "workspace": str(ws.root), "encoder": args.encoder or ws.default_encoder,
        "protocol": {"classes": classes, "seeds": args.seeds, "budget": args.budget, "batch": args.batch,
                     "prevalence": args.prevalence, "proxy": args.proxy, "seals_k": args.seals_k,
                     "index_kind": index.spec.kind if index is not None else None,
                     "seed": "5 positives + 95 negatives, counted in the budget", "per_class": protocols},
        "classes": per_class, "overall": overall, "seals_vs_full": ratios, "targets": targets,
        "load_seconds": load_s, "index_seconds": index_s, "jobs": args.jobs, "total_seconds": time.perf_counter() - t_start, "peak_rss_mb": peak_rss_mb(),
        "threads": args.threads, "machine": machine(),
    }
    if args.out:
        import json

        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "mining.json").write_text(json.dumps(out, indent=1) + "\n")
    emit(out)


_KEYS = ("ap", "recall", "labels", "positives_found", "scanned_fraction", "scanned_fraction_cumulative",
         "seconds_per_round", "select_seconds_per_round", "mining_precision", "ap_gain_per_1000", "coverage",
         "novelty_hit_rate")


def _final(s: dict) -> dict:
    return {k: s.get(k) for k in _KEYS}


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
