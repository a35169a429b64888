"""Benchmark: duplicate detection, speed and quality. Prints one JSON object.

Sections
--------
embedding    near-duplicate grouping of ``--n`` synthetic unit vectors (d=256, float16 at rest) with planted
             duplicate groups: the fast path (IVF index, kNN widened until every neighbour above the threshold
             is found, exact re-scoring, union-find) against exact brute force (blockwise range search)
             measured on an ``--exact-n`` subset in the same run and scaled as N^2; the fast path is also run
             on that subset, for its recall against the exact pairs.
phash        pHash on real photos (CIFAR-10 and the ImageNet sample), decode and hashing timed apart (and the
             embedding of the same photos, for comparison); then grouping of ``--phash-n`` synthetic 64-bit
             hashes with planted near copies through FAISS binary multi-index hashing, against the
             exhaustive binary scan measured on an ``--exact-n`` subset and scaled as N^2.
quality      planted near duplicates (JPEG q30-50, 0.5x, 80-90 % crop, colour jitter, text, flip) of
             ``--originals`` ImageNet-sample photos plus ``--cifar-per-class`` CIFAR-10 photos per class:
             pair precision/recall of each method at its best cut-off and at the defaults, per-transform
             recall, and the false-positive rate among distinct photos of the same class.

    python bench/dedup.py [--n 1000000] [--exact-n 100000] [--phash-n 1000000] [--data ../shared/data]
    python bench/dedup.py --n 50000 --exact-n 10000 --phash-n 50000 --originals 40 --cifar-per-class 20
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import numpy as np

from _util import emit, machine, peak_rss_mb, shared_data


# ------------------------------------------------------------------------------------------------ data


def planted_vectors(n: int, d: int, rng: np.random.Generator, group_frac: float, sigma: float):
    """float16 ``[n, d]`` unit vectors and int64 ``[n]`` families: ``group_frac`` of the items sit in planted
    groups of 2-5 noisy copies of one base vector (cosine to the base ~ 1 / sqrt(1 + sigma^2))."""
    x = np.empty((n, d), dtype=np.float16)
    for s in range(0, n, 65536):
        b = rng.standard_normal((min(65536, n - s), d)).astype(np.float32)  # [b, d]
        x[s : s + len(b)] = b / np.linalg.norm(b, axis=1, keepdims=True)
    family = np.arange(n, dtype=np.int64)
    n_in_groups = int(n * group_frac)
    perm = rng.permutation(n)
    pos = 0
    while pos < n_in_groups:
        size = int(rng.integers(2, 6))
        members = perm[pos : pos + size]
        pos += size
        if len(members) < 2:
            break
        base = x[members[0]].astype(np.float32)
        noise = sigma * rng.standard_normal((len(members) - 1, d)).astype(np.float32) / np.sqrt(d)
        y = base + noise
        x[members[1:]] = y / np.linalg.norm(y, axis=1, keepdims=True)
        family[members] = members[0]
    return x, family


def planted_codes(n: int, rng: np.random.Generator, group_frac: float, max_flip: int):
    """uint8 ``[n, 8]`` random 64-bit hashes with planted groups of near copies (up to ``max_flip`` bits)."""
    codes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    family = np.arange(n, dtype=np.int64)
    n_in = int(n * group_frac)
    perm = rng.permutation(n)
    pos = 0
    while pos < n_in:
        size = int(rng.integers(2, 6))
        members = perm[pos : pos + size]
        pos += size
        if len(members) < 2:
            break
        bits = np.unpackbits(codes[members[0]])  # [64]
        for m in members[1:]:
            b = bits.copy()
            b[rng.choice(64, size=int(rng.integers(0, max_flip + 1)), replace=False)] ^= 1
            codes[m] = np.packbits(b)
        family[members] = members[0]
    return codes, family


def planted_pair_truth(family: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of positions sharing a family (positions are the ids here)."""
    order = np.argsort(family, kind="stable")
    f = family[order]
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
    ends = np.r_[starts[1:], len(f)]
    out = set()
    for s, e in zip(starts, ends):
        if e - s >= 2:
            m = np.sort(order[s:e])
            for a in range(len(m)):
                for b in range(a + 1, len(m)):
                    out.add((int(m[a]), int(m[b])))
    return out


