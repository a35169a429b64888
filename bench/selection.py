"""Benchmark one selection round: full scan versus SEALS, at 1M and 10M items.

Synthetic corpus: ``n`` L2-normalised vectors of dimension ``--dim`` (256), float16 at rest in an
``np.memmap`` on a temporary file, drawn around 1,000 random centres, with a planted rare concept
(0.1 % of the items lean towards a concept direction). 1,000 labelled items: 50 known positives and
950 random items; the last ``--batch`` of them are "newly labelled" this round. The proxy is the
class-weighted logistic regression of :mod:`assay.learn`, scoring pool items straight from the fp16
memmap.

Per size and strategy (entropy, k-center, information density) the script times:

* ``full_s``: the round over the full pool (every unlabelled item): score, then select a batch.
  Full scans estimated above ``--max-full-s`` (default 600 s) are not run: the strategy runs on a
  measured prefix of the pool (``full_part``) and the time is scaled linearly by pool size (every
  cost of these strategies is linear in the pool; k-center is timed at 1 and at 11 picks, best of
  two after a warm-up, and extrapolated to the batch). ``full_estimated`` says which.
* ``seals_s``: the steady-state SEALS round, as a mining loop runs it: the SEALS pool already holds
  the neighbourhoods of the 900 items labelled in earlier rounds (an untimed warm-up round), and this
  round adds the neighbours of the newly labelled items, scores the pool with this round's proxy and
  selects. As a mining loop would, the caller keeps float32 vectors of items seen in earlier rounds
  (:class:`~assay.select.strategies.CachedVectors`) and, for information density, their
  neighbourhoods (:class:`~assay.select.pools.CachedNeighbors`, valid while the index is unchanged),
  so only new pool items are fetched and searched. Scores are always recomputed.
  ``seals_knn_search_s`` is the part of it spent in index searches.
* ``seals_cold_s``: the same round from nothing: all 1,000 labelled items' neighbourhoods searched,
  every pool vector read from the fp16 memmap, no caches.

SEALS neighbours come from a FAISS IVF index (``IVF<nlist>_HNSW32,SQ8``, nlist the power of two nearest
4 sqrt(n): 4,096 at 1M, 16,384 at 10M; inner product; ``nprobe`` 8; its recall@k against exact search on 50
labelled items is reported as ``index_recall_at_k``) built once; its build time is
reported apart and excluded from the rounds, as in Coleman et al. (2022). ``scanned_fraction`` is
the SEALS pool size over the corpus size (the items whose scores the round computes; the full scan's
is ~1).

Usage::

    python bench/selection.py                      # 1M, then 10M if memory allows
    python bench/selection.py --sizes 1000000      # one size only
    python bench/selection.py --sizes 200000 --max-full-s 60   # a quick run

Prints one JSON object.
"""

from __future__ import annotations

import os
import sys

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from assay.learn import LogisticProxy, proba_fn  # noqa: E402
from assay.select.pools import CachedNeighbors, full_pool  # noqa: E402
from assay.select.strategies import (  # noqa: E402
    CachedVectors,
    EntropyStrategy,
    InformationDensityStrategy,
    KCenterStrategy,
    SealsStrategy,
    SelectionContext,
    vectors_by_row,
)

