"""Bad arguments at the Python API's boundaries: a clear InputError / NotFoundError, nothing written, and a
fraction never truncated into another item's id."""

from __future__ import annotations

import numpy as np
import pytest
from test_interop_common import make_ws

import assay
from assay.errors import InputError, NotFoundError, UnknownNameError
from assay.search import Searcher


@pytest.fixture
def ws(tmp_path):
    w = make_ws(tmp_path, n_red=4, n_other=8)
    yield w
    w.close()


def test_imports_never_join_the_store_of_an_encoder_assay_runs(ws, tmp_path):
    ids = ws.catalog.ids()[:3]
    np.save(tmp_path / "v.npy", np.eye(3, 12, dtype=np.float32))
    np.save(tmp_path / "v.ids.npy", np.asarray(ids, dtype=np.int64))
    before = ws.embedded_encoders()
    for name in ("test-mean-color", "minilm", "precomputed:", 5):
        with pytest.raises(InputError, match="name must be 'precomputed'"):
            assay.import_embeddings(ws, tmp_path / "v.npy", name=name)
    for size in (0, -1, 1.5):
        with pytest.raises(InputError, match="shard_size must be a positive integer"):
            assay.import_embeddings(ws, tmp_path / "v.npy", name="precomputed:x", shard_size=size)
    assert ws.embedded_encoders() == before  # nothing written, no empty store left behind


def test_catalog_labels_are_checked_as_record_labels_checks_them(ws):
    cat = ws.catalog
    cid = cat.add_concept("lab").id
    for ids, vals, words in (([3], [0.7], "label values must be 0"), ([4.9], [1], "must be an integer, got 4.9"),
                             ("12", "11", "must be a sequence of ids"), ([6, 6], [1, 0], "two different labels"),
                             ([5], ["yes"], "label values must be 0"), (5, 1, "must be a sequence of ids")):
        with pytest.raises(InputError, match=words):
            cat.add_labels(cid, ids, vals, source="human")
    with pytest.raises(NotFoundError, match="no concept with id 9999"):
        cat.add_labels(9999, [5], [1], source="human")
    with pytest.raises(NotFoundError, match="no round with id 9999"):
        cat.add_labels(cid, [5], [1], source="human", round_id=9999)
    assert cat.label_history(cid) == []
    assert cat.add_labels(cid, np.array([5, 6]), [np.int64(1), 0.0], source="human") == 2  # numpy and 0.0 are fine


def test_fractional_ids_are_refused_never_truncated(ws):
    n0 = ws.embedded_encoders()
    with pytest.raises(InputError, match="got 1.5"):
        ws.forget_embeddings([1.5])
    assert ws.embedded_encoders() == n0
    with pytest.raises(InputError):
        ws.vectors().get([1.9])
    with pytest.raises(InputError):
        ws.catalog.get(1.5)
    with pytest.raises(InputError):
        ws.catalog.get_many([1.5])
    with pytest.raises(InputError):
        Searcher(ws).neighbors([1.7], 2)


def test_concepts_are_checked_on_update_too(ws):
    cat = ws.catalog
    cat.add_concept("u")
    for kw, err in ((dict(exemplars="209"), InputError), (dict(exemplars=[1.7]), InputError),
                    (dict(exemplars=[99999]), NotFoundError), (dict(text=""), InputError), (dict(text=5), InputError)):
        with pytest.raises(err):
            cat.update_concept("u", **kw)
    assert cat.concept("u").exemplars == [] and cat.concept("u").text is None
    with pytest.raises(InputError, match="control characters"):
        cat.add_concept("a", exemplars=[1], exemplar_annotator="a\nb")
    with pytest.raises(InputError, match="must be a string"):
        cat.add_concept("t", text=5)
    assert cat.add_concept("e", exemplars=[1, 1]).exemplars == [1]  # once each


def test_searcher_refuses_misshaped_queries(ws):
    s = Searcher(ws)
    with pytest.raises(InputError, match="must be an integer"):
        s.search(item=1.5, k=3)
    with pytest.raises(InputError, match="exemplar item ids"):
        s.search(item=[1, "x"], k=3)  # (a list is several exemplars: each must be an id)
    with pytest.raises(InputError, match="texts must be a list of strings"):
        s.search_texts("red", k=2)
    with pytest.raises(InputError, match="not a finite, non-zero vector"):
        s.search_batch(np.zeros((1, 12)), k=2)
    v = ws.vectors().get([1])
    hits = s.search_batch(v * 50, k=2)[0]  # unnormalised rows are normalised: scores stay cosines
    assert hits[0].score < 1.0 + 1e-6 and s.search_batch(np.zeros((0, 12)), k=2) == []
    assert s.search_items([], k=2) == []
    big = s.search(vector=np.full(12, 3e38, dtype=np.float32), k=2)  # the norm in float64: no overflow
    assert len(big) == 2 and big[0].score > 0
    for bad in (None, "ws"):
        with pytest.raises(InputError, match="needs a Workspace"):
            Searcher(bad)
    with pytest.raises(InputError, match="encoder name must be a non-empty string"):
        Searcher(ws, 5)


