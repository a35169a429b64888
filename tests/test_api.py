"""The Python API as a notebook user meets it: one import, assay errors for wrong types, numpy scalars taken."""

from __future__ import annotations

import numpy as np
import pytest

import fake_encoder  # noqa: F401
import assay
from assay import InputError, NotFoundError, Workspace, embed, ingest
from assay.loop import Miner
from assay.search import Searcher, build_index

from conftest import write_images


@pytest.fixture
def ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    write_images(tmp_path / "imgs", 20, size=(16, 16))
    ingest(w, [tmp_path / "imgs"])
    embed(w)
    build_index(w, kind="flat")
    yield w
    w.close()


def test_the_whole_job_is_reachable_from_import_assay():
    for name in ("build_index", "Searcher", "dedup", "Miner", "export", "pseudo_label", "simulate_workspace",
                 "create_app", "ServerConfig", "embed_regions", "StorageUnavailableError"):
        assert getattr(assay, name) is not None and name in assay.__all__ and name in dir(assay)
    with pytest.raises(AttributeError):
        assay.no_such_thing  # noqa: B018


def test_record_labels_checks_everything_before_writing(ws):
    ids = [int(i) for i in ws.catalog.ids()[:3]]
    ws.catalog.add_concept("c")
    m = Miner(ws, "c")
    with pytest.raises(InputError, match="3 ids and 2 label values"):
        m.record_labels(ids, [1, 0])
    with pytest.raises(InputError, match="label must be one of"):
        m.record_labels(ids, [1, 0, 0.7])  # not truncated to 0
    with pytest.raises(InputError, match="two different labels"):
        m.record_labels([ids[0], ids[0]], [1, 0])
    with pytest.raises(InputError, match="not strings"):
        m.record_labels("123", "1")
    assert ws.catalog.current_labels(ws.catalog.concept("c").id)[0].tolist() == []
    assert m.record_labels(np.int64(ids[0]), np.int64(1)) == 1  # numpy scalars
    assert m.record_labels(ids[1:], ["yes", False]) == 2  # the words label files take
    got = dict(zip(*[a.tolist() for a in ws.catalog.current_labels(ws.catalog.concept("c").id)]))
    assert got == {ids[0]: 1, ids[1]: 1, ids[2]: 0}


def test_exemplars_are_checked_ids(ws):
    with pytest.raises(InputError, match="a list of item ids"):
        ws.catalog.add_concept("a", exemplars="209")  # not [2, 0, 9]
    with pytest.raises(NotFoundError, match="not in the catalog"):
        ws.catalog.add_concept("b", exemplars=[999999])
    with pytest.raises(InputError, match="exemplar must be an integer"):
        ws.catalog.add_concept("c", exemplars=["/some/file.jpg"])
    assert [c.name for c in ws.catalog.concepts()] == []


def test_ingest_arguments_are_checked(ws, tmp_path):
    with pytest.raises(InputError, match="needs a Workspace"):
        ingest(str(ws.root), [tmp_path / "imgs"])
    with pytest.raises(InputError, match="sources must be a list"):
        ingest(ws, None)
    with pytest.raises(InputError, match="workers must be a positive integer"):
        ingest(ws, [tmp_path / "imgs"], workers=-1)
    write_images(tmp_path / "more", 2, fmt="JPEG")
    assert ingest(ws, [tmp_path / "more"], extensions="jpeg").new == 2  # one extension, not its letters


def test_vector_queries_score_cosines_and_numpy_scalars_are_taken(ws):
    s = Searcher(ws)
    hits = s.search(vector=np.full(12, 7.0), k=3)
    assert all(-1.001 <= h.score <= 1.001 for h in hits)
    with pytest.raises(InputError, match="finite, non-zero"):
        s.search(vector=np.zeros(12), k=3)
    ws.catalog.add_concept("c")
    ids = [int(i) for i in ws.catalog.ids()[:6]]
    Miner(ws, "c").record_labels(ids, [1, 0, 1, 0, 1, 0])
    assert len(Miner(ws, "c").harvest(top=np.int64(3))) <= 3
    assert embed(ws, batch_size=np.int64(8)).embedded == 0


def test_a_source_of_the_wrong_type_and_an_unknown_concept_fail_at_once(ws):
    with pytest.raises(InputError, match="a source must be a path or URL"):
        ingest(ws, [5])
    with pytest.raises(NotFoundError):
        Miner(ws, "no-such-concept")


@pytest.mark.parametrize("first", ["from assay.dedup import embedding_pairs", "assay.dedup", "pass"])
def test_assay_dedup_is_callable_and_a_module_whatever_was_imported_first(first):
    import subprocess
    import sys

    code = ("import assay\n" + (first if first.startswith(("from", "pass")) else f"_ = {first}") + "\n"
            "from assay.dedup import DedupResult\n"
            "assert callable(assay.dedup) and callable(assay.dedup.dedup)\n"
            "assert assay.dedup.DedupResult is DedupResult\n"
            "from assay import dedup\n"
            "assert dedup is assay.dedup\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_assay_dedup_runs_when_called_as_the_package_attribute(ws):
    build_index(ws, kind="flat")
    res = assay.dedup(ws, method="embedding")
    assert res.universe == len(ws.catalog.ids()) and res.method == "embedding"