STRATEGIES = ("entropy", "k-center", "information-density")


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def make_corpus(path: str, n: int, d: int, seed: int, rate: float = 0.001, chunk: int = 500_000):
    """fp16 memmap [n, d] of unit vectors around 1,000 centres with a planted concept: (mm, is_pos)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    concept = rng.standard_normal(d).astype(np.float32)
    concept /= np.linalg.norm(concept)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    is_pos = np.zeros(n, dtype=bool)
    for c, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        r = np.random.default_rng([seed, c])
        m = stop - start
        x = centres[r.integers(0, 1000, m)]  # [m, d]
        x = x + (0.9 / np.sqrt(d)) * r.standard_normal((m, d), dtype=np.float32)
        pos = r.random(m) < rate
        x[pos] = concept + (1.1 / np.sqrt(d)) * r.standard_normal((int(pos.sum()), d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        mm[start:stop] = x
        is_pos[start:stop] = pos
    mm.flush()
    return np.load(path, mmap_mode="r"), is_pos


def default_nlist(n: int) -> int:
    """IVF lists: the power of two nearest 4 * sqrt(n) (FAISS's guideline is 4-16 * sqrt(n)), at least 256."""
    return max(256, 1 << round(np.log2(4.0 * np.sqrt(n))))


def index_spec(nlist: int) -> str:
    """IVF with an HNSW coarse quantizer (assigning 10M vectors to 16k flat centroids would take longer than
    everything else here), scalar-quantised to 8 bits."""
    return f"IVF{nlist}_HNSW32,SQ8"


def build_index(mm, nlist: int, seed: int, nprobe: int):
    import faiss

    n, d = mm.shape
    rng = np.random.default_rng(seed)
    train_n = min(n, max(16 * nlist, 100_000))
    train = np.asarray(mm[np.sort(rng.choice(n, train_n, replace=False))], dtype=np.float32)
    index = faiss.index_factory(d, index_spec(nlist), faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    index.train(train)
    del train
    for start in range(0, n, 500_000):
        index.add(np.asarray(mm[start : start + 500_000], dtype=np.float32))
    index.nprobe = nprobe
    return index


def neighbour_recall(mm, index, q_ids, k: int, block: int = 500_000) -> float:
    """Recall@k of the index's neighbours of ``q_ids`` against an exact blockwise scan (self excluded)."""
    Q = np.asarray(mm[np.sort(q_ids)], dtype=np.float32)  # [q, d]
    q_ids = np.sort(q_ids)
    best_s = np.full((Q.shape[0], k + 1), -np.inf, dtype=np.float32)
    best_i = np.full((Q.shape[0], k + 1), -1, dtype=np.int64)
    for start in range(0, mm.shape[0], block):
        S = Q @ np.asarray(mm[start : start + block], dtype=np.float32).T  # [q, b]
        cs = np.concatenate([best_s, S], axis=1)
        ci = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + S.shape[1]), S.shape)], axis=1)
        top = np.argpartition(-cs, k, axis=1)[:, : k + 1]
        best_s, best_i = np.take_along_axis(cs, top, 1), np.take_along_axis(ci, top, 1)
    _, got = index.search(Q, k + 1)  # [q, k+1]
    hits = 0
    for j, qid in enumerate(q_ids):
        exact = set(best_i[j].tolist()) - {int(qid)}
        exact = set(sorted(exact, key=lambda i: -best_s[j][best_i[j] == i][0])[:k])
        found = set(got[j].tolist()) - {int(qid), -1}
        hits += len(exact & found)
    return hits / (k * len(q_ids))


def make_neighbors(index, vectors, clock=None):
    """``neighbors_fn`` over the FAISS index; ``clock["s"]`` accumulates the seconds spent in it."""

    def neighbors_fn(ids, k):
        t0 = time.perf_counter()
        q = np.ascontiguousarray(vectors(np.asarray(ids, dtype=np.int64)), dtype=np.float32)
        sims, nbrs = index.search(q, k)
        if clock is not None:
            clock["s"] += time.perf_counter() - t0
        return sims, nbrs  # row id == item id: the index was filled in id order

    return neighbors_fn


