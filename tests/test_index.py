"""Tests for assay.index: kind choice, VectorIndex (every kind against brute force), neighbourhoods."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import assay.index as ix
from assay.errors import IndexNotBuiltError, InputError, NotFoundError, UnknownNameError, WorkspaceError
from assay.index import (
    KINDS,
    ConcatRows,
    IndexSpec,
    KnnGraph,
    VectorIndex,
    brute_force_search,
    choose_kind,
    estimate_memory,
    knn_graph,
    make_spec,
    neighbors,
    range_pairs,
    recall_at_k,
)

pytestmark = pytest.mark.filterwarnings("ignore")


# ------------------------------------------------------------------------------------------ data


def clustered(n: int, d: int, seed: int, n_clusters: int | None = None) -> np.ndarray:
    """Unit vectors in clusters of heavy-tailed sizes and varied spreads (recall is not trivially 1)."""
    rng = np.random.default_rng(seed)
    k = n_clusters or max(4, n // 100)
    p = rng.pareto(1.2, k) + 1.0
    p /= p.sum()
    lab = rng.choice(k, n, p=p)
    spread = rng.lognormal(np.log(0.8), 0.4, k)
    c = rng.standard_normal((k, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[lab] + spread[lab, None] * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_ids(n: int, seed: int = 1) -> np.ndarray:
    """Sparse, shuffled, non-contiguous int64 ids (never positions)."""
    rng = np.random.default_rng(seed)
    return rng.choice(10 * n + 100, size=n, replace=False).astype(np.int64) + 5


N, D, NQ = 4000, 32, 200


@pytest.fixture(scope="module")
def corpus():
    x = clustered(N + NQ, D, seed=0)
    return make_ids(N), x[:N], x[N:]


@pytest.fixture(scope="module")
def truth(corpus):
    ids, x, q = corpus
    return brute_force_search(q, ids, x, 10)


@pytest.fixture(scope="module")
def built(corpus):
    ids, x, _ = corpus
    return {
        kind: VectorIndex(spec=kind, dim=D, encoder="toy", encoder_version="1").build(ids, x, rng=0)
        for kind in KINDS
    }


def exact_scores_of(found: np.ndarray, q: np.ndarray, ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Exact similarity of each found id to its query (-inf for padding)."""
    order = np.argsort(ids)
    pos = order[np.searchsorted(ids[order], np.maximum(found, 0))]
    s = np.einsum("qd,qkd->qk", q, x[pos])
    return np.where(found >= 0, s, -np.inf)


def brute_top(q: np.ndarray, ids: np.ndarray, x: np.ndarray, k: int):
    """Plain numpy oracle: full similarity matrix, sorted by (-score, id)."""
    S = q @ x.T
    order = np.lexsort((np.broadcast_to(ids, S.shape), -S), axis=-1)[:, :k]
    return np.take_along_axis(S, order, 1), ids[order]


# ------------------------------------------------------------------------------------ kind choice


def test_choose_kind_follows_size_and_memory():
    big = 1 << 40
    assert choose_kind(0, 256, memory_bytes=big).kind == "flat"
    assert choose_kind(50_000, 256, memory_bytes=big).kind == "flat"
    assert choose_kind(200_000, 256, memory_bytes=big).kind == "hnsw"
    assert choose_kind(1_000_000, 256, memory_bytes=big).kind == "ivf"
    assert choose_kind(5_000_000, 256, memory_bytes=big).kind == "ivf"
    # 5M x 256 float32 is 5 GB: with 4 GB available only compressed codes fit
    spec = choose_kind(5_000_000, 256, memory_bytes=4 * 2**30)
    assert spec.kind == "ivf-pq"
    assert 256 % spec.params["m"] == 0
    assert estimate_memory(spec, 5_000_000, 256) <= ix.MEMORY_FRACTION * 4 * 2**30
    # a small budget shrinks m rather than failing
    small = choose_kind(5_000_000, 256, memory_bytes=600 * 2**20)
    assert small.kind == "ivf-pq" and small.params["m"] < spec.params["m"]
    with pytest.raises(InputError, match="PCA"):
        choose_kind(100_000_000, 256, memory_bytes=2**20)


def test_choose_kind_reads_memory_at_call_time(monkeypatch):
    monkeypatch.setattr(ix, "available_memory", lambda: 1 << 40)
    assert choose_kind(200_000, 256).kind == "hnsw"
    monkeypatch.setattr(ix, "available_memory", lambda: 200 * 2**20)
    assert choose_kind(200_000, 256).kind == "ivf-pq"


def test_available_memory_is_positive():
    assert ix.available_memory() > 0