def test_ingest_and_embed_check_their_arguments(ws, tmp_path):
    (tmp_path / "new").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "new" / "a.png")
    for bad in (0, -5, "x"):
        with pytest.raises(InputError, match="max_pixels must be a positive integer"):
            assay.ingest(ws, [tmp_path / "new"], max_pixels=bad)
    assert ws.catalog.count()["error"] == 0
    for kw in (dict(workers=0), dict(workers="2"), dict(ids=["x"]), dict(ids=5)):
        with pytest.raises(InputError):
            assay.embed(ws, **kw)
    with pytest.raises(InputError, match="needs a Workspace"):
        assay.embed("path")


def test_simulation_config_and_arguments(ws, tmp_path):
    from assay.simulate import SimulationConfig, simulate_workspace

    with pytest.raises(InputError, match="strategies must be a list of names"):
        SimulationConfig(positive="red", strategies="entropy").validate()
    with pytest.raises(InputError, match="SimulationConfig"):
        simulate_workspace(ws, {"positive": "red"})
    (tmp_path / "afile").write_text("x")
    cfg = SimulationConfig(positive="red", prevalence=0.3, budget=8, batch=2, seeds=1, seed_positives=1,
                           seed_negatives=2, strategies=["random"], n_clusters=2, seals_k=3)
    with pytest.raises(InputError, match="is a file, not a folder"):
        simulate_workspace(ws, cfg, test_fraction=0.3, out=tmp_path / "afile" / "report")
    with pytest.raises(UnknownNameError):
        SimulationConfig(positive="red", strategies=["nope"]).validate()


def test_more_boundaries_are_input_errors(ws, tmp_path):
    from assay.loop import Miner, read_label_file

    ws.catalog.add_concept("red")
    m = Miner(ws, "red")
    for kw, words in ((dict(random_fraction="0.2"), "random_fraction"), (dict(strategy_params="x"), "strategy_params"),
                      (dict(model_scores="never-imported"), "never-imported")):
        with pytest.raises((InputError, NotFoundError), match=words):
            m.propose(strategy="random", batch=2, **kw)
    assert ws.catalog.rounds(ws.catalog.concept("red").id) == []
    _, out = m.propose(strategy="random", batch=2, seed=np.int64(3))  # a numpy integer is an integer
    assert len(out.ids) == 2
    store = ws.vectors()
    with pytest.raises(NotFoundError, match="keeps no extra 'nope'"):
        store.get([1], extra="nope")
    with pytest.raises(InputError, match="dtype"):
        store.get([1], dtype="nope")
    with pytest.raises(InputError, match="float16's range"):
        store.append([999], np.full((1, store.dim), 1e6))
    with pytest.raises(InputError, match="positive integer"):
        store.create(encoder=store.meta()["encoder"], version="x", dim="4")
    for bad in (None, 5, ""):
        with pytest.raises(InputError, match="must be a path"):
            assay.Workspace.init(bad)
    with pytest.raises(InputError, match="database URL"):
        assay.Workspace.init(tmp_path / "w2", catalog=5)
    with pytest.raises(InputError, match="must be a path"):
        assay.Workspace.open(5)
    with pytest.raises(InputError, match="must be a path"):
        read_label_file(ws, None)
    with pytest.raises(InputError, match="extensions must be a list"):
        assay.ingest(ws, [tmp_path], extensions=[5])
    from assay.simulate import SimulationConfig

    for kw in (dict(seeds=[2**70]), dict(novelty_threshold=True)):
        with pytest.raises(InputError):
            SimulationConfig(positive="red", **kw).validate()
    SimulationConfig(positive="red", prevalence=np.float32(0.3)).validate()  # a numpy float is a number


def test_third_pass_boundaries(ws):
    from assay import evaluate as E
    from assay.dedup import dedup
    from assay.index import make_spec
    from assay.regions import regions_of

    with pytest.raises(InputError, match="NaN or infinite"):
        E.average_precision([1, 0], [np.inf, 0])
    with pytest.raises(InputError, match="must be numbers"):
        E.average_precision([1, 0], ["a", "b"])
    with pytest.raises(InputError, match="must be numbers"):
        E.labels_to_reach([1, 2], ["a", "b"], 0.5)
    with pytest.raises(InputError):
        E.mean_ignoring_none(5)
    assert E.mean_ignoring_none([None, float("nan"), 1.0, 3.0]) == 2.0
    with pytest.raises(InputError, match="ap must be finite"):
        E.ap_gain_per_1000([100, 200], [float("nan"), 0.2])
    with pytest.raises(InputError, match="nlist must be a positive integer"):
        make_spec("ivf", 10, 4, nlist="x")
    with pytest.raises(InputError, match="encoder name must be a non-empty string"):
        ws.vectors(5)
    with pytest.raises(InputError, match="workers must be a positive integer"):
        dedup(ws, workers=0)
    with pytest.raises(InputError, match="incremental must be True or False"):
        dedup(ws, incremental="no")
    with pytest.raises(InputError):
        regions_of(ws, "x")


def test_write_scores_checks_each_row(ws):
    from assay.interop.scores import write_scores

    for rows, words in (([("red", "x", 0.5, None)], "must be an integer"), ([("red", 1.7, 0.5, None)], "got 1.7"),
                        ([("red", 2, 0.5)], "must be \\(concept, item id, score, boxes or None\\)")):
        with pytest.raises(InputError, match=words):
            write_scores(ws.catalog, "m", rows)