def _strategy(name: str, density_k: int):
    if name == "entropy":
        return EntropyStrategy()
    if name == "k-center":
        return KCenterStrategy()
    return InformationDensityStrategy(k=density_k)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def full_round(name, ctx, pool, batch, density_k, max_full_s, part, seed):
    """Time the full-scan round, or estimate it from a prefix of the pool when it would be too long."""
    strat = _strategy(name, density_k)
    m = min(part, pool.size)
    sub = ctx.replace(pool_ids=pool[:m])
    scale = pool.size / m
    if name == "k-center":
        # streamed like the full pool would be when it does not fit the float32 cache
        stream = (
            KCenterStrategy(cache_bytes=1)
            if pool.size * ctx.vectors(pool[:1]).shape[1] * 4 > (1 << 30)
            else strat
        )
        picks = min(11, batch)
        stream.select(sub, 1, seed)  # warm-up: pages of the part in memory, like the other timings
        t1 = min(_timed(lambda: stream.select(sub, 1, seed))[0] for _ in range(2))
        tk = min(_timed(lambda: stream.select(sub, picks, seed))[0] for _ in range(2))
        per_pick = max(tk - t1, 0.0) / max(picks - 1, 1)
        estimate = scale * (t1 + (batch - 1) * per_pick)
        detail = {"part_items": int(m), "part_1pick_s": round(t1, 3), f"part_{picks}picks_s": round(tk, 3)}
    else:
        tp, _ = _timed(lambda: strat.select(sub, batch, seed))
        estimate = scale * tp
        detail = {"part_items": int(m), "part_s": round(tp, 3)}
    if estimate <= max_full_s:
        t, sel = _timed(lambda: _strategy(name, density_k).select(ctx, batch, seed))
        return t, False, sel, {"estimate_from_part_s": round(estimate, 2), **detail}
    return estimate, True, None, detail


def seals_round(name, ctx_prev, ctx_now, model, vectors, index, batch, density_k, k, seed):
    """Steady state: warm-up round on earlier labels (untimed), then the timed round with new labels.

    The steady state uses the caller-owned caches a mining loop keeps for a session: float32 vectors
    of items seen before (:class:`CachedVectors`) and, for density, their neighbourhoods
    (:class:`CachedNeighbors`). The cold round uses neither.
    """
    cached = CachedVectors(vectors)
    clock = {"s": 0.0}
    nbrs_cached_vec = make_neighbors(index, cached, clock)
    density_cache = CachedNeighbors(nbrs_cached_vec)
    warm = dict(vectors=cached, proba=proba_fn(model, cached), neighbors=nbrs_cached_vec)
    if name == "information-density":
        warm["neighbors"] = density_cache
    strat = SealsStrategy(_strategy(name, density_k), k=k)
    strat.select(ctx_prev.replace(**warm), batch, seed)  # the previous round: builds the pool and caches
    searched_before = density_cache.n_computed
    clock["s"] = 0.0
    t, sel = _timed(lambda: strat.select(ctx_now.replace(**warm), batch, seed))
    knn_s = clock["s"]
    new_density_queries = (
        density_cache.n_computed - searched_before - (ctx_now.labelled_ids.size - ctx_prev.labelled_ids.size)
    )
    cold = SealsStrategy(_strategy(name, density_k), k=k)
    cold_ctx = ctx_now.replace(
        vectors=vectors, proba=proba_fn(model, vectors), neighbors=make_neighbors(index, vectors)
    )
    tc, _ = _timed(lambda: cold.select(cold_ctx, batch, seed))
    return t, tc, sel, new_density_queries, knn_s


