"""Duplicate detection: the pure core against brute force, the workspace step (full and incremental), the CLI
and the HTML report. The real-photo quality test is test_dedup_quality.py."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import fake_encoder  # noqa: F401  registers "test-mean-color"
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from assay import Workspace, embed, ingest
from assay.dedup import (
    DEFAULT_RADIUS,
    DEFAULT_THRESHOLD,
    check_radius,
    check_threshold,
    choose_representatives,
    connected_components,
    dedup,
    embedding_pairs,
    group_duplicates,
    group_pairs,
    hamming_distances,
    hamming_pairs,
    merge_edges,
    near_duplicate_variants,
    pair_metrics,
    phash_bytes,
    phash_image,
    phash_images,
    workspace_phashes,
)
from assay.errors import InputError, NoEmbeddingsError, UnknownNameError
from assay.index import VectorIndex

runner = CliRunner()


# ---------------------------------------------------------------------------------------------- oracles


def naive_components(edges: list[tuple[int, int]]) -> list[set[int]]:
    """Union-find written the plain way, as the oracle."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    comps: dict[int, set[int]] = {}
    for x in list(parent):
        comps.setdefault(find(x), set()).add(x)
    return sorted(comps.values(), key=min)


def unit_rows(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted_vectors(n: int, d: int, seed: int, n_dups: int = 20, noise: float = 0.15) -> np.ndarray:
    """Unit vectors with some near copies (noisy copies of earlier rows) planted."""
    rng = np.random.default_rng(seed)
    x = unit_rows(n, d, rng)
    src = rng.choice(n // 2, size=n_dups, replace=False)
    dst = rng.choice(np.arange(n // 2, n), size=n_dups, replace=False)
    x[dst] = x[src] + noise * rng.standard_normal((n_dups, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_pairs(
    ids: np.ndarray, x: np.ndarray, t: float, query: np.ndarray | None = None
) -> set[tuple[int, int]]:
    """Every pair with cosine >= t from the full n x n matrix (the oracle; small n only)."""
    s = x @ x.T  # [n, n]
    a, b = np.nonzero(np.triu(s >= t, k=1))
    if query is not None:
        q = np.isin(ids, query)
        keep = q[a] | q[b]
        a, b = a[keep], b[keep]
    return set(zip(np.minimum(ids[a], ids[b]).tolist(), np.maximum(ids[a], ids[b]).tolist()))


def brute_hamming(ids: np.ndarray, codes: np.ndarray, r: int, query=None) -> set[tuple[int, int]]:
    """Every pair within r bits from the full n x n distance matrix (the oracle; small n only)."""
    bits = np.unpackbits(codes, axis=1).astype(np.int32)  # [n, 64]
    d = bits @ (1 - bits).T + (1 - bits) @ bits.T  # [n, n] Hamming distances
    a, b = np.nonzero(np.triu(d <= r, k=1))
    if query is not None:
        q = np.isin(ids, np.asarray(query))
        keep = q[a] | q[b]
        a, b = a[keep], b[keep]
    return set(zip(np.minimum(ids[a], ids[b]).tolist(), np.maximum(ids[a], ids[b]).tolist()))


def as_set(i, j) -> set[tuple[int, int]]:
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist()))


# ---------------------------------------------------------------------------------------------- grouping


edge_lists = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(edges=edge_lists, seed=st.integers(0, 10_000))
def test_components_equal_naive_union_find(edges, seed):
    ids = (
        np.random.default_rng(seed).choice(10**12, size=41, replace=False).astype(np.int64)
    )  # sparse global ids
    e = [(int(ids[a]), int(ids[b])) for a, b in edges]
    i = np.array([a for a, _ in e], dtype=np.int64)
    j = np.array([b for _, b in e], dtype=np.int64)
    nodes, labels = connected_components(i, j)
    got = sorted(({int(n) for n in nodes[labels == c]} for c in np.unique(labels)), key=min)
    assert got == naive_components(e)
    # labels are numbered in order of each component's smallest id
    firsts = [int(nodes[labels == c].min()) for c in range(labels.max() + 1)] if len(labels) else []
    assert firsts == sorted(firsts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edges=edge_lists, px=st.lists(st.integers(0, 5), min_size=41, max_size=41), seed=st.integers(0, 1000))
def test_groups_are_a_partition_with_one_representative_by_the_rule(edges, px, seed):
    i = np.array([a for a, _ in edges], dtype=np.int64)
    j = np.array([b for _, b in edges], dtype=np.int64)
    ids = np.arange(41, dtype=np.int64)
    pixels = np.array(px, dtype=np.int64) * 100
    groups = group_duplicates(i, j, ids=ids, pixels=pixels)
    seen: set[int] = set()
    for rep, members in groups.items():
        m = members.tolist()
        assert len(m) >= 2 and m == sorted(m) and rep in m
        assert not (seen & set(m))  # each item in exactly one group
        seen |= set(m)
        best = max(pixels[x] for x in m)
        assert rep == min(x for x in m if pixels[x] == best)  # most pixels, then earliest
    # symmetric: every edge's ends share a group (unless it is a lone self loop)
    where = {x: r for r, m in groups.items() for x in m.tolist()}
    for a, b in edges:
        if a != b:
            assert where[a] == where[b]
    # the same groups whatever the order and direction of the edges
    perm = np.random.default_rng(seed).permutation(len(i))
    again = group_duplicates(j[perm], i[perm], ids=ids[::-1], pixels=pixels[::-1])
    assert {r: m.tolist() for r, m in again.items()} == {r: m.tolist() for r, m in groups.items()}


def test_representative_rule_examples():
    # 7 has most pixels; 3 and 5 tie on pixels, 3 is earlier
    g = group_duplicates([3, 5, 9], [5, 7, 10], ids=[3, 5, 7, 9, 10], pixels=[100, 100, 400, 50, 50])
    assert {r: m.tolist() for r, m in g.items()} == {7: [3, 5, 7], 9: [9, 10]}
    # unknown sizes count as 0 pixels: the smallest id wins
    g = group_duplicates([20], [11])
    assert {r: m.tolist() for r, m in g.items()} == {11: [11, 20]}
    reps = choose_representatives([1, 2, 3], [0, 0, 1], ids=[2], pixels=[9])
    assert reps.tolist() == [2, 3]
    assert group_duplicates([], []) == {}
    assert group_duplicates([4], [4]) == {}  # a self loop alone is not a group


def test_grouping_validation():
    with pytest.raises(InputError, match="same length"):
        connected_components([1, 2], [3])
    with pytest.raises(InputError, match="integer item ids"):
        connected_components(np.array([1.5]), np.array([2.0]))
    with pytest.raises(InputError, match="same length"):
        choose_representatives([1, 2], [0, 0], ids=[1], pixels=[1, 2])
    i, j = merge_edges(([1], [2]), (np.array([3]), np.array([4]), np.array([0.9])))
    assert i.tolist() == [1, 3] and j.tolist() == [2, 4]


# ---------------------------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.0001, 2, float("nan"), float("inf"), "0.9", None, True])
def test_threshold_outside_0_1_is_refused(bad):
    with pytest.raises(InputError, match="threshold"):
        check_threshold(bad)


def test_threshold_and_radius_accepted_values():
    assert (
        check_threshold(1) == 1.0
        and check_threshold(0.5) == 0.5
        and check_threshold(np.float32(0.9)) == pytest.approx(0.9)
    )
    assert check_radius(0) == 0 and check_radius(32) == 32
    for bad in (-1, 33, 2.5, True, "4"):
        with pytest.raises(InputError, match="radius"):
            check_radius(bad)
    assert 0 < DEFAULT_THRESHOLD <= 1 and 0 <= DEFAULT_RADIUS <= 32


# ---------------------------------------------------------------------------------------------- pHash pairs


def planted_codes(n: int, seed: int, max_flip: int = 12) -> np.ndarray:
    """Random 64-bit codes with near copies (a few bits flipped) planted."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, 8), dtype=np.uint8)
    for dst in range(n // 2, n, 2):
        src = int(rng.integers(0, n // 2))
        bits = np.unpackbits(codes[src])
        flip = rng.choice(64, size=int(rng.integers(0, max_flip + 1)), replace=False)
        bits[flip] ^= 1
        codes[dst] = np.packbits(bits)
    return codes


@pytest.mark.parametrize("engine", ["flat", "mih", "faiss-multihash", "auto"])
@pytest.mark.parametrize("radius", [0, 1, 3, 6, 8, 12])
def test_hamming_pairs_equal_brute_force(engine, radius):
    ids = np.random.default_rng(radius).choice(10**9, size=300, replace=False).astype(np.int64)
    codes = planted_codes(300, seed=radius + 7)
    i, j, d = hamming_pairs(ids, codes, radius, engine=engine)
    truth = brute_hamming(ids, codes, radius)
    assert as_set(i, j) == truth
    assert (i < j).all() and len(set(zip(i.tolist(), j.tolist()))) == len(i)
    pos = {v: p for p, v in enumerate(ids.tolist())}
    want = hamming_distances(codes[[pos[x] for x in i.tolist()]], codes[[pos[x] for x in j.tolist()]])
    assert d.tolist() == want.tolist()
    # incremental: only pairs touching the query ids
    q = ids[::7]
    i2, j2, _ = hamming_pairs(ids, codes, radius, query_ids=q, engine=engine)
    assert as_set(i2, j2) == brute_hamming(ids, codes, radius, query=q)


def test_multi_index_hashing_plan_and_exactness():
    from assay.dedup import _FLAT_NS, _flip_masks, _multihash_plan

    nhash, b, nflip, cost = _multihash_plan(1_000_000, 8)
    assert nhash * b <= 64 and nflip == 8 // nhash and cost < _FLAT_NS * 1e12 / 10  # far cheaper than a scan
    masks = _flip_masks(b, nflip)
    assert (
        len(masks) == len(set(masks.tolist())) == sum(__import__("math").comb(b, f) for f in range(nflip + 1))
    )
    ids = np.arange(3000, dtype=np.int64) * 3
    codes = planted_codes(3000, seed=5, max_flip=10)
    codes[2000:2100] = codes[0]  # a crowded bucket: 101 identical codes
    i, j, _ = hamming_pairs(ids, codes, 10, engine="mih")
    i0, j0, _ = hamming_pairs(ids, codes, 10, engine="flat")
    assert as_set(i, j) == as_set(i0, j0) and len(i) > 101 * 100 // 2


def test_multi_index_hashing_in_small_slices_is_the_same(monkeypatch):
    import assay.dedup as dd

    ids = np.arange(800, dtype=np.int64) + 10
    codes = planted_codes(800, seed=9, max_flip=6)
    codes[100:160] = codes[1]
    want = as_set(*hamming_pairs(ids, codes, 6, engine="flat")[:2])
    monkeypatch.setattr(dd, "_MIH_MAX_CANDIDATES", 7)  # expand a few candidates at a time
    assert as_set(*hamming_pairs(ids, codes, 6, engine="mih")[:2]) == want
    q = ids[95:170]
    assert as_set(*hamming_pairs(ids, codes, 6, engine="mih", query_ids=q)[:2]) == brute_hamming(
        ids, codes, 6, query=q
    )


def test_hamming_pairs_validation():
    ids = np.arange(4, dtype=np.int64)
    codes = np.zeros((4, 8), dtype=np.uint8)
    with pytest.raises(InputError, match="uint8"):
        hamming_pairs(ids, codes.astype(np.int32), 2)
    with pytest.raises(InputError, match="expected 4 codes"):
        hamming_pairs(ids, codes[:3], 2)
    with pytest.raises(InputError, match="unique"):
        hamming_pairs(np.zeros(4, dtype=np.int64), codes, 2)
    with pytest.raises(InputError, match="query_ids must be among ids"):
        hamming_pairs(ids, codes, 2, query_ids=[99])
    with pytest.raises(UnknownNameError, match="expected one of"):
        hamming_pairs(ids, codes, 2, engine="lsh")
    i, j, d = hamming_pairs(ids, codes, 0)  # four equal codes: all six pairs at distance 0
    assert len(i) == 6 and (d == 0).all()
    assert len(hamming_pairs(ids[:1], codes[:1], 3)[0]) == 0


def test_phash_of_images_and_bytes():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    im = Image.fromarray(base).resize((256, 192), Image.Resampling.BILINEAR)
    code = phash_image(im)
    assert code.shape == (8,) and code.dtype == np.uint8
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=40)
    assert int(hamming_distances(code[None], phash_bytes(buf.getvalue())[None])[0]) <= 4
    flipped = phash_image(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert int(hamming_distances(code[None], flipped[None])[0]) > 12
    from assay.errors import DecodeError

    with pytest.raises(DecodeError):
        phash_bytes(b"not an image")


def test_flat_images_of_other_colours_are_not_phash_duplicates(tmp_path):
    """Every flat image hashes alike (its bits are set by noise); only the mean colour tells them apart."""
    from assay.dedup import LOW_DETAIL_STD, phash_detail, phash_pairs_to_keep

    rng = np.random.default_rng(0)
    flat = {
        "red": Image.new("RGB", (64, 48), (200, 20, 20)),
        "blue": Image.new("RGB", (64, 48), (20, 20, 200)),
        "black1": Image.new("RGB", (64, 48), (0, 0, 0)),
        "black2": Image.new("RGB", (80, 60), (3, 2, 3)),  # another size, nearly the same black
        "grey_ramp": Image.fromarray(np.tile(np.linspace(120, 126, 64, dtype=np.uint8), (48, 1))).convert("RGB"),
    }
    photo = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).resize((64, 48))
    names = [*flat, "photo", "photo_copy"]
    images = [*flat.values(), photo, photo.copy()]
    ids = np.arange(len(images), dtype=np.int64)
    codes = phash_images(images)
    detail = np.stack([phash_detail(im) for im in images])
    assert (detail[:5, 0] < LOW_DETAIL_STD).all() and detail[5, 0] > 20
    i, j, _ = hamming_pairs(ids, codes, 8)
    found = {(names[a], names[b]) for a, b in zip(i.tolist(), j.tolist())}
    assert ("red", "blue") in found  # what the hash alone says
    keep = phash_pairs_to_keep(i, j, ids, detail)
    kept = {(names[a], names[b]) for a, b in zip(i[keep].tolist(), j[keep].tolist())}
    assert ("black1", "black2") in kept and ("photo", "photo_copy") in kept
    assert not {("red", "blue"), ("black1", "red"), ("black1", "grey_ramp"), ("red", "grey_ramp")} & kept
    assert phash_pairs_to_keep(i[:0], j[:0], ids, detail).shape == (0,)


def test_dedup_phash_leaves_flat_images_of_other_colours_apart(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    for name, rgb in (("red", (200, 20, 20)), ("blue", (20, 20, 200)), ("green", (20, 200, 20)),
                      ("black", (0, 0, 0)), ("black_big", (1, 1, 1))):
        Image.new("RGB", (96, 64) if name != "black_big" else (192, 128), rgb).save(d / f"{name}.png")
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(ws.catalog, [d])
    res = dedup(ws, method="phash")
    names = {r.id: Path(r.uri).stem for r in ws.catalog.get_many(ws.catalog.ids(status=None))}
    groups = sorted(sorted(names[m] for m in members) for members in res.groups.values())
    assert groups == [["black", "black_big"]] and res.phash["low_detail_pairs_dropped"] > 0
    # with --method both, embedding pairs of flat images of other colours are dropped by the same rule
    embed(ws)
    res = dedup(ws, method="both", threshold=0.5, incremental=False)
    groups = sorted(sorted(names[m] for m in members) for members in res.groups.values())
    assert groups == [["black", "black_big"]] and res.pairs.get("embedding_low_detail_dropped", 0) > 0
    ws.close()


def test_near_duplicate_variants_are_decodable_and_seeded():
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8))
    a = near_duplicate_variants(im, np.random.default_rng(3))
    b = near_duplicate_variants(im, np.random.default_rng(3))
    assert list(a) == ["jpeg", "resize", "crop", "jitter", "text", "flip"] and a == b
    sizes = {k: Image.open(io.BytesIO(v)).size for k, v in a.items()}
    assert sizes["resize"] == (40, 30) and sizes["flip"] == (80, 60)
    assert (
        0.8 * 80 - 1 <= sizes["crop"][0] <= 0.9 * 80 + 1 and 0.8 * 60 - 1 <= sizes["crop"][1] <= 0.9 * 60 + 1
    )


def test_pair_metrics_and_group_pairs():
    groups = {1: [1, 2, 3], 7: [7, 8]}
    i, j = group_pairs(groups)
    assert as_set(i, j) == {(1, 2), (1, 3), (2, 3), (7, 8)}
    ids = np.array([1, 2, 3, 7, 8, 9])
    family = np.array([0, 0, 1, 2, 2, 1])  # true pairs: (1,2), (7,8), (3,9)
    m = pair_metrics(i, j, family, ids)
    assert m["tp"] == 2 and m["fp"] == 2 and m["positives"] == 3
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------- embedding pairs


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("t", [0.9, 0.97])
def test_embedding_pairs_exact_equal_brute_force(seed, t):
    x = planted_vectors(500, 24, seed)
    ids = np.random.default_rng(seed).choice(10**9, size=500, replace=False).astype(np.int64)
    truth = brute_pairs(ids, x, t)
    assert len(truth) >= 15
    i, j, s = embedding_pairs(ids, x, t, block_size=128)
    assert as_set(i, j) == truth and (s >= t).all()
    q = ids[:200]
    i, j, _ = embedding_pairs(ids, x.astype(np.float16).astype(np.float32), t, query_ids=q, block_size=100)
    near = brute_pairs(ids, x.astype(np.float16).astype(np.float32), t, query=q)
    assert as_set(i, j) == near


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_embedding_pairs_through_an_index(kind):
    x = planted_vectors(2000, 32, 3, n_dups=60)
    ids = np.arange(2000, dtype=np.int64) * 5 + 1
    index = VectorIndex(spec=kind, dim=32).build(ids, x, rng=0)
    truth = brute_pairs(ids, x, 0.9)
    i, j, s = embedding_pairs(ids, x, 0.9, index=index, k=4)
    got = as_set(i, j)
    assert got <= truth  # re-scored exactly: never a pair below the threshold
    recall = len(got) / len(truth)
    assert recall == 1.0 if kind == "flat" else recall >= 0.95
    np.testing.assert_allclose(s, np.einsum("nd,nd->n", x[(i - 1) // 5], x[(j - 1) // 5]), atol=1e-5)


def test_embedding_pairs_widen_k_for_big_clusters():
    """A cluster of 60 near-identical items: every one of its 1770 pairs is found even with k=4."""
    rng = np.random.default_rng(0)
    x = unit_rows(400, 16, rng)
    x[:60] = x[0] + 0.01 * rng.standard_normal((60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(400, dtype=np.int64)
    index = VectorIndex(spec="flat", dim=16).build(ids, x, rng=0)
    i, j, _ = embedding_pairs(ids, x, 0.99, index=index, k=4)
    assert as_set(i, j) == brute_pairs(ids, x, 0.99) and len(i) >= 60 * 59 // 2


def test_embedding_pairs_validation():
    x = unit_rows(10, 4, np.random.default_rng(0))
    ids = np.arange(10, dtype=np.int64)
    with pytest.raises(InputError, match="threshold"):
        embedding_pairs(ids, x, 0.0)
    with pytest.raises(InputError, match="threshold"):
        embedding_pairs(ids, x, 1.2)
    with pytest.raises(InputError, match="rows"):
        embedding_pairs(ids[:5], x, 0.9)
    with pytest.raises(InputError, match="unique"):
        embedding_pairs(np.zeros(10, dtype=np.int64), x, 0.9)
    with pytest.raises(InputError, match="k must be"):
        embedding_pairs(ids, x, 0.9, k=0)
    with pytest.raises(InputError, match="among ids"):
        embedding_pairs(ids, x, 0.9, query_ids=[50])
    i, j, s = embedding_pairs(ids, x, 1.0)
    assert len(i) == 0 and s.dtype == np.float32


# ---------------------------------------------------------------------------------------------- a workspace


def band_image(colors: np.ndarray, size=(64, 48), texture: int = 0) -> Image.Image:
    """4 horizontal bands, one colour each (what test-mean-color sees), over a coarse random texture
    seeded by ``texture`` (what gives pHash something two-dimensional to look at)."""
    w, h = size
    arr = np.repeat(colors.reshape(4, 1, 3), h // 4, axis=0)  # [h, 1, 3]
    arr = np.repeat(arr, w, axis=1)  # [h, w, 3]
    grid = np.random.default_rng(texture).uniform(-35, 35, size=(8, 8))  # [8, 8]
    tex = np.kron(grid, np.ones((h // 8, w // 8)))  # [h, w]
    return Image.fromarray(np.clip(arr + tex[:, :, None], 0, 255).astype(np.uint8))


def distinct_colors(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((4, 3)) ** 2 * 230 + 10).astype(np.float64) for _ in range(n)]


def noisy(im: Image.Image, seed: int, amp: int = 2) -> Image.Image:
    arr = np.asarray(im).astype(np.int16)
    arr = arr + np.random.default_rng(seed).integers(-amp, amp + 1, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def mean_color_vec(im: Image.Image) -> np.ndarray:
    enc = fake_encoder.MeanColorEncoder()
    return enc.embed_images([im])[0]


T = 0.998  # near duplicates in the fake encoder's 12-d mean-colour space


@pytest.fixture
def dup_ws(tmp_path):
    """Workspace: 10 distinct images; a noisy copy of #3; a 2x larger copy of #5 (ingested later, kept);
    a byte copy of #7; two images A, B just under the threshold of each other (bridged later)."""
    colors = distinct_colors(12, seed=4)
    a_dir = tmp_path / "src" / "a"
    a_dir.mkdir(parents=True)
    for k in range(10):
        band_image(colors[k], texture=k).save(a_dir / f"base_{k:02d}.png")
    noisy(band_image(colors[3], texture=3), 1).save(a_dir / "near_03.png")
    shutil.copy(a_dir / "base_07.png", a_dir / "zcopy_07.png")
    # A and B: B's top band is shifted so that cos(A, B) sits just below T, their blend X just above
    ca = colors[10]
    cb = ca.copy()
    shift = 1.0
    va = mean_color_vec(band_image(ca, texture=10))
    while True:
        cb = ca.copy()
        cb[0] = np.clip(ca[0] + shift * np.array([1.0, -1.0, 0.5]), 0, 255)
        vb = mean_color_vec(band_image(cb, texture=10))
        vx = mean_color_vec(band_image((ca + cb) / 2, texture=10))
        if float(va @ vb) < T - 1e-3:
            break
        shift += 1.0
    assert float(va @ vx) >= T + 5e-4 and float(vb @ vx) >= T + 5e-4  # margins beyond float16 rounding
    band_image(ca, texture=10).save(a_dir / "pair_a.png")
    band_image(cb, texture=10).save(a_dir / "pair_b.png")
    b_dir = tmp_path / "src" / "b"
    b_dir.mkdir()
    band_image(colors[5], size=(128, 96), texture=5).save(b_dir / "big_05.png")
    c_dir = tmp_path / "src" / "c"  # ingested later, for the incremental run
    c_dir.mkdir()
    noisy(band_image(colors[3], texture=3), 2).save(c_dir / "near2_03.png")
    band_image(colors[11], texture=11).save(c_dir / "new_11.png")
    band_image((ca + cb) / 2, texture=10).save(c_dir / "pair_x.png")
    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(ws.catalog, [a_dir])
    ingest(ws.catalog, [b_dir])
    embed(ws)
    ws.src = tmp_path / "src"  # type: ignore[attr-defined]
    yield ws
    ws.close()


def ids_by_name(ws) -> dict[str, int]:
    rows = ws.catalog.get_many(ws.catalog.ids(status=None))
    return {Path(r.uri).stem: r.id for r in rows}


def named_groups(ws, groups) -> dict[str, list[str]]:
    names = {v: k for k, v in ids_by_name(ws).items()}
    return {names[r]: sorted(names[m] for m in ms) for r, ms in groups.items()}


def test_fixture_vectors_are_distinct_below_the_threshold(dup_ws):
    ids, vecs = dup_ws.vectors().load()
    names = {v: k for k, v in ids_by_name(dup_ws).items()}
    s = vecs @ vecs.T
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            na, nb = names[ids[a]], names[ids[b]]
            if {na, nb} not in ({"base_03", "near_03"}, {"base_05", "big_05"}, {"base_07", "zcopy_07"}):
                assert s[a, b] < T, (na, nb, s[a, b])


def test_dedup_embedding_records_groups_and_representatives(dup_ws):
    res = dedup(dup_ws, method="embedding", threshold=T)
    assert res.mode == "full" and res.checked == res.universe == 15
    assert named_groups(dup_ws, res.groups) == {
        "base_03": ["base_03", "near_03"],
        "big_05": ["base_05", "big_05"],  # the larger image is kept although it came later
        "base_07": ["base_07", "zcopy_07"],  # same bytes: the earliest is kept
    }
    assert res.removed == 3 and res.pairs["sha256"] == 1
    n = ids_by_name(dup_ws)
    assert set(dup_ws.catalog.non_representative_ids().tolist()) == {
        n["near_03"],
        n["base_05"],
        n["zcopy_07"],
    }
    # search skips non-representatives unless asked to keep them
    from assay.search import Searcher

    s = Searcher(dup_ws)
    hits = s.search(item=n["base_03"], k=14)
    assert n["near_03"] not in [h.id for h in hits] and n["zcopy_07"] not in [h.id for h in hits]
    hits = s.search(item=n["base_03"], k=14, keep_duplicates=True)
    assert hits[0].id == n["near_03"]


def test_dedup_incremental_checks_only_new_items_and_equals_a_full_run(dup_ws):
    first = dedup(dup_ws, method="embedding", threshold=T)
    assert "pair_a" not in str(named_groups(dup_ws, first.groups))
    ingest(dup_ws.catalog, [dup_ws.src / "c"])
    embed(dup_ws)
    res = dedup(dup_ws, method="embedding", threshold=T)
    assert res.mode == "incremental" and res.checked == 3 and res.universe == 18
    assert res.index is not None and res.index["added"] == 3  # the index was brought up to date first
    got = named_groups(dup_ws, res.groups)
    assert got["base_03"] == ["base_03", "near2_03", "near_03"]  # a new item joins a group
    assert got["pair_a"] == ["pair_a", "pair_b", "pair_x"]  # a new item bridges two items
    assert res.changed_groups == 2
    again = dedup(dup_ws, method="embedding", threshold=T)
    assert again.mode == "incremental" and again.checked == 0 and again.groups == res.groups
    full = dedup(dup_ws, method="embedding", threshold=T, incremental=False)
    assert full.mode == "full" and full.groups == res.groups
    # other settings: a full run
    other = dedup(dup_ws, method="embedding", threshold=0.9999)
    assert other.mode == "full"


def test_incremental_both_checks_items_again_once_they_are_embedded(dup_ws):
    dedup(dup_ws, method="both", threshold=T)
    ingest(dup_ws.catalog, [dup_ws.src / "c"])  # new images: pHash can compare them, embeddings cannot yet
    early = dedup(dup_ws, method="both", threshold=T)
    assert early.mode == "incremental" and early.checked == 3
    embed(dup_ws)
    res = dedup(dup_ws, method="both", threshold=T)
    assert res.mode == "incremental" and res.checked == 3  # compared by their embeddings now
    full = dedup(dup_ws, method="both", threshold=T, incremental=False)
    assert named_groups(dup_ws, res.groups) == named_groups(dup_ws, full.groups)
    assert named_groups(dup_ws, res.groups)["pair_a"] == ["pair_a", "pair_b", "pair_x"]


def test_a_replaced_representative_dissolves_its_group_and_dedup_runs_in_full(dup_ws):
    first = dedup(dup_ws, method="embedding", threshold=T)
    n = ids_by_name(dup_ws)
    assert named_groups(dup_ws, first.groups)["big_05"] == ["base_05", "big_05"]
    # The representative's file is replaced by an unrelated image (another size, so ingest sees it).
    band_image(distinct_colors(1, seed=99)[0], size=(128, 80), texture=99).save(dup_ws.src / "b" / "big_05.png")
    rep = ingest(dup_ws, [dup_ws.src / "b"])
    assert rep.changed == 1
    # Its group no longer hides base_05 behind an image that does not look like it ...
    assert n["base_05"] not in dup_ws.catalog.non_representative_ids().tolist()
    assert "big_05" not in named_groups(dup_ws, dup_ws.catalog.duplicate_groups())
    embed(dup_ws)
    # ... and the next dedup checks everything again instead of trusting the old edges.
    res = dedup(dup_ws, method="embedding", threshold=T)
    assert res.mode == "full"
    got = named_groups(dup_ws, res.groups)
    assert "big_05" not in got and all("base_05" not in ms for ms in got.values())
    assert got["base_03"] == ["base_03", "near_03"]


def test_dedup_phash_caches_codes_and_counts_decode_failures(dup_ws, tmp_path):
    # a PNG whose header probes fine at ingest but whose data is cut: it cannot be decoded
    buf = io.BytesIO()
    band_image(distinct_colors(1, seed=99)[0], size=(320, 200)).save(buf, "PNG")
    d = tmp_path / "src" / "broken"
    d.mkdir()
    (d / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    ingest(dup_ws.catalog, [d])
    n = ids_by_name(dup_ws)
    assert dup_ws.catalog.get(n["cut"]).status == "ok"
    res = dedup(dup_ws, method="phash", radius=2)
    assert res.skipped_decode == 1 and res.decode_errors[0][0] == n["cut"]
    assert res.phash["computed"] == 15 and res.phash["cached"] == 0
    assert dup_ws.catalog.get(n["cut"]).status == "error"  # recorded on the item, as embed does
    g = named_groups(dup_ws, res.groups)
    assert g["base_03"] == ["base_03", "near_03"] and g["base_07"] == ["base_07", "zcopy_07"]
    assert g["big_05"] == ["base_05", "big_05"]
    res2 = dedup(dup_ws, method="phash", radius=2)
    assert res2.mode == "incremental" and res2.checked == 0 and res2.phash["computed"] == 0
    assert res2.phash["cached"] == 15 and res2.groups == res.groups
    ids, codes, rep = workspace_phashes(dup_ws, dup_ws.catalog.ids(status="ok", modality="image"))
    assert len(ids) == 15 and rep.computed == 0 and codes.shape == (15, 8)


def test_phash_cache_is_keyed_by_sha_and_compacted(dup_ws, monkeypatch):
    import assay.dedup as dd

    monkeypatch.setattr(dd._PhashCache, "MAX_PARTS", 4)
    img = dup_ws.catalog.ids(status="ok", modality="image")
    ids1, codes1, rep1 = workspace_phashes(dup_ws, img, chunk=2)  # 8 parts written, then merged into one
    assert rep1.computed == len(img) and rep1.cached == 0
    root = dup_ws.cache_dir / "phash" / dd.phash_cache_key()
    assert len(list(root.glob("part-*.npz"))) == 1
    ids2, codes2, rep2 = workspace_phashes(dup_ws, img[::-1])
    assert rep2.cached == len(img) and rep2.computed == 0
    assert (ids2 == ids1[::-1]).all() and (codes2 == codes1[::-1]).all()
    # an entry whose sha256 no longer matches the catalog is not trusted
    c_ids, c_sha, c_codes, c_detail, c_ok = dd._PhashCache(root).load()
    assert c_detail.shape == (len(img), 4) and (c_detail[:, 0] > 0).all()
    c_sha[0] = b"0" * 64
    dd._PhashCache(root).append(c_ids[:1], c_sha[:1], c_codes[:1], c_detail[:1], c_ok[:1])
    _, _, rep3 = workspace_phashes(dup_ws, img)
    assert rep3.computed == 1 and rep3.cached == len(img) - 1


def test_catalog_columns_by_scan_or_by_id_lists_agree(dup_ws, monkeypatch):
    import assay.dedup as dd

    ids = np.concatenate([dup_ws.catalog.ids(status=None)[::-1], [10_000]])  # an unknown id too
    by_list = dd._sha_and_uri(dup_ws, ids)
    monkeypatch.setattr(dd, "_SCAN_ABOVE", 0)
    by_scan = dd._sha_and_uri(dup_ws, ids)
    assert (by_list[0] == by_scan[0]).all() and by_list[1] == by_scan[1]
    assert by_list[0][-1] == b"" and by_list[1][-1] == "" and all(len(x) == 64 for x in by_list[0][:-1])


def test_dedup_both_unites_the_two_kinds_of_edges(dup_ws):
    e = dedup(dup_ws, method="embedding", threshold=T)
    p = dedup(dup_ws, method="phash", radius=2)
    totals, done = [], []
    shutil.rmtree(dup_ws.cache_dir / "phash")  # so that pHashes are computed again and counted
    b = dedup(dup_ws, method="both", threshold=T, radius=2, on_start=totals.append, progress=done.append)
    assert b.mode == "full"
    assert totals == [15, 30] and sum(done) == 30  # 15 items searched, then 15 pHashes computed
    pairs = lambda g: as_set(*group_pairs(g))  # noqa: E731
    assert pairs(b.groups) >= pairs(e.groups) | pairs(p.groups)


def test_dedup_bad_input(dup_ws, tmp_path):
    with pytest.raises(InputError, match="threshold"):
        dedup(dup_ws, threshold=0)
    with pytest.raises(InputError, match="threshold"):
        dedup(dup_ws, threshold=1.5)
    with pytest.raises(InputError, match="radius"):
        dedup(dup_ws, method="phash", radius=-1)
    with pytest.raises(UnknownNameError, match="expected one of"):
        dedup(dup_ws, method="cosine")
    empty = Workspace.init(tmp_path / "empty", default_encoder="test-mean-color")
    with pytest.raises(NoEmbeddingsError, match="assay embed"):
        dedup(empty)
    res = dedup(empty, method="phash")  # nothing to do is not an error
    assert res.groups == {} and res.removed == 0
    empty.close()


def test_dedup_builds_a_missing_index(dup_ws):
    from assay.search import build_index

    res = dedup(dup_ws, threshold=T)
    assert res.index is not None and res.index["action"] == "built"
    build_index(dup_ws)
    assert dedup(dup_ws, threshold=T).index is None  # up to date: left alone


# ---------------------------------------------------------------------------------------------- CLI and report


def cli_app():
    from assay.cli import dedup_cmd
    from assay.cli.main import app

    if not any(c.name == "dedup" for c in app.registered_commands):
        dedup_cmd.register(app)
    return app


def run_cli(*args):
    return runner.invoke(cli_app(), list(args), catch_exceptions=False)


def test_cli_json_has_the_documented_shape(dup_ws):
    r = run_cli("-w", str(dup_ws.root), "dedup", "--threshold", str(T), "--json")
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["removed"] == 3 and len(obj["groups"]) == 3
    uris = {int(k): v for k, v in dup_ws.catalog.uris(dup_ws.catalog.ids()).items()}
    for g in obj["groups"]:
        assert set(g) == {"representative", "items"} and len(g["items"]) >= 2
        assert g["representative"] in [it["id"] for it in g["items"]]
        for it in g["items"]:
            assert set(it) == {"id", "uri"} and it["uri"] == uris[it["id"]]
    assert obj["method"] == "embedding" and obj["mode"] == "full"
    r = run_cli("-w", str(dup_ws.root), "dedup", "--threshold", str(T))
    assert r.exit_code == 0 and "3 duplicate groups" in r.output and "incremental" in r.output


def test_cli_bad_input_is_a_clear_error(dup_ws, tmp_path):
    for bad in ("0", "1.5", "-0.2", "nan"):
        r = run_cli("-w", str(dup_ws.root), "dedup", "--threshold", bad)
        assert r.exit_code == 2 and "threshold" in r.output, (bad, r.output)
    r = run_cli("-w", str(dup_ws.root), "dedup", "--method", "cosine")
    assert r.exit_code == 2 and "expected one of" in r.output
    r = run_cli("-w", str(dup_ws.root), "dedup", "--method", "phash", "--radius", "40")
    assert r.exit_code == 2 and "radius" in r.output
    Workspace.init(tmp_path / "bare", default_encoder="test-mean-color").close()
    r = run_cli("-w", str(tmp_path / "bare"), "dedup")
    assert r.exit_code == 1 and "assay embed" in r.output
    # a report path that cannot be a folder is refused before any group is recorded
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        r = run_cli("-w", str(dup_ws.root), "dedup", "--threshold", str(T), "--report", str(bad))
        assert r.exit_code == 2 and "is a file, not a folder" in r.output, r.output
    assert dup_ws.catalog.duplicate_groups() == {}


def test_cli_report_writes_pages_with_relative_thumbnails(dup_ws, tmp_path):
    out = tmp_path / "report"
    r = run_cli("-w", str(dup_ws.root), "dedup", "--threshold", str(T), "--report", str(out), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["report"]
    index = (out / "index.html").read_text()
    pairs = (out / "pairs.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', index) + re.findall(r'src="([^"]+)"', pairs)
    assert srcs and all(s.startswith("thumbs/") and (out / s).is_file() for s in srcs)
    assert index.count('class="group"') == 3 and 'href="pairs.html"' in index
    for t in ("0.99", "0.95", "0.90", "0.85"):
        assert t in pairs
    assert rep["thumbnails"] == len(list((out / "thumbs").glob("*.jpg"))) and rep["groups_shown"] == 3
    thumb = Image.open(next((out / "thumbs").iterdir()))
    assert max(thumb.size) <= 160


def test_report_for_phash_bands(dup_ws, tmp_path):
    from assay.dedup_report import write_report

    dedup(dup_ws, method="phash", radius=2)
    files = write_report(dup_ws, tmp_path / "r", method="phash", radius=2)
    text = files.pairs_html.read_text()
    assert "Hamming distance" in text and "(current setting)" in text
    kinds = {b["kind"] for b in files.bands}
    assert kinds == {"hamming"} and sum(b["count"] for b in files.bands) >= 3


def test_text_only_encoders_get_a_stricter_default_and_a_large_set_aside_is_reported(tmp_path, caplog):
    import logging

    from assay import Workspace
    from assay.dedup import DEFAULT_TEXT_THRESHOLD, default_threshold
    from assay.dedup_report import write_report

    assert default_threshold("minilm") == DEFAULT_TEXT_THRESHOLD > DEFAULT_THRESHOLD
    assert default_threshold("efficientnet-lite0") == DEFAULT_THRESHOLD
    assert default_threshold("precomputed:mine") == DEFAULT_THRESHOLD
    ws = Workspace.init(tmp_path / "tws", default_encoder="test-mean-color")
    rows = ["uri,text"] + [f"t{i},aaaa bbbb {i % 3}" for i in range(12)]  # the test encoder: many alike texts
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    ingest(ws.catalog, [tmp_path / "t.csv"])
    embed(ws)
    with caplog.at_level(logging.WARNING, logger="assay.dedup"):
        res = dedup(ws, method="embedding", threshold=0.9)
    assert res.removed > 0.2 * 12 and "set aside" in caplog.text and "--threshold" in caplog.text
    files = write_report(ws, tmp_path / "rep", method=res.method, encoder=res.encoder, groups=res.groups,
                         threshold=res.threshold, radius=res.radius)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "aaaa bbbb" in page and "no preview" not in page
    assert files is not None
    ws.close()