def pair_set(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(i.tolist(), j.tolist()))


# ------------------------------------------------------------------------------------------------ embedding


def bench_embedding(n: int, exact_n: int, d: int, threshold: float, nprobe: int, seed: int) -> dict:
    from assay.dedup import embedding_pairs, group_duplicates
    from assay.index import VectorIndex, range_pairs

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    x, family = planted_vectors(n, d, rng, group_frac=0.03, sigma=0.3)
    gen_s = time.perf_counter() - t0
    ids = np.arange(n, dtype=np.int64)
    truth = planted_pair_truth(family)
    # planted pairs that really are above the threshold (noise can push a few below)
    ti = np.array([a for a, _ in truth], dtype=np.int64)
    tj = np.array([b for _, b in truth], dtype=np.int64)
    cos = (
        np.einsum("nd,nd->n", x[ti].astype(np.float32), x[tj].astype(np.float32)) if len(ti) else np.zeros(0)
    )
    truth_above = {p for p, c in zip(truth, cos) if c >= threshold}

    def fast(sub_ids, sub_x):
        t = time.perf_counter()
        index = VectorIndex(spec="ivf", dim=d).build(sub_ids, sub_x, rng=seed)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        i, j, s = embedding_pairs(sub_ids, sub_x, threshold, index=index, k=8, nprobe=nprobe)
        search_s = time.perf_counter() - t
        t = time.perf_counter()
        groups = group_duplicates(i, j)
        group_s = time.perf_counter() - t
        info = index.info()
        del index
        return {
            "index": {k: info[k] for k in ("kind", "count") if k in info}
            | {"spec": str(info.get("spec", ""))},
            "nprobe": nprobe,
            "build_s": round(build_s, 2),
            "search_s": round(search_s, 2),
            "group_s": round(group_s, 3),
            "total_s": round(build_s + search_s + group_s, 2),
            "pairs": int(len(i)),
            "groups": len(groups),
            "removed": int(sum(len(m) - 1 for m in groups.values())),
        }, (i, j)

    out: dict = {
        "n": n,
        "dim": d,
        "threshold": threshold,
        "dtype_at_rest": "float16",
        "generate_s": round(gen_s, 2),
        "planted_pairs": len(truth),
        "planted_pairs_above_threshold": len(truth_above),
    }
    full, (i, j) = fast(ids, x)
    found = pair_set(i, j)
    full["recall_planted"] = round(len(found & truth_above) / max(len(truth_above), 1), 4)
    full["precision_planted"] = round(len(found & truth) / max(len(found), 1), 4)
    out["fast_full"] = full

    m = min(exact_n, n)
    sub = np.arange(m, dtype=np.int64)
    t = time.perf_counter()
    ei, ej, _ = range_pairs(sub, x[:m], threshold, block_size=4096)
    exact_search_s = time.perf_counter() - t
    t = time.perf_counter()
    group_duplicates(ei, ej)
    exact_group_s = time.perf_counter() - t
    exact_total = exact_search_s + exact_group_s
    sub_fast, (fi, fj) = fast(sub, x[:m])
    exact_pairs = pair_set(ei, ej)
    sub_fast["recall_vs_exact"] = round(len(pair_set(fi, fj) & exact_pairs) / max(len(exact_pairs), 1), 4)
    scaled = exact_total * (n / m) ** 2
    out["exact_subset"] = {
        "n": m,
        "search_s": round(exact_search_s, 2),
        "group_s": round(exact_group_s, 3),
        "total_s": round(exact_total, 2),
        "pairs": len(exact_pairs),
    }
    out["fast_subset"] = sub_fast
    out["exact_scaled_to_n_s"] = round(scaled, 1)
    out["speedup_vs_exact_scaled"] = round(scaled / full["total_s"], 1)
    out["speedup_on_subset"] = round(exact_total / sub_fast["total_s"], 2)
    return out