def run_size(n, args, workdir):
    d = args.dim
    out = {"n": n}
    path = os.path.join(workdir, f"assay_bench_select_{n}.npy")
    t_gen, (mm, is_pos) = _timed(lambda: make_corpus(path, n, d, args.seed))
    out["generate_s"] = round(t_gen, 2)
    out["positives"] = int(is_pos.sum())
    try:
        vectors = vectors_by_row(mm)
        rng = np.random.default_rng(args.seed + 1)
        pos_ids = np.flatnonzero(is_pos)
        known = rng.choice(pos_ids, size=min(50, pos_ids.size), replace=False)
        rest = rng.choice(np.setdiff1d(np.arange(n), known), size=args.labelled - known.size, replace=False)
        order = np.concatenate([known, rest])  # labelling order; the last --batch are this round's
        labelled_all = np.sort(order)
        labelled_prev = np.sort(order[: args.labelled - args.batch])
        t_fit, model = _timed(
            lambda: LogisticProxy().fit(
                np.asarray(vectors(labelled_all), dtype=np.float32), is_pos[labelled_all].astype(int)
            )
        )
        out["proxy_fit_s"] = round(t_fit, 3)
        proba = proba_fn(model, vectors)

        nlist = args.nlist or default_nlist(n)
        t_idx, index = _timed(lambda: build_index(mm, nlist, args.seed, args.nprobe))
        out["index"] = f"{index_spec(nlist)} nprobe={args.nprobe}"
        out["index_build_s"] = round(t_idx, 2)
        neighbors_fn = make_neighbors(index, vectors)
        out["index_recall_at_k"] = round(neighbour_recall(mm, index, labelled_all[:: max(1, labelled_all.size // 50)][:50], args.k), 4)

        pool = full_pool(np.arange(n, dtype=np.int64), labelled_ids=labelled_all)
        base = dict(vectors=vectors, proba=proba, corpus_size=n)
        ctx_full = SelectionContext(pool_ids=pool, labelled_ids=labelled_all, neighbors=neighbors_fn, **base)
        ctx_prev = SelectionContext(labelled_ids=labelled_prev, **base)
        ctx_now = SelectionContext(labelled_ids=labelled_all, **base)

        rows = []
        for name in args.strategies:
            full_s, estimated, sel_full, detail = full_round(
                name,
                ctx_full,
                pool,
                args.batch,
                args.density_k,
                args.max_full_s,
                args.density_part if name == "information-density" else args.full_part,
                args.seed,
            )
            seals_s, seals_cold_s, sel_seals, new_q, knn_s = seals_round(
                name, ctx_prev, ctx_now, model, vectors, index, args.batch, args.density_k, args.k, args.seed
            )
            row = {
                "n": n,
                "strategy": name,
                "full_s": round(full_s, 3),
                "seals_s": round(seals_s, 4),
                "speedup": round(full_s / seals_s, 1),
                "scanned_fraction": round(sel_seals.scanned_fraction, 5),
                "full_estimated": estimated,
                "full_detail": detail,
                "seals_knn_search_s": round(knn_s, 4),
                "seals_cold_s": round(seals_cold_s, 3),
                "speedup_cold": round(full_s / seals_cold_s, 1),
                "seals_pool_size": int(sel_seals.pool_size),
                "positives_in_batch_seals": int(is_pos[sel_seals.ids].sum()),
                "positives_in_batch_full": None if sel_full is None else int(is_pos[sel_full.ids].sum()),
            }
            if name == "information-density":
                row["density_neighbour_searches_this_round"] = int(new_q)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        out["results"] = rows
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--labelled", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100, help="items selected per round; also the newly labelled")
    p.add_argument("--k", type=int, default=100, help="SEALS neighbours per labelled item")
    p.add_argument("--density-k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (default: the power of two nearest 4 sqrt(n))")
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument(
        "--max-full-s",
        type=float,
        default=600.0,
        help="full scans estimated above this are extrapolated from a measured part",
    )
    p.add_argument(
        "--full-part", type=int, default=200_000, help="pool items in the measured part (entropy, k-center)"
    )
    p.add_argument(
        "--density-part",
        type=int,
        default=20_000,
        help="pool items in the measured part of information density",
    )
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=tempfile.gettempdir())
    args = p.parse_args(argv)

    import faiss

    report = {
        "bench": "select",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
        },
        "params": {k: v for k, v in vars(args).items() if k != "workdir"},
        "results": [],
        "sizes": [],
        "skipped": [],
    }
    warnings.simplefilter("ignore")
    for n in args.sizes:
        need = n * args.dim * 2 * 1.6 + (2 << 30)  # fp16 corpus in page cache + SQ8 index + working set
        avail = _available_bytes()
        if avail and need > avail:
            report["skipped"].append(
                {"n": n, "reason": f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"}
            )
            continue
        size_report = run_size(n, args, args.workdir)
        report["results"].extend(size_report.pop("results"))
        report["sizes"].append(size_report)
    report["notes"] = [
        "seals_s is the steady-state round (neighbours of the newly labelled items only; float32 vectors "
        "and density neighbourhoods of earlier pool items served from caller-owned caches; all scores "
        "recomputed with this round's proxy); seals_cold_s builds the pool from all labelled items with "
        "no cache.",
        "full_estimated=true: the full scan was not run; its time is the measured part scaled linearly "
        "by pool size (k-center: from 1 and 11 picks, extrapolated to the batch).",
        "information density in the full scan searches the neighbours of every pool item; index build "
        "time is excluded from every round.",
    ]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
