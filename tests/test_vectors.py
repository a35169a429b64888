from __future__ import annotations

import numpy as np
import pytest

from assay.errors import InputError, NoEmbeddingsError, NotFoundError, WorkspaceError
from assay.vectors import VectorStore, encoder_key


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_append_load_get_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    s = VectorStore(tmp_path / "v")
    s.create(encoder="e", version="1", dim=8, extras={"logits": 3})
    a, b = _unit(rng, 5, 8), _unit(rng, 4, 8)
    s.append(np.arange(10, 15), a, {"logits": np.ones((5, 3))})
    s.append(np.array([3, 1, 2, 0]), b, {"logits": np.zeros((4, 3))})
    ids, vecs = s.load()
    assert ids.tolist() == [10, 11, 12, 13, 14, 3, 1, 2, 0]
    assert vecs.dtype == np.float32 and np.allclose(vecs[:5], a, atol=1e-3)
    got = s.get([0, 12])
    assert np.allclose(got, np.stack([b[3], a[2]]), atol=1e-3)
    assert s.get([12], extra="logits").tolist() == [[1.0, 1.0, 1.0]]
    assert s.contains(np.array([0, 99, 14])).tolist() == [True, False, True]
    with pytest.raises(NotFoundError, match="99"):
        s.get([99])


def test_refuses_bad_rows_and_double_embedding(tmp_path):
    rng = np.random.default_rng(1)
    s = VectorStore(tmp_path / "v")
    s.create(encoder="e", version="1", dim=4)
    s.append(np.array([1, 2]), _unit(rng, 2, 4))
    with pytest.raises(InputError, match="already embedded"):
        s.append(np.array([2, 3]), _unit(rng, 2, 4))
    bad = _unit(rng, 2, 4)
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        s.append(np.array([5, 6]), bad)
    with pytest.raises(InputError, match="dim 4"):
        s.append(np.array([7]), _unit(rng, 1, 5))
    with pytest.raises(WorkspaceError, match="re-embed"):
        s.create(encoder="e", version="2", dim=4)
    assert len(s) == 2


def test_crash_leftovers_are_ignored_and_cleaned(tmp_path):
    rng = np.random.default_rng(2)
    s = VectorStore(tmp_path / "v")
    s.create(encoder="e", version="1", dim=4)
    s.append(np.array([1, 2]), _unit(rng, 2, 4))
    # A shard whose arrays were written but whose commit marker never was (killed mid-write).
    np.save(tmp_path / "v" / "shard-000002.npy", _unit(rng, 3, 4).astype(np.float16))
    np.save(tmp_path / "v" / "shard-000002.ids.npy", np.array([3, 4, 5]))
    (tmp_path / "v" / "shard-000003.npy.tmp").write_bytes(b"partial")
    assert s.ids().tolist() == [1, 2]
    with s:  # taking the writer lock cleans up
        pass
    assert sorted(p.name for p in (tmp_path / "v").iterdir() if p.name.startswith("shard")) == [
        "shard-000001.ids.npy", "shard-000001.json", "shard-000001.npy"]


def test_delete_rewrites_shards_and_keeps_other_rows(tmp_path):
    rng = np.random.default_rng(3)
    s = VectorStore(tmp_path / "v")
    s.create(encoder="e", version="1", dim=4)
    x = _unit(rng, 6, 4)
    s.append(np.arange(6), x)
    assert s.delete([1, 4, 77]) == 2
    ids, vecs = s.load()
    assert ids.tolist() == [0, 2, 3, 5]
    assert np.allclose(vecs, x[[0, 2, 3, 5]], atol=1e-3)
    s.append(np.array([1]), x[[1]])  # re-embed after removal
    assert sorted(s.ids().tolist()) == [0, 1, 2, 3, 5]


def test_lock_is_exclusive(tmp_path):
    a, b = VectorStore(tmp_path / "v"), VectorStore(tmp_path / "v")
    with a:
        with pytest.raises(WorkspaceError, match="another process"):
            b.lock()


