"""10M items on one machine: catalog, precomputed-embedding import, sharded IVF-PQ, 5 SEALS rounds.

Synthetic corpus: ``--n`` L2-normalised vectors of dimension ``--dim`` (256) around 1,000 random centres,
float16, with a planted rare concept (``--rate``, 0.1 %) drawn as ``--concept-clusters`` (20) tight
clusters around one concept direction. Stages, each timed, with the process's peak RSS after it:

1. ``generate``: the vectors written as ``.npy`` + ``.ids.npy`` files (what a user who already has
   embeddings brings), in chunks of 500k rows;
2. ``catalog``: ``n`` items added to a SQLite catalog through :meth:`assay.catalog.Catalog.add_items`
   (batched ``executemany``);
3. ``import``: :func:`assay.precomputed.import_embeddings` (validates everything, L2-normalises, writes
   float16 shards to the workspace's vector store);
4. ``index``: :func:`assay.distributed.build_workspace_sharded_index`: one IVF-PQ codebook trained on a
   sample, ``--shards`` shards filled in parallel threads, saved, loaded memory-mapped; bytes per vector;
   recall@10 of the sharded index against exact search on ``--recall-queries`` corpus queries;
5. ``rounds``: ``--rounds`` (5) mining rounds with the simulated annotator: :func:`assay.loop.select_round`
   with the strategy from :func:`assay.simulate.make_strategy` (``seals:most-likely-positive`` by
   default: the SEALS pool grows from the neighbours of labelled items, searched in the sharded index),
   embeddings looked up in the memory-mapped store, the oracle answering from the planted truth. A seed of
   5 positives and 95 random items starts it, as in Coleman et al. (2022). Per round: seconds, pool size,
   fraction of the corpus scanned, positives found, recall of the concept's positives.

The baseline measured side by side is the full scan: its fraction scanned is 1 per round (every
unlabelled item scored), so ``scanned_fraction`` is also the ratio of SEALS work to full-scan work.

Usage::

    python bench/scale.py --n 200000          # development size (about a minute)
    python bench/scale.py                     # 10M (see docs/scale.md for the measured run)

Prints one JSON object and writes it to ``--out`` (default /work/notes/bench_scale.json when that folder
exists).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import emit, machine, peak_rss_mb


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def generate(folder: Path, n: int, d: int, seed: int, rate: float, n_clusters: int, chunk: int = 500_000) -> np.ndarray:
    """Write ``emb-XXXX.npy`` (float16 [m, d]) + ``emb-XXXX.ids.npy`` (item ids 1..n); return is_pos [n]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)  # [1000, d]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    concept = rng.standard_normal(d).astype(np.float32)
    concept /= np.linalg.norm(concept)
    # The concept's modes: tight clusters around (but not on) the concept direction.
    modes = concept + (0.8 / np.sqrt(d)) * rng.standard_normal((n_clusters, d)).astype(np.float32)  # [c, d]
    modes /= np.linalg.norm(modes, axis=1, keepdims=True)
    is_pos = np.zeros(n, dtype=bool)
    folder.mkdir(parents=True, exist_ok=True)
    for c, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        r = np.random.default_rng([seed, c])
        m = stop - start
        x = centres[r.integers(0, 1000, m)]  # [m, d]
        x = x + (0.9 / np.sqrt(d)) * r.standard_normal((m, d), dtype=np.float32)
        pos = r.random(m) < rate  # [m]
        k = int(pos.sum())
        x[pos] = modes[r.integers(0, n_clusters, k)] + (0.35 / np.sqrt(d)) * r.standard_normal((k, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.save(folder / f"emb-{c:04d}.npy", x.astype(np.float16))
        np.save(folder / f"emb-{c:04d}.ids.npy", np.arange(start + 1, stop + 1, dtype=np.int64))
        is_pos[start:stop] = pos
    return is_pos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.001)
    ap.add_argument("--concept-clusters", type=int, default=20)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default: 4 sqrt(n), at most 4096)")
    ap.add_argument("--m", type=int, default=32, help="PQ sub-quantizers (code bytes per vector at 8 bits)")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seals-k", type=int, default=100)
    ap.add_argument("--strategy", default="seals:most-likely-positive")
    ap.add_argument("--recall-queries", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the workspace goes (default: a temporary folder, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the workspace")
    ap.add_argument("--out", default="/work/notes/bench_scale.json")
    args = ap.parse_args()

    from assay.distributed import build_workspace_sharded_index
    from assay.index import ConcatRows, brute_force_search, make_spec, recall_at_k
    from assay.loop import select_round
    from assay.precomputed import import_embeddings
    from assay.simulate import make_strategy
    from assay.workspace import Workspace

    n, d = args.n, args.dim
    root = Path(args.workdir or tempfile.mkdtemp(prefix="assay-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict[str, float]] = {}

    def stage(name: str, t0: float) -> None:
        stages[name] = {"seconds": round(time.perf_counter() - t0, 2), "rss_mb": round(_rss_now_mb(), 1),
                        "peak_rss_mb": round(peak_rss_mb(), 1)}
        print(f"[scale] {name}: {stages[name]}", file=sys.stderr, flush=True)

    try:
        t0 = time.perf_counter()
        is_pos = generate(root / "emb", n, d, args.seed, args.rate, args.concept_clusters)
        stage("generate", t0)

        t0 = time.perf_counter()
        ws = Workspace.init(root / "ws", default_encoder="precomputed")
        cat = ws.catalog
        step = 100_000
        for start in range(0, n, step):
            cat.add_items([{"uri": f"synthetic://item/{i}", "size": 0} for i in range(start + 1, min(start + step, n) + 1)])
        catalog_bytes = os.path.getsize(root / "ws" / "catalog.db")
        stage("catalog", t0)

        t0 = time.perf_counter()
        rep = import_embeddings(ws, str(root / "emb"), name="precomputed")
        stage("import", t0)
        shutil.rmtree(root / "emb")  # the user's copy; the store holds its own

        t0 = time.perf_counter()
        nlist = args.nlist or int(min(4096, round(4 * np.sqrt(n))))
        spec = make_spec("ivf-pq", n, d, nlist=nlist, nprobe=args.nprobe, m=args.m, nbits=8,
                         train_size=min(n, max(40 * nlist, 65_536)))
        idx = build_workspace_sharded_index(ws, "precomputed", n_shards=args.shards, spec=spec, rng=args.seed)
        stage("index", t0)
        info = idx.info()

        store = ws.vectors("precomputed")
        rows = ConcatRows([s.vectors() for s in store.shards()])
        store_ids = store.ids()
        t0 = time.perf_counter()
        qrng = np.random.default_rng(args.seed + 1)
        qpos = np.sort(qrng.choice(n, args.recall_queries, replace=False))
        q = np.asarray(rows[qpos], dtype=np.float32)  # [q, d]
        t1 = time.perf_counter()
        _, I = idx.search(q, 10)
        search_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        _, Ie = brute_force_search(q, store_ids, rows, 10)
        exact_s = time.perf_counter() - t1
        index_recall = recall_at_k(I, Ie)
        stage("index_recall", t0)

        # ------------------------------------------------------------------ mining rounds
        t0 = time.perf_counter()
        truth_ids = np.arange(1, n + 1, dtype=np.int64)
        pos_ids = truth_ids[is_pos]
        n_pos = len(pos_ids)

        def oracle(ids: np.ndarray) -> np.ndarray:
            return is_pos[np.asarray(ids, dtype=np.int64) - 1]

        def vectors(ids: np.ndarray) -> np.ndarray:
            return store.get(np.asarray(ids, dtype=np.int64))

        def neighbors(ids: np.ndarray, k: int):
            return idx.search(vectors(ids), k)

        rng = np.random.default_rng(args.seed + 2)
        seed_pos = rng.choice(pos_ids, 5, replace=False)
        seed_other = rng.choice(truth_ids[~is_pos], 95, replace=False)
        lab_ids = np.concatenate([seed_pos, seed_other])
        lab_y = oracle(lab_ids)
        strat = make_strategy(args.strategy, seals_k=args.seals_k)
        _ = vectors(lab_ids[:1])  # build the store's id locator outside the timed rounds
        stage("rounds_setup", t0)
        rounds = []
        for rnd in range(1, args.rounds + 1):
            t1 = time.perf_counter()
            out = select_round(strategy=strat, n=args.batch, rng=rng, corpus_ids=truth_ids, vectors=vectors,
                               labelled_ids=lab_ids, labels=lab_y.astype(np.int8), neighbors=neighbors,
                               seed=args.seed * 1000 + rnd)
            secs = time.perf_counter() - t1
            y = oracle(out.ids)
            lab_ids = np.concatenate([lab_ids, out.ids])
            lab_y = np.concatenate([lab_y, y])
            found = int(lab_y.sum())
            rounds.append({
                "round": rnd, "seconds": round(secs, 3), "seconds_by_stage": {k: round(v, 3) for k, v in out.seconds.items()},
                "pool_size": int(out.pool_size), "scanned": int(out.scanned),
                "scanned_fraction": out.scanned / n, "batch_positives": int(y.sum()),
                "labels": len(lab_ids), "positives_found": found, "recall_of_positives": found / n_pos,
                "peak_rss_mb": round(peak_rss_mb(), 1),
            })
            print(f"[scale] round {rnd}: {rounds[-1]}", file=sys.stderr, flush=True)
        stage("rounds", t0)

        result = {
            "benchmark": "scale", "n": n, "dim": d, "dtype_at_rest": "float16", "concept_rate": args.rate,
            "concept_positives": n_pos, "machine": machine(),
            "stages": stages,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "catalog": {"backend": "sqlite", "bytes": catalog_bytes, "bytes_per_item": round(catalog_bytes / n, 1)},
            "import": {"embedded": rep.embedded, "shards": rep.shards, "items_per_s": round(rep.embedded / stages["import"]["seconds"], 1)},
            "vector_store_bytes": int(sum(p.stat().st_size for p in store.root.glob("shard-*.npy"))),
            "index": {**{k: info[k] for k in ("spec", "n_shards", "shard_counts", "code_bytes_per_vector",
                                              "bytes_per_vector", "file_bytes", "load_mode", "build_seconds")},
                      "recall_at_10": round(index_recall, 4), "recall_queries": args.recall_queries,
                      "search_s_per_query": round(search_s / args.recall_queries, 5),
                      "exact_s_per_query": round(exact_s / args.recall_queries, 5),
                      "speedup_vs_exact": round(exact_s / max(search_s, 1e-9), 1)},
            "rounds": {"strategy": args.strategy, "batch": args.batch, "seed_labels": 100, "per_round": rounds,
                       "mean_scanned_fraction": float(np.mean([r["scanned_fraction"] for r in rounds])),
                       "full_scan_fraction": 1.0,
                       "positives_found": rounds[-1]["positives_found"] if rounds else int(lab_y.sum()),
                       "recall_of_positives": rounds[-1]["recall_of_positives"] if rounds else None,
                       "mean_round_seconds": float(np.mean([r["seconds"] for r in rounds])) if rounds else None},
        }
        ws.close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    emit(result)
    out = Path(args.out)
    if out.parent.is_dir():
        out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