# ------------------------------------------------------------------------------------------------ pHash


def real_photos(data: Path, n_cifar: int, rng: np.random.Generator) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    npz = data / "cifar10" / "cifar10_jpeg_bytes.npz"
    if npz.exists():
        z = np.load(npz, allow_pickle=False)
        jpeg, offsets = z["jpeg"], z["offsets"]
        pick = rng.choice(len(offsets) - 1, size=n_cifar, replace=False)
        out["cifar10"] = [jpeg[offsets[i] : offsets[i + 1]].tobytes() for i in pick]
    tar = data / "imagenet-sample" / "imagenet-sample.tar"
    if tar.exists():
        with tarfile.open(tar) as tf:
            out["imagenet_sample"] = [
                tf.extractfile(m).read()
                for m in tf.getmembers()
                if m.isfile() and m.name.lower().endswith(".jpeg")
            ]
    return out


def bench_phash_real(photos: dict[str, list[bytes]], embed_n: int) -> dict:
    from assay.dedup import PHASH_DRAFT, hamming_pairs, phash_image
    from assay.media import decode_image

    res = {}
    enc = None
    for name, blobs in photos.items():
        t_dec = t_hash = 0.0
        codes = np.zeros((len(blobs), 8), dtype=np.uint8)
        for r, b in enumerate(blobs):
            t = time.perf_counter()
            im = decode_image(b, draft_size=PHASH_DRAFT)
            t_dec += time.perf_counter() - t
            t = time.perf_counter()
            codes[r] = phash_image(im)
            t_hash += time.perf_counter() - t
        t = time.perf_counter()
        i, _, _ = hamming_pairs(np.arange(len(blobs), dtype=np.int64), codes, 8)
        group_s = time.perf_counter() - t
        entry = {
            "images": len(blobs),
            "decode_s": round(t_dec, 3),
            "hash_s": round(t_hash, 3),
            "decode_ms_per_image": round(1000 * t_dec / len(blobs), 3),
            "hash_ms_per_image": round(1000 * t_hash / len(blobs), 3),
            "images_per_s_one_thread": round(len(blobs) / (t_dec + t_hash), 1),
            "pairs_within_8_bits": int(len(i)),
            "binary_search_s": round(group_s, 4),
        }
        # the embedding route on the same photos, for comparison (decode at the encoder's size + inference)
        if embed_n > 0:
            try:
                from assay.encoders.base import get_encoder

                if enc is None:
                    enc = get_encoder("efficientnet-lite0")
                    enc.load()
                sub = blobs[:embed_n]
                t = time.perf_counter()
                images = [decode_image(b, draft_size=enc.draft_size) for b in sub]
                e_dec = time.perf_counter() - t
                t = time.perf_counter()
                for s in range(0, len(images), 64):
                    enc.embed_images(images[s : s + 64])
                e_inf = time.perf_counter() - t
                entry["embedding_same_photos"] = {
                    "images": len(sub),
                    "decode_ms_per_image": round(1000 * e_dec / len(sub), 3),
                    "inference_ms_per_image": round(1000 * e_inf / len(sub), 3),
                    "images_per_s": round(len(sub) / (e_dec + e_inf), 1),
                    "phash_speedup": round((e_dec + e_inf) / len(sub) / ((t_dec + t_hash) / len(blobs)), 1),
                }
            except Exception as exc:  # the encoder is optional for this section
                entry["embedding_same_photos"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        res[name] = entry
    return res


def bench_phash_grouping(n: int, exact_n: int, radius: int, seed: int) -> dict:
    from assay.dedup import _multihash_plan, choose_hamming_engine, group_duplicates, hamming_pairs

    rng = np.random.default_rng(seed)
    codes, family = planted_codes(n, rng, group_frac=0.03, max_flip=radius + 2)
    ids = np.arange(n, dtype=np.int64)
    truth = planted_pair_truth(family)
    ti = np.array([a for a, _ in truth], dtype=np.int64)
    tj = np.array([b for _, b in truth], dtype=np.int64)
    bits = np.unpackbits(codes[ti] ^ codes[tj], axis=1).sum(axis=1) if len(ti) else np.zeros(0)
    truth_in = {p for p, b in zip(truth, bits) if b <= radius}
    nhash, b, nflip, _ = _multihash_plan(n, radius)
    t = time.perf_counter()
    i, j, _ = hamming_pairs(ids, codes, radius, engine="auto")
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    groups = group_duplicates(i, j)
    group_s = time.perf_counter() - t
    found = pair_set(i, j)
    out = {
        "n": n,
        "radius": radius,
        "engine": choose_hamming_engine(n, n, radius),
        "mih_plan": {"nhash": nhash, "bits_per_hash": b, "nflip": nflip},
        "search_s": round(search_s, 2),
        "group_s": round(group_s, 3),
        "total_s": round(search_s + group_s, 2),
        "pairs": len(found),
        "groups": len(groups),
        "recall_planted_within_radius": round(len(found & truth_in) / max(len(truth_in), 1), 4),
        "planted_pairs_within_radius": len(truth_in),
    }
    m = min(exact_n, n)
    sub = ids[:m]
    t = time.perf_counter()
    fi, fj, _ = hamming_pairs(sub, codes[:m], radius, engine="flat")
    flat_s = time.perf_counter() - t
    t = time.perf_counter()
    mi, mj, _ = hamming_pairs(sub, codes[:m], radius, engine="mih")
    mh_s = time.perf_counter() - t
    # per-query cost of each engine: a sample of queries against the whole subset
    q = sub[: min(2000, m)]
    per_query = {}
    for engine in ("flat", "mih", "faiss-multihash"):
        t = time.perf_counter()
        hamming_pairs(sub, codes[:m], radius, engine=engine, query_ids=q)
        per_query[engine] = round(1e6 * (time.perf_counter() - t) / len(q), 1)
    out["subset"] = {
        "n": m,
        "flat_s": round(flat_s, 3),
        "mih_s": round(mh_s, 3),
        "same_pairs": pair_set(fi, fj) == pair_set(mi, mj),
        "us_per_query": per_query,
    }
    out["flat_scaled_to_n_s"] = round(flat_s * (n / m) ** 2, 1)
    out["speedup_vs_flat_scaled"] = round(flat_s * (n / m) ** 2 / (search_s + group_s), 1)
    return out


# ------------------------------------------------------------------------------------------------ quality


def bench_quality(data: Path, originals: int, per_class: int, seed: int) -> dict:
    from assay.dedup import (
        DEFAULT_RADIUS,
        DEFAULT_THRESHOLD,
        VARIANTS,
        embedding_pairs,
        group_duplicates,
        hamming_distances,
        hamming_pairs,
        near_duplicate_variants,
        phash_bytes,
        sweep_grouping,
    )
    from assay.encoders.base import get_encoder
    from assay.media import decode_image

    rng = np.random.default_rng(seed)
    blobs, family, kind, cls = [], [], [], []
    with tarfile.open(data / "imagenet-sample" / "imagenet-sample.tar") as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(".jpeg")),
            key=lambda m: m.name,
        )
        for f, p in enumerate(rng.choice(len(members), min(originals, len(members)), replace=False)):
            b = tf.extractfile(members[p]).read()
            blobs.append(b), family.append(f), kind.append("orig"), cls.append(-1)
            for name, v in near_duplicate_variants(decode_image(b), rng).items():
                blobs.append(v), family.append(f), kind.append(name), cls.append(-1)
    z = np.load(data / "cifar10" / "cifar10_jpeg_bytes.npz", allow_pickle=False)
    jpeg, offsets, labels = z["jpeg"], z["offsets"], z["label"]
    for c in range(10):
        for i in rng.choice(np.flatnonzero(labels == c), per_class, replace=False):
            blobs.append(jpeg[offsets[i] : offsets[i + 1]].tobytes())
            family.append(100_000 + len(family)), kind.append("cifar"), cls.append(c)
    family, kind, cls = np.array(family), np.array(kind), np.array(cls)
    ids = np.arange(len(blobs), dtype=np.int64)
    t = time.perf_counter()
    codes = np.stack([phash_bytes(b) for b in blobs])
    phash_s = time.perf_counter() - t
    enc = get_encoder("efficientnet-lite0")
    enc.load()
    t = time.perf_counter()
    vecs = []
    for s in range(0, len(blobs), 64):
        vecs.append(enc.embed_images([decode_image(b, draft_size=enc.draft_size) for b in blobs[s : s + 64]]))
    embed_s = time.perf_counter() - t
    x = np.concatenate(vecs).astype(np.float16).astype(np.float32)

    orig = {int(f): int(i) for i, f, k in zip(ids, family, kind) if k == "orig"}

    def per_variant(i, j):
        g = group_duplicates(i, j)
        where = {int(m): r for r, ms in g.items() for m in ms.tolist()}
        return {
            v: round(
                float(
                    np.mean(
                        [
                            where.get(int(a), -1) == where.get(orig[int(f)], -2)
                            for a, f, k in zip(ids, family, kind)
                            if k == v
                        ]
                    )
                ),
                4,
            )
            for v in VARIANTS
        }

    def rnd(r):
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}

    c = np.flatnonzero(kind == "cifar")
    a, b = np.triu_indices(len(c), k=1)
    same = cls[c[a]] == cls[c[b]]
    sa, sb = c[a][same], c[b][same]
    sims = np.einsum("nd,nd->n", x[sa], x[sb])
    dist = hamming_distances(codes[sa], codes[sb])

    thresholds = np.round(np.arange(0.70, 1.0, 0.01), 2)[::-1]
    ei, ej, es = embedding_pairs(ids, x, 0.70)
    rows = sweep_grouping(ei, ej, es, family, ids, thresholds)
    best_e = max(rows, key=lambda r: r["f1"])
    radii = list(range(0, 21))
    hi, hj, hd = hamming_pairs(ids, codes, max(radii))
    rows_h = sweep_grouping(hi, hj, hd, family, ids, radii, larger_is_better=False)
    best_h = max(rows_h, key=lambda r: r["f1"])
    both = []
    for t_ in thresholds:
        for r_ in [-1] + radii:
            ke, kh = es >= t_, hd <= r_
            row = sweep_grouping(
                np.r_[ei[ke], hi[kh]],
                np.r_[ej[ke], hj[kh]],
                np.ones(int(ke.sum() + kh.sum())),
                family,
                ids,
                [1.0],
            )[0]
            both.append({**row, "threshold": float(t_), "radius": r_})
    best_b = max(both, key=lambda r: r["f1"])
    def_b = next(
        r for r in both if abs(r["threshold"] - DEFAULT_THRESHOLD) < 1e-9 and r["radius"] == DEFAULT_RADIUS
    )
    return {
        "images": len(blobs),
        "originals": int((kind == "orig").sum()),
        "planted_variants": int(np.isin(kind, VARIANTS).sum()),
        "cifar_images": int(len(c)),
        "same_class_pairs": int(same.sum()),
        "embed_s": round(embed_s, 1),
        "phash_s": round(phash_s, 1),
        "embedding": {
            "best": rnd(best_e),
            "per_variant_recall_at_best": per_variant(ei[es >= best_e["cutoff"]], ej[es >= best_e["cutoff"]]),
            "at_default": rnd(next(r for r in rows if abs(r["cutoff"] - DEFAULT_THRESHOLD) < 1e-9)),
            "per_variant_recall_at_default": per_variant(
                ei[es >= DEFAULT_THRESHOLD], ej[es >= DEFAULT_THRESHOLD]
            ),
            "sweep": [
                {"t": r["cutoff"], "p": round(r["precision"], 4), "r": round(r["recall"], 4)}
                for r in rows[::-1]
                if r["cutoff"] in (0.75, 0.8, 0.83, 0.85, 0.87, 0.9, 0.93, 0.95, 0.97, 0.99)
            ],
            "same_class_fp_rate": {
                str(t_): float((sims >= t_).mean()) for t_ in (0.75, 0.8, 0.85, 0.9, 0.95)
            },
            "same_class_max_cosine": round(float(sims.max()), 4),
        },
        "phash": {
            "best": rnd(best_h),
            "per_variant_recall_at_best": per_variant(hi[hd <= best_h["cutoff"]], hj[hd <= best_h["cutoff"]]),
            "at_default": rnd(rows_h[DEFAULT_RADIUS]),
            "per_variant_recall_at_default": per_variant(hi[hd <= DEFAULT_RADIUS], hj[hd <= DEFAULT_RADIUS]),
            "same_class_fp_rate": {str(r_): float((dist <= r_).mean()) for r_ in (4, 6, 8, 10, 12, 14)},
            "same_class_min_distance": int(dist.min()),
        },
        "both": {"best": rnd(best_b), "at_default": rnd(def_b)},
    }


