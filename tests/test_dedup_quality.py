"""Duplicate detection quality on real photos with planted near duplicates (needs ../shared/data).

32 ImageNet-sample photos (32 different classes), each with 6 planted near duplicates (JPEG quality 30-50,
0.5x resize, 80-90 % crop, colour jitter, text overlay, horizontal flip), plus 120 CIFAR-10 photos (12 per
class) as distinct images of the same class. Embedded with efficientnet-lite0 (the real encoder), hashed with
pHash; every method is swept over its cut-off and scored by pair precision/recall of the groups it forms.
The same measurement at a larger size is in bench/dedup.py (section "quality").
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

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
from assay.media import decode_image

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

N_ORIGINALS = 32
CIFAR_PER_CLASS = 12
THRESHOLDS = np.round(np.arange(0.70, 1.0, 0.01), 2)
RADII = list(range(0, 21))


def load_planted(data: Path, rng: np.random.Generator):
    """``(blobs, family, kind, cifar_class)``: encoded images, family id (ImageNet originals and their variants
    share one; every CIFAR image is its own), the variant name ("orig", VARIANTS, "cifar"), CIFAR class or -1."""
    tar_path = data / "imagenet-sample" / "imagenet-sample.tar"
    npz_path = data / "cifar10" / "cifar10_jpeg_bytes.npz"
    if not tar_path.exists() or not npz_path.exists():
        pytest.skip(f"real data not found: need {tar_path} and {npz_path}")
    blobs, family, kind, cls = [], [], [], []
    with tarfile.open(tar_path) as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(".jpeg")),
            key=lambda m: m.name,
        )
        for f, p in enumerate(rng.choice(len(members), N_ORIGINALS, replace=False)):
            f_ = tf.extractfile(members[p])
            assert f_ is not None
            data_bytes = f_.read()
            blobs.append(data_bytes)
            family.append(f)
            kind.append("orig")
            cls.append(-1)
            for name, v in near_duplicate_variants(decode_image(data_bytes), rng).items():
                blobs.append(v)
                family.append(f)
                kind.append(name)
                cls.append(-1)
    z = np.load(npz_path, allow_pickle=False)
    jpeg, offsets, labels = z["jpeg"], z["offsets"], z["label"]
    for c in range(10):
        for i in rng.choice(np.flatnonzero(labels == c), CIFAR_PER_CLASS, replace=False):
            blobs.append(jpeg[offsets[i] : offsets[i + 1]].tobytes())
            family.append(1000 + len(family))
            kind.append("cifar")
            cls.append(c)
    return blobs, np.array(family), np.array(kind), np.array(cls)


@pytest.fixture(scope="module")
def planted(shared_data_dir):
    rng = np.random.default_rng(2024)
    blobs, family, kind, cls = load_planted(shared_data_dir, rng)
    ids = np.arange(len(blobs), dtype=np.int64) + 1
    codes = np.stack([phash_bytes(b) for b in blobs])  # [n, 8]
    from assay.encoders.base import get_encoder
    from assay.errors import EncoderError, MissingDependencyError

    enc = get_encoder("efficientnet-lite0")
    try:
        enc.load()
    except (MissingDependencyError, EncoderError) as exc:
        pytest.skip(f"efficientnet-lite0 cannot load here: {exc}")
    vecs = []
    for s in range(0, len(blobs), 64):
        images = [decode_image(b, draft_size=enc.draft_size) for b in blobs[s : s + 64]]
        vecs.append(enc.embed_images(images))
    x = np.concatenate(vecs).astype(np.float16).astype(np.float32)  # as stored: float16 at rest
    return {"ids": ids, "family": family, "kind": kind, "cls": cls, "codes": codes, "x": x}


def variant_recall(groups: dict, p: dict) -> dict[str, float]:
    """Per variant: the fraction of (original, variant) pairs that share a group."""
    where = {int(m): r for r, ms in groups.items() for m in ms.tolist()}
    out = {}
    orig = {int(f): int(i) for i, f, k in zip(p["ids"], p["family"], p["kind"]) if k == "orig"}
    for v in VARIANTS:
        hits = [
            where.get(int(i), -1) == where.get(orig[int(f)], -2)
            for i, f, k in zip(p["ids"], p["family"], p["kind"])
            if k == v
        ]
        out[v] = float(np.mean(hits))
    return out


def best(rows: list[dict]) -> dict:
    """Best F1; ties go to the stricter cut-off (listed last for cosines, first for radii: caller orders)."""
    return max(rows, key=lambda r: (round(r["f1"], 9),))


def same_class_pairs(p: dict) -> tuple[np.ndarray, np.ndarray]:
    c = np.flatnonzero(p["kind"] == "cifar")
    a, b = np.triu_indices(len(c), k=1)
    same = p["cls"][c[a]] == p["cls"][c[b]]
    return c[a][same], c[b][same]


def test_embedding_quality(planted, record_property):
    p = planted
    i, j, s = embedding_pairs(p["ids"], p["x"], float(THRESHOLDS.min()))  # exact range search
    rows = sweep_grouping(i, j, s, p["family"], p["ids"], THRESHOLDS[::-1])  # strict first: ties keep it
    b = best(rows)
    keep = s >= b["cutoff"]
    per_variant = variant_recall(group_duplicates(i[keep], j[keep]), p)
    at_default = next(r for r in rows if abs(r["cutoff"] - DEFAULT_THRESHOLD) < 1e-9)
    a, c = same_class_pairs(p)
    sims = np.einsum("nd,nd->n", p["x"][a], p["x"][c])  # [same-class pairs]
    fp_best = float((sims >= b["cutoff"]).mean())
    fp_default = float((sims >= DEFAULT_THRESHOLD).mean())
    summary = {
        "best": b,
        "per_variant_recall_at_best": per_variant,
        "at_default": at_default,
        "same_class_fp_rate_at_best": fp_best,
        "same_class_fp_rate_at_default": fp_default,
        "same_class_pairs": int(len(sims)),
        "same_class_max_cosine": float(sims.max()),
    }
    at_085 = next(r for r in rows if abs(r["cutoff"] - 0.85) < 1e-9)
    summary["at_0.85"] = at_085
    record_property("embedding_quality", summary)
    print("embedding", summary)
    assert b["precision"] >= 0.95 and b["recall"] >= 0.90, summary
    assert at_085["precision"] >= 0.98 and at_085["recall"] >= 0.90, at_085
    # every planted transformation is mostly caught by embeddings, flips included
    assert min(per_variant.values()) >= 0.85, per_variant
    # the default is conservative: no false pairs here and most duplicates caught
    assert at_default["precision"] >= 0.98 and at_default["recall"] >= 0.75, at_default
    assert fp_best <= 0.01 and fp_default == 0.0


def test_phash_quality(planted, record_property):
    p = planted
    i, j, d = hamming_pairs(p["ids"], p["codes"], max(RADII))
    rows = sweep_grouping(i, j, d, p["family"], p["ids"], RADII, larger_is_better=False)
    b = best(rows)
    keep = d <= b["cutoff"]
    per_variant = variant_recall(group_duplicates(i[keep], j[keep]), p)
    at_default = rows[DEFAULT_RADIUS]
    a, c = same_class_pairs(p)
    dist = hamming_distances(p["codes"][a], p["codes"][c])
    summary = {
        "best": b,
        "per_variant_recall_at_best": per_variant,
        "at_default": at_default,
        "same_class_fp_rate_at_best": float((dist <= b["cutoff"]).mean()),
        "same_class_fp_rate_at_default": float((dist <= DEFAULT_RADIUS).mean()),
        "same_class_min_distance": int(dist.min()),
    }
    record_property("phash_quality", summary)
    print("phash", summary)
    assert b["precision"] >= 0.95, summary
    # pHash catches re-compression, resizing and colour jitter, and most captions ...
    for v in ("jpeg", "resize", "jitter"):
        assert per_variant[v] >= 0.95, per_variant
    assert per_variant["text"] >= 0.8
    # ... but not mirror images, and few 80-90 % crops
    assert per_variant["flip"] <= 0.05 and per_variant["crop"] <= 0.5, per_variant
    assert b["recall"] <= 0.8  # which caps its recall well below the embedding's
    assert summary["same_class_fp_rate_at_default"] == 0.0 and at_default["precision"] >= 0.98


def test_both_methods_together(planted, record_property):
    p = planted
    ei, ej, es = embedding_pairs(p["ids"], p["x"], float(THRESHOLDS.min()))
    hi, hj, hd = hamming_pairs(p["ids"], p["codes"], max(RADII))
    results = []
    for t in THRESHOLDS[::-1]:
        for r in [-1] + RADII:  # -1: no pHash edges, so every embedding-only operating point is in the grid
            ke, kh = es >= t, hd <= r
            i = np.concatenate([ei[ke], hi[kh]])
            j = np.concatenate([ej[ke], hj[kh]])
            row = sweep_grouping(i, j, np.ones(len(i)), p["family"], p["ids"], [1.0])[0]
            results.append({**row, "threshold": float(t), "radius": r})
    b = best(results)
    emb = best(sweep_grouping(ei, ej, es, p["family"], p["ids"], THRESHOLDS[::-1]))
    default = next(
        r for r in results if abs(r["threshold"] - DEFAULT_THRESHOLD) < 1e-9 and r["radius"] == DEFAULT_RADIUS
    )
    record_property("both_quality", {"best": b, "at_default": default})
    print("both", {"best": b, "at_default": default})
    assert b["f1"] >= emb["f1"] - 1e-9
    assert b["precision"] >= 0.95 and b["recall"] >= 0.90
    assert (
        default["recall"]
        >= next(r for r in sweep_grouping(ei, ej, es, p["family"], p["ids"], [DEFAULT_THRESHOLD]))["recall"]
    )