def test_estimate_memory_formulas():
    n, d = 10_000, 64
    flat = estimate_memory(make_spec("flat", n, d), n, d)
    assert flat == n * (4 * d + 16)
    hnsw = estimate_memory(make_spec("hnsw", n, d), n, d)
    ivf = estimate_memory(make_spec("ivf", n, d), n, d)
    pq = estimate_memory(make_spec("ivf-pq", n, d), n, d)
    assert hnsw > ivf > pq and hnsw > flat
    # monotone in n, and the per-vector cost of ivf-pq is its code size plus ids
    spec = make_spec("ivf-pq", n, d)
    per = estimate_memory(spec, 2 * n, d) - estimate_memory(spec, n, d)
    assert per == n * (spec.params["m"] * spec.params["nbits"] // 8 + 16)


def test_make_spec_defaults_and_overrides():
    s = make_spec("ivf", 1_000_000, 256)
    assert s.params["nlist"] == 4000 and 1 <= s.params["nprobe"] <= 4000
    assert make_spec("ivf", 100, 8).params["nlist"] == 2  # at most n / 39
    pq = make_spec("ivf-pq", 1_000_000, 384)
    assert 384 % pq.params["m"] == 0 and pq.params["nbits"] == 8
    assert make_spec("hnsw", 10, 8, M=16).params["M"] == 16
    assert make_spec("auto", 10, 8).kind == "flat"
    with pytest.raises(InputError, match="divide"):
        make_spec("ivf-pq", 10_000, 30, m=7)
    with pytest.raises(UnknownNameError, match="flat"):
        make_spec("annoy", 10, 8)


def test_index_spec_json_round_trip_and_validation():
    s = make_spec("ivf-pq", 50_000, 64)
    again = IndexSpec.from_json(s.to_json())
    assert again == s and hash(again) == hash(s)
    assert json.loads(s.to_json())["kind"] == "ivf-pq"
    assert {s: 1}[again] == 1
    with pytest.raises(UnknownNameError):
        IndexSpec("lsh")
    with pytest.raises(InputError, match="unknown parameter"):
        IndexSpec("flat", {"nlist": 3})
    with pytest.raises(InputError, match="positive integer"):
        IndexSpec("hnsw", {"M": 0})


# --------------------------------------------------------------------------- recall vs brute force


RECALL_FLOOR = {"flat": 0.999, "hnsw": 0.95, "ivf": 0.85, "ivf-pq": 0.35}


@pytest.mark.parametrize("kind", KINDS)
def test_recall_at_10_against_brute_force(kind, corpus, truth, built, record_property):
    ids, x, q = corpus
    TS, TI = truth
    S, I = built[kind].search(q, 10)
    recall = recall_at_k(I, TI, true_scores=TS, found_true_scores=exact_scores_of(I, q, ids, x))
    record_property(f"recall@10[{kind}]", recall)
    print(f"recall@10 {kind}: {recall:.4f}")
    assert recall >= RECALL_FLOOR[kind]


def test_ivf_with_all_lists_is_exact(corpus, truth, built):
    ids, x, q = corpus
    TS, TI = truth
    index = built["ivf"]
    S, I = index.search(q, 10, nprobe=index.spec.params["nlist"])
    assert recall_at_k(I, TI, true_scores=TS, found_true_scores=exact_scores_of(I, q, ids, x)) >= 0.999
    np.testing.assert_allclose(S, TS, atol=1e-5)  # score sets equal, whatever the order of ties


def test_ivf_pq_with_finer_codes_recalls_more(corpus, truth, built):
    ids, x, q = corpus
    TS, TI = truth
    fine = VectorIndex(spec=make_spec("ivf-pq", N, D, m=16, nbits=5), dim=D).build(ids, x, rng=0)
    S, I = fine.search(q, 10)
    r_fine = recall_at_k(I, TI, true_scores=TS, found_true_scores=exact_scores_of(I, q, ids, x))
    assert r_fine >= 0.55
    S, I = built["ivf-pq"].search(q, 10)
    assert r_fine > recall_at_k(I, TI, true_scores=TS, found_true_scores=exact_scores_of(I, q, ids, x))


def test_hnsw_recall_grows_with_ef_search(corpus, truth, built):
    ids, x, q = corpus
    TS, TI = truth
    r = []
    for ef in (10, 200):
        S, I = built["hnsw"].search(q, 10, ef_search=ef)
        r.append(recall_at_k(I, TI, true_scores=TS, found_true_scores=exact_scores_of(I, q, ids, x)))
    assert r[1] >= r[0] and r[1] >= 0.99


@pytest.mark.parametrize("kind", KINDS)
def test_search_contract(kind, corpus, built):
    ids, x, q = corpus
    index = built[kind]
    S, I = index.search(q[:7], 5)
    assert S.shape == I.shape == (7, 5) and S.dtype == np.float32 and I.dtype == np.int64
    assert np.all(np.diff(S, axis=1) <= 1e-6)  # best first
    assert np.isin(I, ids).all()
    assert all(len(set(row)) == len(row) for row in I.tolist())
    s1, i1 = index.search(q[3], 5)  # one vector -> 1-D results
    assert s1.shape == i1.shape == (5,)
    np.testing.assert_array_equal(i1, I[3])
    s16, i16 = index.search(q[:7].astype(np.float16), 5)  # float16 queries are converted
    assert i16.shape == (7, 5)
    assert index.ntotal == len(index) == N and index.dim == D and index.kind == kind
    assert index.bytes_per_vector > 0
    np.testing.assert_array_equal(index.ids, np.sort(ids))


@pytest.mark.parametrize("kind", KINDS)
def test_item_finds_itself_first(kind, corpus, built):
    ids, x, _ = corpus
    S, I = built[kind].search(x[:50], 10)
    top1 = np.mean(I[:, 0] == ids[:50])
    inside = np.mean([ids[i] in I[i] for i in range(50)])
    assert inside >= 0.9 and (top1 >= 0.9 or kind == "ivf-pq")


def test_k_larger_than_corpus_returns_everything_padded():
    x = clustered(30, 8, seed=3)
    ids = make_ids(30)
    for kind in ("flat", "hnsw"):
        index = VectorIndex(spec=kind, dim=8).build(ids, x)
        S, I = index.search(x[:2], 50)
        assert S.shape == (2, 50)
        assert (I[:, 30:] == -1).all() and np.isneginf(S[:, 30:]).all()
        assert set(I[0, :30].tolist()) == set(ids.tolist())
    ivf = VectorIndex(spec=make_spec("ivf", 30, 8, nlist=2, nprobe=2), dim=8).build(ids, x)
    S, I = ivf.search(x[0], 40)
    assert set(I[I >= 0].tolist()) == set(ids.tolist()) and (I[30:] == -1).all()


def test_empty_index_search_is_all_padding():
    index = VectorIndex(spec="flat", dim=4).build(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    S, I = index.search(np.ones(4, np.float32) / 2, 3)
    assert (I == -1).all() and np.isneginf(S).all() and index.ntotal == 0


def test_auto_spec_resolves_at_build(corpus):
    ids, x, _ = corpus
    index = VectorIndex(dim=D).build(ids[:100], x[:100])
    assert index.spec.kind == "flat" and index.kind == "flat"


# ------------------------------------------------------------------------------ exclusions


def test_exclude_ids_matches_brute_force_on_the_rest(corpus, built):
    ids, x, q = corpus
    excl = ids[::3]
    keep = ~np.isin(ids, excl)
    S, I = built["flat"].search(q[:20], 10, exclude_ids=excl)
    TS, TI = brute_force_search(q[:20], ids[keep], x[keep], 10)
    assert not np.isin(I, excl).any()
    np.testing.assert_allclose(S, TS, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_excluded_ids_never_returned(kind, corpus, built):
    ids, x, q = corpus
    S0, I0 = built[kind].search(q[:10], 10)
    excl = np.unique(I0[:, :3])
    S, I = built[kind].search(q[:10], 10, exclude_ids=excl)
    assert not np.isin(I, excl).any() and (I >= 0).all()
    per = [row[:4] for row in I0]
    S, I = built[kind].search(q[:10], 10, exclude_per_query=per)
    for row, ex in zip(I, per):
        assert not np.isin(row, ex).any()
    np.testing.assert_array_equal(I[:, :6], I0[:, 4:10]) if kind == "flat" else None


def test_exclude_per_query_padded_matrix(corpus, built):
    ids, x, q = corpus
    S0, I0 = built["flat"].search(q[:3], 6)
    E = np.full((3, 2), -1, dtype=np.int64)
    E[0, 0] = I0[0, 0]
    E[2, :] = I0[2, :2]
    S, I = built["flat"].search(q[:3], 4, exclude_per_query=E)
    np.testing.assert_array_equal(I[0], I0[0, 1:5])
    np.testing.assert_array_equal(I[1], I0[1, :4])
    np.testing.assert_array_equal(I[2], I0[2, 2:6])
    with pytest.raises(InputError, match="queries"):
        built["flat"].search(q[:3], 4, exclude_per_query=[[1]])


# ------------------------------------------------------------------------------ add / remove


@pytest.mark.parametrize("kind", KINDS)
def test_add_and_remove_keep_ids_consistent(kind):
    x = clustered(1200, 16, seed=5)
    ids = make_ids(1200, seed=6)
    spec = make_spec(kind, 600, 16) if kind != "ivf-pq" else make_spec("ivf-pq", 600, 16, m=8, nbits=4)
    index = VectorIndex(spec=spec, dim=16).build(ids[:600], x[:600], rng=1)
    index.add(ids[600:], x[600:])
    assert index.ntotal == 1200
    np.testing.assert_array_equal(index.ids, np.sort(ids))
    S, I = index.search(
        x[600:700], 10, **({"nprobe": spec.params["nlist"]} if kind in ("ivf", "ivf-pq") else {})
    )
    assert np.mean([ids[600 + r] in I[r] for r in range(100)]) >= 0.95  # added items are found

    gone = ids[::4]
    assert index.remove(gone) == len(gone)
    assert index.ntotal == 1200 - len(gone)
    assert not index.contains(gone).any() and index.contains(ids[1::4]).all()
    S, I = index.search(x[:100], 1200)
    assert not np.isin(I, gone).any()
    live = I[I >= 0]
    assert np.isin(live, ids).all()

    # re-embedding an item: remove it, add it back with a new vector; the id appears once, with the new score
    target = int(ids[1])
    old = x[1]
    new = x[900]
    index.remove([target])
    index.add([target], new[None, :])
    S, I = index.search(old[None, :], 1200)
    assert (I == target).sum() <= 1
    if (I == target).any():
        np.testing.assert_allclose(S[I == target], float(old @ new), atol=0.2 if kind == "ivf-pq" else 1e-4)
    if kind == "hnsw":
        assert index.tombstones == len(gone) + 1
    else:
        assert index.tombstones == 0


def test_add_rejects_duplicates_and_bad_rows_without_changing_anything(corpus):
    ids, x, _ = corpus
    index = VectorIndex(spec="flat", dim=D).build(ids[:100], x[:100])
    with pytest.raises(InputError, match="already in the index"):
        index.add(ids[90:110], x[90:110])
    with pytest.raises(InputError, match="unique"):
        index.add(np.array([ids[200], ids[200]]), x[200:202])
    bad = x[100:110].copy()
    bad[7, 3] = np.nan
    with pytest.raises(InputError, match=r"NaN or inf \(row 7\)"):
        index.add(ids[100:110], bad)
    assert index.ntotal == 100 and not index.contains(ids[100:110]).any()


def test_remove_unknown_ids(corpus):
    ids, x, _ = corpus
    index = VectorIndex(spec="flat", dim=D).build(ids[:100], x[:100])
    with pytest.raises(NotFoundError, match="not in the index"):
        index.remove([ids[0], ids[500]])
    assert index.ntotal == 100  # nothing removed
    assert index.remove([ids[0], ids[500]], missing_ok=True) == 1
    assert index.ntotal == 99


def test_needs_retrain_after_growth_and_retrain():
    x = clustered(2500, 16, seed=8)
    ids = make_ids(2500, seed=9)
    index = VectorIndex(spec="ivf", dim=16).build(ids[:200], x[:200], rng=0)
    assert not index.needs_retrain and index.trained_for_n == 200 and index.trained_size == 200
    index.add(ids[200:], x[200:])
    assert index.needs_retrain  # 2500 > 10 x 200
    index.retrain(ids, x, rng=0)
    assert not index.needs_retrain and index.ntotal == 2500
    assert index.spec.params["nlist"] == make_spec("ivf", 2500, 16).params["nlist"]

    h = VectorIndex(spec="hnsw", dim=16).build(ids[:100], x[:100])
    h.remove(ids[:60])
    assert h.needs_retrain and h.tombstones == 60 and h.ntotal == 40


def test_ivf_training_needs_enough_vectors(corpus):
    ids, x, _ = corpus
    with pytest.raises(InputError, match="needs at least 64 vectors"):
        VectorIndex(spec=IndexSpec("ivf", {"nlist": 64, "nprobe": 4}), dim=D).build(ids[:10], x[:10])


# ------------------------------------------------------------------------------ bad input


def test_bad_k_and_dims(built, corpus):
    ids, x, q = corpus
    index = built["flat"]
    with pytest.raises(InputError, match="k must be a positive integer, got 0"):
        index.search(q, 0)
    for k in (-1, 2.5, True, "3"):
        with pytest.raises(InputError, match="k must be a positive integer"):
            index.search(q, k)
    with pytest.raises(InputError, match=f"index has dim {D}, query has dim 16"):
        index.search(q[:, :16], 3)
    nanq = q[:2].copy()
    nanq[1, 0] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        index.search(nanq, 3)
    with pytest.raises(InputError, match="nprobe applies"):
        index.search(q, 3, nprobe=4)
    with pytest.raises(InputError, match="ef_search applies"):
        built["ivf"].search(q, 3, ef_search=4)


def test_bad_build_input_keeps_previous_index(corpus):
    ids, x, _ = corpus
    index = VectorIndex(spec="flat", dim=D).build(ids[:50], x[:50])
    bad = x[:80].copy()
    bad[70] = np.nan
    with pytest.raises(InputError, match="row 70"):
        index.build(ids[:80], bad)
    assert index.ntotal == 50
    with pytest.raises(InputError, match="L2-normalised"):
        index.build(ids[:80], 3 * x[:80])
    with pytest.raises(InputError, match="unique"):
        index.build(np.zeros(80, np.int64), x[:80])
    with pytest.raises(InputError, match="non-negative"):
        index.build(-ids[:80], x[:80])
    with pytest.raises(InputError, match="integers"):
        index.build(ids[:80].astype(float), x[:80])
    with pytest.raises(InputError, match="one id per vector"):
        index.build(ids[:79], x[:80])
    with pytest.raises(InputError, match="dim"):
        VectorIndex(spec="flat", dim=16).build(ids[:80], x[:80])
    assert index.ntotal == 50


def test_not_built_errors():
    index = VectorIndex(spec="flat", dim=4)
    with pytest.raises(IndexNotBuiltError):
        index.search(np.ones(4), 1)
    with pytest.raises(IndexNotBuiltError):
        index.save("/nonexistent/never")


# ------------------------------------------------------------------------------ persistence


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(kind, mmap, corpus, built, tmp_path):
    ids, x, q = corpus
    index = built[kind]
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx", mmap=mmap, expect_encoder="toy", expect_dim=D)
    assert loaded.info()["load_mode"] == ("mmap" if mmap else "read")
    assert loaded.mmapped == mmap
    assert loaded.spec == index.spec and loaded.ntotal == N and loaded.encoder_version == "1"
    S0, I0 = index.search(q, 10)
    S1, I1 = loaded.search(q, 10)
    np.testing.assert_array_equal(I0, I1)
    np.testing.assert_allclose(S0, S1)
    # a mapped index becomes writable on demand; the saved copy is untouched
    loaded.remove(ids[:5])
    loaded.add(ids[:2], x[:2])
    assert not loaded.mmapped and loaded.ntotal == N - 3
    assert VectorIndex.load(tmp_path / "idx").ntotal == N


def test_save_is_atomic_and_keeps_one_generation(corpus, tmp_path):
    ids, x, q = corpus
    index = VectorIndex(spec="hnsw", dim=D, encoder="toy", metadata={"pca": None}).build(ids[:300], x[:300])
    index.save(tmp_path)
    first = VectorIndex.load(tmp_path, mmap=True)  # keeps its mapping of the old file
    index.remove(ids[:10])
    index.save(tmp_path)
    faiss_files = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".faiss")
    assert len(faiss_files) == 1
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["count"] == 290 and meta["tombstones"] == 10 and meta["files"]["index"] == faiss_files[0]
    assert meta["encoder"] == "toy" and meta["spec"]["kind"] == "hnsw" and meta["metadata"] == {"pca": None}
    S, I = first.search(x[:5], 3)  # the old mapping still works after its file was replaced
    np.testing.assert_array_equal(I[:, 0], ids[:5])
    again = VectorIndex.load(tmp_path)
    assert again.ntotal == 290 and again.tombstones == 10
    S, I = again.search(x[:20], 300)
    assert not np.isin(I, ids[:10]).any()


def test_load_checks_encoder_and_dim(built, tmp_path):
    built["flat"].save(tmp_path)
    with pytest.raises(
        WorkspaceError,
        match=r"index was built by encoder toy \(dim 32\); the workspace asks for "
        r"clip \(dim 384\): rebuild with `assay index`",
    ):
        VectorIndex.load(tmp_path, expect_encoder="clip", expect_dim=384)
    with pytest.raises(WorkspaceError, match="dim 16"):
        VectorIndex.load(tmp_path, expect_dim=16)
    with pytest.raises(IndexNotBuiltError, match="assay index"):
        VectorIndex.load(tmp_path / "missing")


def test_load_detects_missing_and_inconsistent_files(built, tmp_path):
    built["flat"].save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["count"] = 5
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(WorkspaceError, match="inconsistent"):
        VectorIndex.load(tmp_path)
    (tmp_path / meta["files"]["index"]).unlink()
    with pytest.raises(WorkspaceError, match="missing"):
        VectorIndex.load(tmp_path)


# ------------------------------------------------------------------------------ ConcatRows


def test_concat_rows_matches_concatenate(corpus):
    _, x, _ = corpus
    parts = [x[:10].astype(np.float16), x[10:11].astype(np.float16), x[11:50].astype(np.float16)]
    cr = ConcatRows(parts)
    full = np.concatenate(parts)
    assert cr.shape == full.shape and len(cr) == 50 and cr.dtype == np.float16
    np.testing.assert_array_equal(cr[5:30], full[5:30])
    np.testing.assert_array_equal(cr[45:99], full[45:99])
    idx = np.array([49, 0, 10, 10, 11, 3])
    np.testing.assert_array_equal(cr[idx], full[idx])
    np.testing.assert_array_equal(cr[::7], full[::7])


def test_build_from_float16_shards_equals_float16_array(corpus):
    ids, x, q = corpus
    x16 = x[:500].astype(np.float16)
    a = VectorIndex(spec="flat", dim=D, block_size=64).build(ids[:500], ConcatRows([x16[:123], x16[123:]]))
    b = VectorIndex(spec="flat", dim=D).build(ids[:500], x16)
    Sa, Ia = a.search(q, 5)
    Sb, Ib = b.search(q, 5)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_allclose(Sa, Sb)


# ------------------------------------------------------------------------------ neighbourhoods


def test_neighbors_exclude_self_and_match_brute_force(corpus, built):
    ids, x, _ = corpus
    sel = np.arange(0, 300, 3)
    S, I = neighbors(built["flat"], x[sel], ids[sel], 7)
    assert S.shape == I.shape == (len(sel), 7)
    assert not (I == ids[sel][:, None]).any()
    for r, p in enumerate(sel):
        keep = np.arange(N) != p
        TS, _ = brute_top(x[p][None, :], ids[keep], x[keep], 7)
        np.testing.assert_allclose(S[r], TS[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_neighbors_with_exact_duplicates_drop_exactly_one(kind):
    rng = np.random.default_rng(11)
    base = clustered(60, 8, seed=12)
    x = np.concatenate([base, np.repeat(base[:1], 5, axis=0)])  # rows 0 and 60..64 are identical
    ids = make_ids(65, seed=13)
    index = VectorIndex(spec=kind, dim=8).build(ids, x)
    dup_ids = ids[[0, 60, 61, 62, 63, 64]]
    for k in (3, 5, 8):
        S, I = neighbors(index, x[[0, 62]], ids[[0, 62]], k)
        for row, me in zip(I, ids[[0, 62]]):
            assert me not in row
            assert len(set(row.tolist())) == k
            assert set(row[: min(k, 5)].tolist()) <= set(dup_ids.tolist())  # the 5 twins come first
        assert np.allclose(S[:, : min(k, 5)], 1.0, atol=1e-5)
    _ = rng


def test_neighbors_validation(built, corpus):
    ids, x, _ = corpus
    with pytest.raises(InputError, match="k must be a positive integer, got 0"):
        neighbors(built["flat"], x[:2], ids[:2], 0)
    with pytest.raises(InputError, match="one id per vector"):
        neighbors(built["flat"], x[:2], ids[:3], 2)


@given(
    n=st.integers(1, 60),
    k=st.integers(1, 12),
    block=st.integers(1, 70),
    seed=st.integers(0, 10_000),
    dups=st.booleans(),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_knn_graph_exact_equals_brute_force(n, k, block, seed, dups):
    x = clustered(n, 6, seed=seed)
    if dups and n > 3:
        x[n // 2 :: 3] = x[0]
    ids = make_ids(n, seed=seed + 1)
    g = knn_graph(ids, x, k, block_size=block)
    assert g.nbr_ids.shape == (n, k)
    S = x @ x.T
    np.fill_diagonal(S, -np.inf)
    for r in range(n):
        assert ids[r] not in g.nbr_ids[r]
        want = np.sort(S[r])[::-1][: min(k, n - 1)]
        got = g.scores[r][: min(k, n - 1)]
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert (g.nbr_ids[r, n - 1 :] == -1).all()  # padding when k >= n
        valid = g.nbr_ids[r][g.nbr_ids[r] >= 0]
        assert len(set(valid.tolist())) == len(valid)


def test_knn_graph_block_sizes_agree_and_index_path(corpus, built):
    ids, x, _ = corpus
    sub_ids, sub = ids[:500], x[:500]
    graphs = [knn_graph(sub_ids, sub, 8, block_size=b) for b in (7, 64, 333, 500, 5000)]
    for g in graphs[1:]:
        np.testing.assert_allclose(g.scores, graphs[0].scores, atol=1e-6)
    flat = VectorIndex(spec="flat", dim=D).build(sub_ids, sub)
    via_index = knn_graph(sub_ids, sub, 8, index=flat, block_size=100)
    np.testing.assert_allclose(via_index.scores, graphs[0].scores, atol=1e-5)
    assert not via_index.info["exact"] and graphs[0].info["exact"]
    forced = knn_graph(sub_ids, sub, 8, index=flat, exact=True)
    assert forced.info["exact"]
    hn = knn_graph(ids, x, 10, index=built["hnsw"])
    ex = knn_graph(ids, x, 10)
    rec = recall_at_k(
        hn.nbr_ids,
        ex.nbr_ids,
        true_scores=ex.scores,
        found_true_scores=exact_scores_of(hn.nbr_ids, x, ids, x),
    )
    assert rec >= 0.95


def test_knn_graph_save_load_and_edges(corpus, tmp_path):
    ids, x, _ = corpus
    g = knn_graph(ids[:300], x[:300], 6)
    g.save(tmp_path / "g")
    for mmap in (False, True):
        h = KnnGraph.load(tmp_path / "g", mmap=mmap)
        np.testing.assert_array_equal(h.ids, g.ids)
        np.testing.assert_array_equal(h.nbr_ids, g.nbr_ids)
        np.testing.assert_array_equal(h.scores, g.scores)
        assert h.info["exact"] and h.k == 6 and h.n == 300
    g.save(tmp_path / "g")
    assert len(list((tmp_path / "g").glob("ids.*.npy"))) == 1
    with pytest.raises(NotFoundError):
        KnnGraph.load(tmp_path / "nothing")

    thr = float(np.quantile(g.scores, 0.8))
    i, j, s = g.edges(thr)
    assert (i < j).all() and (s >= thr).all()
    pairs = set(zip(i.tolist(), j.tolist()))
    assert len(pairs) == len(i)
    want = set()
    for r in range(g.n):
        for c in range(g.k):
            if g.scores[r, c] >= thr:
                a, b = int(g.ids[r]), int(g.nbr_ids[r, c])
                want.add((min(a, b), max(a, b)))
    assert pairs == want
    mi, mj, _ = g.edges(thr, mutual=True)
    assert set(zip(mi.tolist(), mj.tolist())) <= pairs
    # mutual pairs are exactly those listed from both ends
    listed = {
        (int(g.ids[r]), int(g.nbr_ids[r, c])) for r in range(g.n) for c in range(g.k) if g.scores[r, c] >= thr
    }
    assert set(zip(mi.tolist(), mj.tolist())) == {p for p in want if p in listed and p[::-1] in listed}


@given(
    n=st.integers(0, 80),
    thr=st.floats(-0.2, 1.0),
    block=st.integers(1, 90),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=40, deadline=None)
def test_range_pairs_equals_brute_force(n, thr, block, seed):
    x = clustered(max(n, 1), 5, seed=seed)[:n]
    if n > 4:
        x[3] = x[1]  # an exact duplicate pair
    ids = make_ids(n, seed=seed + 2) if n else np.zeros(0, np.int64)
    i, j, s = range_pairs(ids, x, thr, block_size=block)
    S = x @ x.T
    want = {}
    for a in range(n):
        for b in range(a + 1, n):
            if S[a, b] >= thr:
                want[(min(ids[a], ids[b]), max(ids[a], ids[b]))] = S[a, b]
    got = dict(zip(zip(i.tolist(), j.tolist()), s.tolist()))
    # float32 blocks may flip pairs sitting exactly on the threshold; compare away from it
    near = {p for p, v in {**want, **got}.items() if abs(v - thr) < 1e-5}
    assert {p for p in got if p not in near} == {p for p in want if p not in near}
    for p in got:
        if p in want:
            assert abs(got[p] - want[p]) < 1e-5
    assert (i < j).all()
    assert list(zip(i.tolist(), j.tolist())) == sorted(got)


def test_range_pairs_validation(corpus):
    ids, x, _ = corpus
    with pytest.raises(InputError, match="threshold"):
        range_pairs(ids[:5], x[:5], float("nan"))
    with pytest.raises(InputError, match="unique"):
        range_pairs(np.zeros(5, np.int64), x[:5], 0.5)


# ------------------------------------------------------------------------------ helpers


def test_brute_force_search_matches_numpy(corpus):
    ids, x, q = corpus
    S, I = brute_force_search(q[:30], ids, x, 12, block_size=333)
    TS, TI = brute_top(q[:30], ids, x, 12)
    np.testing.assert_allclose(S, TS, atol=1e-5)
    assert recall_at_k(I, TI, true_scores=TS, found_true_scores=exact_scores_of(I, q[:30], ids, x)) == 1.0
    s1, i1 = brute_force_search(q[0], ids, x, 3)
    assert s1.shape == (3,)


def test_recall_at_k_is_tie_aware():
    true_ids = np.array([[1, 2, 3]])
    true_scores = np.array([[0.9, 0.8, 0.5]])
    found = np.array([[1, 2, 7]])  # 7 ties with 3 at 0.5
    assert recall_at_k(found, true_ids) == pytest.approx(2 / 3)
    assert recall_at_k(found, true_ids, true_scores=true_scores, found_true_scores=[[0.9, 0.8, 0.5]]) == 1.0
    assert recall_at_k(
        [[1, -1, -1]], true_ids, true_scores=true_scores, found_true_scores=[[0.9, -np.inf, -np.inf]]
    ) == pytest.approx(1 / 3)


@pytest.mark.parametrize("block", [800, 50])  # one faiss.knn block, and many small numpy blocks
def test_knn_graph_exact_with_many_duplicates(block):
    x = clustered(800, 8, seed=21)
    x[100:112] = x[0]  # 13 identical vectors: ties at similarity 1 beyond k + 1
    ids = make_ids(800, seed=22)
    g = knn_graph(ids, x, 4, block_size=block)
    S = x @ x.T
    np.fill_diagonal(S, -np.inf)
    want = -np.sort(-S, axis=1)[:, :4]
    np.testing.assert_allclose(g.scores, want, atol=1e-5)
    assert not (g.nbr_ids == ids[:, None]).any()
    twins = set(ids[[0, *range(100, 112)]].tolist())
    for r in [0, 100, 111]:
        assert set(g.nbr_ids[r].tolist()) <= twins - {int(ids[r])}


def test_rerank_restores_ivf_pq_recall(corpus, truth, built):
    ids, x, q = corpus
    TS, TI = truth
    order = np.argsort(ids)

    def lookup(wanted):
        return x[order[np.searchsorted(ids[order], wanted)]].astype(np.float16)

    S, C = built["ivf-pq"].search(q, 100)
    RS, RI = ix.rerank(q, C, lookup, 10)
    before = recall_at_k(
        C[:, :10], TI, true_scores=TS, found_true_scores=exact_scores_of(C[:, :10], q, ids, x)
    )
    after = recall_at_k(RI, TI, true_scores=TS, found_true_scores=exact_scores_of(RI, q, ids, x))
    assert after >= 0.85 and after > before + 0.3
    np.testing.assert_allclose(RS, exact_scores_of(RI, q, ids, x), atol=2e-3)  # exact (float16) scores
    assert np.all(np.diff(RS, axis=1) <= 0)
    s1, i1 = ix.rerank(q[0], C[0], lookup, 5)
    np.testing.assert_array_equal(i1, RI[0, :5])
    pad = np.full((1, 3), -1)
    pad[0, 0] = ids[0]
    s2, i2 = ix.rerank(q[:1], pad, lookup, 4)
    assert i2.tolist() == [[ids[0], -1, -1, -1]] and np.isneginf(s2[0, 1:]).all()


@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(1, 15), st.integers(0, 10_000)), min_size=1, max_size=8
    ),
    kind=st.sampled_from(["flat", "hnsw", "ivf"]),
)
@settings(max_examples=25, deadline=None)
def test_add_remove_sequences_keep_ids_consistent(ops, kind):
    """Random add/remove sequences: the index's ids always equal a plain set model, and search agrees."""
    pool = clustered(200, 8, seed=31)
    pool_ids = make_ids(200, seed=32)
    spec = make_spec(kind, 40, 8) if kind != "ivf" else make_spec("ivf", 40, 8, nlist=2, nprobe=2)
    index = VectorIndex(spec=spec, dim=8).build(pool_ids[:40], pool[:40], rng=0)
    live = set(pool_ids[:40].tolist())
    for is_add, count, seed in ops:
        rng = np.random.default_rng(seed)
        if is_add:
            free = [p for p in range(200) if int(pool_ids[p]) not in live]
            pick = rng.choice(free, size=min(count, len(free)), replace=False) if free else []
            index.add(pool_ids[pick], pool[pick])
            live |= set(pool_ids[pick].tolist())
        elif live:
            gone = rng.choice(sorted(live), size=min(count, len(live)), replace=False)
            assert index.remove(gone) == len(gone)
            live -= set(gone.tolist())
        assert index.ntotal == len(live)
        assert set(index.ids.tolist()) == live
    S, I = index.search(pool[:3], 250)
    for row in I:
        found = set(row[row >= 0].tolist())
        assert found <= live
        if kind != "hnsw":  # exhaustive kinds return every live item
            assert found == live


def test_hnsw_returns_k_results_when_k_is_above_its_ef_search():
    """HNSW gives at most efSearch results per query; a k above it (harvest --top 10000) is honoured, not
    padded with -1."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = VectorIndex(spec=make_spec("hnsw", 3000, 16, ef_search=32), dim=16).build(np.arange(3000), x)
    D, I = idx.search(x[:2], 1500)
    assert (I >= 0).all() and I.shape == (2, 1500)
    assert all(len(set(row.tolist())) == 1500 for row in I)
    assert np.all(np.diff(D, axis=1) <= 1e-6)  # still best first
    with pytest.raises(Exception, match="ef_search"):
        idx.search(x[:1], 10, ef_search=0)