def _log(section: str, obj: dict) -> None:
    """Each finished section also goes to stderr at once, so a later failure loses nothing."""
    import json
    import sys

    sys.stderr.write(json.dumps({"section": section, **obj}) + "\n")
    sys.stderr.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors for the embedding section")
    ap.add_argument("--exact-n", type=int, default=100_000, help="subset measured with exact brute force")
    ap.add_argument(
        "--phash-n", type=int, default=1_000_000, help="synthetic 64-bit hashes for binary grouping"
    )
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--cifar", type=int, default=3000, help="CIFAR-10 photos for pHash timing")
    ap.add_argument("--embed-n", type=int, default=500, help="photos per set also embedded, for comparison")
    ap.add_argument("--originals", type=int, default=200, help="ImageNet photos with planted near duplicates")
    ap.add_argument("--cifar-per-class", type=int, default=100)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: embedding,phash,quality")
    ap.add_argument("--data", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out: dict = {"benchmark": "dedup", "machine": machine()}
    data = shared_data(args.data)
    t0 = time.perf_counter()
    if "embedding" not in skip:
        out["embedding"] = bench_embedding(
            args.n, args.exact_n, args.dim, args.threshold, args.nprobe, args.seed
        )
        _log("embedding", out["embedding"])
    if "phash" not in skip:
        ph: dict = {}
        if data is not None:
            ph["real_photos"] = bench_phash_real(
                real_photos(data, args.cifar, np.random.default_rng(args.seed)), args.embed_n
            )
        else:
            ph["real_photos"] = {"skipped": "shared data not found (set ASSAY_SHARED_DATA or --data)"}
        _log("phash.real_photos", ph["real_photos"])
        ph["grouping"] = bench_phash_grouping(args.phash_n, args.exact_n, args.radius, args.seed)
        out["phash"] = ph
        _log("phash.grouping", ph["grouping"])
    if "quality" not in skip:
        if data is None:
            out["quality"] = {"skipped": "shared data not found (set ASSAY_SHARED_DATA or --data)"}
        else:
            try:
                out["quality"] = bench_quality(data, args.originals, args.cifar_per_class, args.seed)
            except Exception as exc:  # e.g. the encoder's extra is missing
                out["quality"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(out)


if __name__ == "__main__":
    main()
