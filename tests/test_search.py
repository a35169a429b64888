"""Workspace-level index and search (assay.search), with the small deterministic test encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import fake_encoder  # noqa: F401
from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.errors import IndexNotBuiltError, InputError, NoEmbeddingsError, NotFoundError, UnknownNameError
from assay.search import Searcher, build_index, build_knn_graph, load_knn_graph

from conftest import write_images


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    write_images(tmp_path / "imgs", 40, size=(16, 16))
    ingest(w.catalog, [tmp_path / "imgs"])
    embed(w)
    yield w
    w.close()


def _brute(ws, q, k, exclude=()):
    ids, vecs = ws.vectors().load()
    s = vecs @ q
    order = [i for i in np.argsort(-s, kind="stable") if ids[i] not in exclude][:k]
    return ids[order], s[order]


def test_item_search_matches_brute_force_and_leaves_out_the_query(ws):
    build_index(ws, kind="flat")
    s = Searcher(ws)
    item = int(ws.catalog.ids()[7])
    hits = s.search(item=item, k=5)
    assert len(hits) == 5 and item not in [h.id for h in hits]
    q = ws.vectors().get([item])[0]
    want_ids, want_scores = _brute(ws, q, 5, exclude={item})
    assert np.allclose([h.score for h in hits], want_scores, atol=1e-3)
    assert [h.uri for h in hits][0].endswith(".png")
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))


def test_k_larger_than_corpus_and_bad_k(ws):
    build_index(ws, kind="flat")
    s = Searcher(ws)
    assert len(s.search(item=int(ws.catalog.ids()[0]), k=1000)) == 39
    for bad in (0, -3):
        with pytest.raises(InputError, match="k must be a positive integer"):
            s.search(item=int(ws.catalog.ids()[0]), k=bad)


def test_incremental_add_and_removal_keep_ids_consistent(ws, tmp_path):
    rep = build_index(ws, kind="flat")
    assert rep["action"] == "built" and rep["index"]["count"] == 40
    write_images(tmp_path / "more", 5, size=(16, 16), seed=9)
    ingest(ws.catalog, [tmp_path / "more"])
    embed(ws)
    rep = build_index(ws)
    assert rep["action"] == "updated" and rep["added"] == 5 and rep["index"]["count"] == 45
    # An item that turns bad leaves the store and the index.
    gone = int(ws.catalog.ids()[3])
    ws.catalog.mark_errors([(gone, "found corrupt later")])
    ws.vectors().delete([gone])
    rep = build_index(ws)
    assert rep["removed"] == 1 and rep["index"]["count"] == 44
    s = Searcher(ws)
    assert gone not in [h.id for h in s.search(vector=ws.vectors().get([int(ws.catalog.ids()[0])])[0], k=44)]
    with pytest.raises(NotFoundError):
        s.search(item=gone, k=3)


def test_exact_duplicates_are_skipped_unless_kept(ws, tmp_path):
    src = sorted((tmp_path / "imgs").iterdir())[0]
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "copy.png").write_bytes(src.read_bytes())
    ingest(ws.catalog, [tmp_path / "dup"])
    embed(ws)
    build_index(ws)
    copy_id = ws.catalog.id_for_uri(str(tmp_path / "dup" / "copy.png"))
    orig_id = ws.catalog.id_for_uri(str(src))
    s = Searcher(ws)
    assert copy_id not in [h.id for h in s.search(item=orig_id, k=10)]
    assert s.search(item=orig_id, k=1, keep_duplicates=True)[0].id == copy_id


def test_batch_search_equals_single_queries(ws):
    build_index(ws, kind="flat")
    s = Searcher(ws)
    ids = ws.catalog.ids()[:4]
    batch = s.search_items(ids, k=3)
    for i, hits in zip(ids, batch):
        assert [h.id for h in hits] == [h.id for h in s.search(item=int(i), k=3)]


def test_text_query_to_image_only_encoder_and_other_errors(ws, tmp_path):
    s = Searcher(ws)
    with pytest.raises(IndexNotBuiltError, match="assay index"):
        s.search(item=int(ws.catalog.ids()[0]), k=3)
    build_index(ws, kind="flat")
    with pytest.raises(NotFoundError, match="unknown item"):
        s.search(item=999999, k=3)
    with pytest.raises(InputError, match="exactly one"):
        s.search(k=3)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot be used"):
        s.search(image=str(tmp_path / "bad.png"), k=3)
    with pytest.raises(NotFoundError, match="not found"):
        s.search(image=str(tmp_path / "absent.png"), k=3)
    with pytest.raises(UnknownNameError, match="index kind"):
        build_index(ws, kind="annoy")
    with pytest.raises(NoEmbeddingsError):
        build_index(ws, encoder="minilm")


def test_image_query_finds_its_own_file_first(ws, tmp_path):
    build_index(ws, kind="flat")
    path = sorted((tmp_path / "imgs").iterdir())[5]
    hits = Searcher(ws).search(image=str(path), k=3)
    assert hits[0].uri == str(path) and hits[0].score == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_through_the_workspace(ws, kind):
    build_index(ws, kind=kind, rebuild=True)
    s = Searcher(ws)
    item = int(ws.catalog.ids()[2])
    got = {h.id for h in s.search(item=item, k=5)}
    want = set(_brute(ws, ws.vectors().get([item])[0], 5, exclude={item})[0].tolist())
    assert len(got & want) >= 4


def test_reembedding_with_a_new_version_forces_a_rebuild(ws):
    build_index(ws, kind="flat")

    class V2(fake_encoder.MeanColorEncoder):
        version = "2"

    embed(ws, V2(), reset=True)
    with pytest.raises(IndexNotBuiltError, match="rebuild"):
        Searcher(ws).search(item=int(ws.catalog.ids()[0]), k=2)
    rep = build_index(ws)
    assert "re-made" in rep["rebuilt_because"] and rep["index"]["count"] == 40


def test_pca_index_and_knn_graph(ws):
    rep = build_index(ws, kind="flat", pca=6)
    assert rep["index"]["dim"] == 6
    s = Searcher(ws)
    hits = s.search(item=int(ws.catalog.ids()[0]), k=3)
    assert len(hits) == 3
    g = build_knn_graph(ws, k=4, exact=True)
    assert g.nbr_ids.shape == (40, 4)
    assert not (g.nbr_ids == g.ids[:, None]).any()
    again = load_knn_graph(ws)
    assert (again.nbr_ids == g.nbr_ids).all()
    scores, nbrs = s.neighbors(g.ids[:3], 4)
    assert (nbrs == g.nbr_ids[:3]).all()


def test_cli_index_and_search_json(ws):
    runner = CliRunner()
    r = runner.invoke(app, ["-w", str(ws.root), "index", "--json"])
    assert r.exit_code == 0, r.output
    item = int(ws.catalog.ids()[0])
    r = runner.invoke(app, ["-w", str(ws.root), "search", "--item", str(item), "-k", "3", "--json"])
    res = json.loads(r.stdout)["results"]
    assert len(res) == 3 and set(res[0]) == {"id", "score", "uri"} and item not in [x["id"] for x in res]
    r = runner.invoke(app, ["-w", str(ws.root), "search", "--text", "a truck"])  # the test encoder has a text tower
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 10
    r = runner.invoke(app, ["-w", str(ws.root), "search", "--item", str(item), "-k", "0"])
    assert r.exit_code == 2 and "k must be a positive integer, got 0" in r.output
    q = ws.root / "q.jsonl"
    q.write_text(json.dumps({"item": item}) + "\n" + json.dumps({"item": int(ws.catalog.ids()[1])}) + "\n")
    r = runner.invoke(app, ["-w", str(ws.root), "search", "--batch", str(q), "-k", "2", "--json"])
    out = json.loads(r.stdout)["queries"]
    assert len(out) == 2 and len(out[1]["results"]) == 2


def test_text_query_without_tower_or_bridge_is_refused(ws, tmp_path):
    from assay import import_embeddings

    ids = ws.catalog.ids()
    np.save(tmp_path / "e.npy", np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32))
    np.save(tmp_path / "e.ids.npy", ids)
    import_embeddings(ws, tmp_path / "e.npy")
    build_index(ws, "precomputed")
    s = Searcher(ws, "precomputed")
    assert len(s.search(item=int(ids[0]), k=3)) == 3
    with pytest.raises(InputError, match="no text tower and no zero-shot bridge"):
        s.search(text="a truck", k=3)


def _ivf_pq_workspace(tmp_path, n=2000, d=32, seed=0):
    """Text items with imported, tightly clustered vectors: compressed codes rank them poorly."""
    from assay import import_embeddings

    w = Workspace.init(tmp_path / "pq-ws", default_encoder="precomputed")
    (tmp_path / "t.csv").write_text("text\n" + "".join(f"item number {i}\n" for i in range(n)))
    ingest(w.catalog, [tmp_path / "t.csv"])
    ids = w.catalog.ids()
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d))
    x = centres[rng.integers(0, 20, n)] + 0.08 * rng.normal(size=(n, d))
    np.save(tmp_path / "e.npy", x.astype(np.float32))
    np.save(tmp_path / "e.ids.npy", ids)
    import_embeddings(w, str(tmp_path / "e.npy"))
    return w


def test_ivf_pq_results_are_reranked_with_the_stored_vectors(tmp_path):
    w = _ivf_pq_workspace(tmp_path)
    build_index(w, kind="ivf-pq")
    ids, vecs = w.vectors().load()
    queries = vecs[:40] + 0.02 * np.random.default_rng(1).normal(size=(40, vecs.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :10]  # [40, 10] row positions

    def recall(searcher):
        s, i = searcher.search_vectors(queries, 10)
        return np.mean([len(set(i[r]) & set(ids[exact[r]])) / 10 for r in range(len(queries))]), s, i

    plain, _, _ = recall(Searcher(w, rerank=0))
    reranked, scores, got = recall(Searcher(w))
    assert reranked >= 0.95 and reranked > plain, (plain, reranked)
    # re-ranked scores are the exact cosines of the stored vectors, best first
    want = np.einsum("qd,qkd->qk", queries, w.vectors().get(got.reshape(-1)).reshape(40, 10, -1))
    assert np.allclose(scores, want, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    # the query item is still left out of item searches
    item = int(ids[5])
    assert item not in [h.id for h in Searcher(w).search(item=item, k=10)]
    with pytest.raises(InputError, match="rerank"):
        Searcher(w, rerank=-1)
    w.close()


def test_text_item_hits_carry_their_text_and_cosines_stay_in_range(tmp_path):
    w = Workspace.init(tmp_path / "tws", default_encoder="test-mean-color")
    rows = ["uri,text"] + [f"t{i},\"message number {i} about {'cards' if i % 2 else 'loans'}\"" for i in range(30)]
    (tmp_path / "texts.csv").write_text("\n".join(rows) + "\n")
    ingest(w.catalog, [tmp_path / "texts.csv"])
    embed(w)
    build_index(w, kind="flat")
    s = Searcher(w)
    first = int(w.catalog.ids()[0])
    hits = s.search(item=first, k=5)
    assert hits and all(h.text and h.text.startswith("message number") for h in hits)
    assert all("text" in h.to_dict() for h in hits)
    vec = w.vectors().get([first])[0]
    top = s.search(vector=vec, k=1)[0]
    assert -1.0 <= top.score <= 1.0
    w.close()


def test_image_hits_have_no_text(ws):
    build_index(ws, kind="flat")
    hits = Searcher(ws).search(item=int(ws.catalog.ids()[0]), k=3)
    assert all(h.text is None and "text" not in h.to_dict() for h in hits)


def test_a_vector_query_is_one_vector_of_numbers(ws):
    build_index(ws, kind="flat")
    s = Searcher(ws)
    v = ws.vectors().get([int(ws.catalog.ids()[0])])[0]
    assert len(s.search(vector=v[None, :], k=3)) == 3  # [1, d] is one vector
    for bad, words in ((np.stack([v, v]), "one vector"), ("abc", "vector"), (np.zeros_like(v), "non-zero"),
                       ([], "one vector")):
        with pytest.raises(InputError, match=words):
            s.search(vector=bad, k=3)


def test_neighbours_come_from_a_fresh_stored_knn_graph_and_match_the_index(ws, tmp_path, monkeypatch):
    build_index(ws, kind="flat")
    ids = ws.catalog.ids()[:7]
    plain = Searcher(ws).neighbors(ids, k=5)
    build_knn_graph(ws, 8, exact=True)
    s = Searcher(ws)
    import assay.search as search_mod

    calls = {"n": 0}
    real = search_mod._index_neighbors

    def counting(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(search_mod, "_index_neighbors", counting)
    via_graph = s.neighbors(ids, k=5)
    assert calls["n"] == 0 and s.knn_graph() is not None
    np.testing.assert_array_equal(via_graph[1], plain[1])
    np.testing.assert_allclose(via_graph[0], plain[0], atol=1e-5)
    s9 = s.neighbors(ids, k=9)  # one more than the graph holds (a caller that drops a self-match): the graph
    assert calls["n"] == 0 and (s9[1][:, 8] == -1).all()
    np.testing.assert_array_equal(s9[1][:, :8], Searcher(ws).neighbors(ids, k=8)[1])
    s.neighbors(ids, k=10)  # more: the index answers
    assert calls["n"] == 1
    assert build_index(ws)["added"] == 0  # an `assay index` with nothing to do leaves the graph current
    assert Searcher(ws).knn_graph() is not None
    # new items and an updated index: the graph is older than the index and is not used
    write_images(tmp_path / "more", 5, size=(16, 16), seed=7)
    ingest(ws.catalog, [tmp_path / "more"])
    embed(ws)
    build_index(ws, kind="flat")
    s2 = Searcher(ws)
    assert s2.knn_graph() is None
    s2.neighbors(ids, k=5)
    assert calls["n"] == 2


def test_an_index_and_a_pca_from_different_builds_are_caught_and_rebuilt(ws):
    from assay.errors import IndexNotBuiltError as NotBuilt
    from assay.reduce import PCAReducer

    build_index(ws, kind="flat", pca=4)
    item = int(ws.catalog.ids()[3])
    before = [h.id for h in Searcher(ws).search(item=item, k=5)]
    # a `--rebuild --pca 4` killed after it saved its new PCA and before the index: another PCA on disk
    _, vecs = ws.vectors().load()
    other = PCAReducer(n_components=4).fit(vecs[::-1][:20] * np.linspace(1, 3, 12, dtype=np.float32), rng=5)
    other.save(ws.index_dir(ws.default_encoder) / "pca")
    with pytest.raises(NotBuilt, match="different builds"):
        Searcher(ws).search(item=item, k=5)
    ix = ws.status()["indexes"][ws.default_encoder]  # status says so too
    assert ix["up_to_date"] is False and "another build" in ix["problem"]
    rep = build_index(ws)  # a plain `assay index` repairs it
    ix = ws.status()["indexes"][ws.default_encoder]
    assert ix["up_to_date"] is True and "problem" not in ix
    assert rep["action"] == "built" and "did not finish" in rep["rebuilt_because"]
    assert [h.id for h in Searcher(ws).search(item=item, k=5)] == before


def test_queries_embedded_by_another_encoder_version_are_refused(ws, tmp_path, monkeypatch):
    """A store made before the encoder's weights or preprocessing changed (an upgrade): a new query vector would
    not be comparable with it, so search by image says to re-embed instead of returning subtly wrong neighbours."""
    from fake_encoder import MeanColorEncoder

    from assay.errors import WorkspaceError

    build_index(ws, kind="flat")
    monkeypatch.setattr(MeanColorEncoder, "version", "2")  # the installation's encoder changed
    query = sorted((tmp_path / "imgs").iterdir())[0]
    with pytest.raises(WorkspaceError, match="--reset"):
        Searcher(ws).search(image=str(query), k=3)
    # searching by a stored item needs no new vector, and still works
    assert Searcher(ws).search(item=int(ws.catalog.ids()[0]), k=3)