def test_missing_store_and_keys(tmp_path):
    with pytest.raises(NoEmbeddingsError, match="assay embed"):
        VectorStore(tmp_path / "none").load()
    assert encoder_key("clip:/models/my clip") == "clip_models_my_clip"


def test_a_store_opened_before_another_resets_it_reads_the_new_rows(tmp_path):
    rng = np.random.default_rng(5)
    early = VectorStore(tmp_path / "v")
    early.create(encoder="e", version="1", dim=4)
    first = _unit(rng, 3, 4)
    early.append(np.array([1, 2, 3]), first)
    assert np.allclose(early.get([2]), first[1:2], atol=1e-3)  # the locator is cached now
    other = VectorStore(tmp_path / "v")
    other.reset()
    other.create(encoder="e", version="1", dim=4)
    second = _unit(rng, 3, 4)
    other.append(np.array([3, 1, 2]), second)  # same shard number, rows in another order
    assert np.allclose(early.get([1, 2, 3]), second[[1, 2, 0]], atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# damaged shards: a clear error naming the file and the fix, and `repair` drops exactly the damaged ones
# ---------------------------------------------------------------------------------------------------------


def _three_shards(tmp_path):
    rng = np.random.default_rng(3)
    s = VectorStore(tmp_path / "v")
    s.create(encoder="e", version="1", dim=8, extras={"logits": 3})
    for k in range(3):
        s.append(np.arange(10 * k, 10 * k + 5), _unit(rng, 5, 8), {"logits": np.ones((5, 3))})
    return s


@pytest.mark.parametrize(
    "damage",
    ["truncate-vectors", "garble-marker", "delete-ids", "short-ids", "truncate-extra", "nan-vectors"],
)
def test_a_damaged_shard_is_named_and_repair_drops_only_it(tmp_path, damage):
    from assay.errors import DamagedStoreError

    s = _three_shards(tmp_path)
    base = s.root / "shard-000002"
    if damage == "truncate-vectors":
        data = (s.root / "shard-000002.npy").read_bytes()
        (s.root / "shard-000002.npy").write_bytes(data[: len(data) // 2])
    elif damage == "garble-marker":
        base.with_suffix(".json").write_text("{not json")
    elif damage == "delete-ids":
        (s.root / "shard-000002.ids.npy").unlink()
    elif damage == "short-ids":
        np.save(s.root / "shard-000002.ids.npy", np.arange(3, dtype=np.int64))
    elif damage == "truncate-extra":
        (s.root / "shard-000002.logits.npy").write_bytes(b"\x93NUMPY garbage")
    else:  # a well-formed file whose values are not finite
        v = np.load(s.root / "shard-000002.npy")
        v[1, 2] = np.nan
        np.save(s.root / "shard-000002.npy", v)
    problems = s.check()
    assert [p.seq for p in problems] == [2] and problems[0].reason
    if damage in ("garble-marker", "delete-ids", "short-ids", "truncate-vectors"):
        # Readers fail with the file's name and the remedy, not a numpy traceback.
        with pytest.raises(DamagedStoreError, match=r"shard-000002.*assay embed --repair"):
            s.load()
    dropped = s.repair()
    assert [p.seq for p in dropped] == [2]
    assert s.check() == [] and len(s) == 10
    ids, _ = s.load()
    assert sorted(ids.tolist()) == [0, 1, 2, 3, 4, 20, 21, 22, 23, 24]
    assert not list(s.root.glob("shard-000002*"))
    assert s.repair() == []  # nothing left to drop
    # The dropped ids can be stored again.
    s.append(np.arange(10, 15), _unit(np.random.default_rng(4), 5, 8), {"logits": np.zeros((5, 3))})
    assert len(s) == 15


def test_readable_rows_counts_around_a_garbled_marker(tmp_path):
    s = _three_shards(tmp_path)
    (s.root / "shard-000001.json").write_text("[]")
    assert s.readable_rows() == 10
