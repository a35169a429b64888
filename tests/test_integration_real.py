"""End to end on the real data in ../shared/data (skipped with a reason when it is absent).

CIFAR-10 photos and ImageNet-sample photos go through the whole corpus path with the real default
encoder: ingest -> embed (efficientnet-lite0 on ONNX Runtime) -> index -> search, including the ConSE text
bridge.
"""

from __future__ import annotations


import numpy as np
import pytest

from assay import Workspace, embed, ingest
from assay.datasets import write_cifar10, write_imagenet_sample
from assay.demo import knn_label_agreement
from assay.search import Searcher, build_index

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def cifar_ws(tmp_path_factory, shared_data_dir):
    tmp = tmp_path_factory.mktemp("cifar")
    manifest = write_cifar10(shared_data_dir / "cifar10" / "cifar10_jpeg_bytes.npz", tmp / "data", n=400, seed=1)
    ws = Workspace.init(tmp / "ws")
    rep = ingest(ws.catalog, [manifest])
    assert rep.new == 400 and rep.errors == 0
    erep = embed(ws, batch_size=32)
    assert erep.embedded == 400 and erep.errors == 0
    build_index(ws)
    yield ws
    ws.close()


def test_cifar_embeddings_separate_classes(cifar_ws):
    ids, vecs = cifar_ws.vectors().load()
    assert vecs.shape == (400, 1280)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-2)
    labels = np.asarray([r.meta["label"] for r in cifar_ws.catalog.get_many(ids)])
    # 1-NN label agreement far above chance (0.1) on 32x32 photos.
    assert knn_label_agreement(vecs, labels) > 0.45
    logits = cifar_ws.vectors().load(extra="imagenet_logits")[1]
    assert logits.shape == (400, 1000) and np.isfinite(logits).all()


def test_cifar_text_queries_through_the_conse_bridge(cifar_ws):
    s = Searcher(cifar_ws)
    rows = {r.id: r.meta["label"] for r in cifar_ws.catalog.get_many(cifar_ws.catalog.ids())}
    precisions = {}
    for cls in ("airplane", "automobile", "ship", "truck", "horse"):
        hits = s.search(text=f"a photo of a {cls}", k=20)
        precisions[cls] = np.mean([rows[h.id] == cls for h in hits])
    # Random retrieval would give 0.1 per class.
    assert np.mean(list(precisions.values())) > 0.3, precisions


def test_cifar_text_queries_through_the_wordnet_bridge(cifar_ws):
    """The default text route reads "a photo of a dog" as WordNet's dog (118 ImageNet breeds)."""
    wordnet, conse = Searcher(cifar_ws), Searcher(cifar_ws, text_bridge="conse")
    assert wordnet.text_matches(["a photo of a dog"]) == ["dog (118 classes)"]
    rows = {r.id: r.meta["label"] for r in cifar_ws.catalog.get_many(cifar_ws.catalog.ids())}
    classes = ("bird", "dog", "frog", "horse", "truck")
    prec = {name: np.mean([np.mean([rows[h.id] == c for h in hits])
                           for c, hits in zip(classes, s.search_texts([f"a photo of a {c}" for c in classes], k=20))])
            for name, s in (("wordnet", wordnet), ("conse", conse))}
    assert prec["wordnet"] > 0.5 and prec["wordnet"] >= prec["conse"], prec


def test_status_json_after_the_whole_path(cifar_ws):
    st = cifar_ws.status()
    assert st["items"]["total"] == 400 and st["embeddings"] == {"efficientnet-lite0": 400}


def test_imagenet_sample_photos_ingest_and_search(tmp_path, shared_data_dir):
    manifest = write_imagenet_sample(shared_data_dir / "imagenet-sample" / "imagenet-sample.tar", tmp_path / "inet")
    # A subset keeps the test fast: the first 60 photos of the manifest.
    lines = manifest.read_text().splitlines()
    (tmp_path / "inet" / "small.csv").write_text("\n".join(lines[:61]) + "\n")
    ws = Workspace.init(tmp_path / "ws")
    rep = ingest(ws.catalog, [tmp_path / "inet" / "small.csv"])
    assert rep.new == 60 and rep.errors == 0
    rows = ws.catalog.get_many(ws.catalog.ids())
    assert all(r.width > 32 and r.height > 32 and r.format == "JPEG" for r in rows)
    assert embed(ws).embedded == 60
    build_index(ws)
    # An exemplar query with a photo's own file finds that photo first.
    s = Searcher(ws)
    hits = s.search(image=rows[10].uri, k=3)
    assert hits[0].id == rows[10].id
    # The built-in ImageNet head agrees with the file's class for most photos.
    logits = ws.vectors().get([r.id for r in rows], extra="imagenet_logits")
    top1 = logits.argmax(axis=1)
    truth = np.asarray([int(r.meta["class_index"]) for r in rows])
    assert np.mean(top1 == truth) > 0.5
