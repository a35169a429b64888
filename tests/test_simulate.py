"""The simulated annotator (assay.simulate, assay.report, `assay simulate`).

A small workspace of coloured-noise images embedded with the deterministic test encoder: three classes
whose colours overlap, a train/test split in the manifest. Plus one real-data run on a CIFAR-10 subset.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import fake_encoder  # noqa: F401
import numpy as np
import pytest
from typer.testing import CliRunner

from assay import Workspace, embed, ingest
from assay.cli.main import app
from assay.errors import InputError, UnknownNameError
from assay.simulate import (
    GroundTruth,
    SimulationConfig,
    build_corpus,
    load_ground_truth,
    positives_to_keep,
    simulate,
)

CLASSES = ("red", "green", "blue")
N_ITEMS = 330


def _write_dataset(folder: Path, n: int = N_ITEMS, seed: int = 0) -> Path:
    """Images whose 4 row bands carry a class colour plus strong noise; manifest with label and split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = {"red": (200, 60, 60), "green": (60, 200, 60), "blue": (60, 60, 200)}
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        cls = CLASSES[i % 3]
        band = np.asarray(base[cls], dtype=np.float64)[None, :] + rng.normal(0, 70, size=(4, 3))  # [4 bands, rgb]
        img = np.repeat(band, 4, axis=0)[:, None, :] + rng.normal(0, 20, size=(16, 16, 3))  # [16, 16, 3]
        p = folder / f"img_{i:04d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p)
        rows.append({"uri": p.name, "label": cls, "split": "test" if i % 5 == 0 else "train"})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    # Tiny least-squares problems: BLAS threads only add contention on a shared machine.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    manifest = _write_dataset(tmp / "data")
    w = Workspace.init(tmp / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [manifest])
    embed(w)
    yield w
    w.close()


@pytest.fixture(scope="module")
def truth(ws):
    return load_ground_truth(ws)


def _cfg(**kw):
    base = {"positive": "red", "prevalence": 0.1, "budget": 80, "batch": 20, "seeds": 2, "seed_positives": 2, "seed_negatives": 18,
                "strategies": ("random", "most-likely-positive", "seals:most-likely-positive"), "seals_k": 10}
    base.update(kw)
    return SimulationConfig(**base)


@pytest.fixture(scope="module")
def result(truth):
    return simulate(truth, _cfg())


# ------------------------------------------------------------------------------------------ protocol


def test_ground_truth_reads_labels_and_splits_from_the_manifest_metadata(ws, truth):
    assert truth.ids.size == N_ITEMS and truth.vectors.shape == (N_ITEMS, 12)
    assert truth.classes == sorted(CLASSES)
    assert truth.is_test.sum() == N_ITEMS // 5
    assert all(u.endswith(".png") for u in truth.uris.values())


def test_test_items_are_never_labelled_proposed_or_in_the_corpus(truth, result):
    test_ids = set(truth.ids[truth.is_test].tolist())
    for s, corpus in result.corpus_ids.items():
        assert not test_ids & set(corpus.tolist())
        assert not test_ids & set(result.seed_ids[s].tolist())
    proposed = {m["id"] for items in result.mined.values() for m in items}
    assert proposed and not proposed & test_ids


def test_dropped_positives_are_gone_from_the_corpus_and_never_proposed(truth, result):
    for s in result.corpus_ids:
        dropped = set(result.dropped_ids[s].tolist())
        assert dropped and not dropped & set(result.corpus_ids[s].tolist())
        proposed = {m["id"] for items in result.mined.values() for m in items if m["seed"] == s}
        assert not dropped & proposed


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_seals_neighbours_come_from_the_simulated_corpus_only(truth, kind):
    from assay.simulate import _neighbors_fn, build_pool_index

    corpus = build_corpus(truth, "red", prevalence=0.1, seed_positives=2, seed_negatives=18,
                          rng=np.random.default_rng(4))
    index = build_pool_index(truth, kind)
    sims, nbrs = _neighbors_fn(index, corpus)(corpus.seed_ids, 400)
    found = set(nbrs[nbrs >= 0].tolist())
    assert found <= set(corpus.ids.tolist())
    if kind == "flat":  # exact: every corpus item comes back, none of the others
        assert found == set(corpus.ids.tolist())
        assert np.all(np.diff(sims[:, : corpus.ids.size], axis=1) <= 1e-6)  # best first
        assert np.all(nbrs[:, corpus.ids.size :] == -1)  # padding


def test_prevalence_is_honoured(truth, result):
    label = dict(zip(truth.ids.tolist(), truth.labels.tolist()))
    n_neg = int(((truth.labels != "red") & ~truth.is_test).sum())
    for corpus in result.corpus_ids.values():
        n_pos = sum(label[i] == "red" for i in corpus.tolist())
        assert n_pos == positives_to_keep(n_neg, 0.1) == round(0.1 * n_neg / 0.9)
        assert abs(n_pos / corpus.size - 0.1) < 0.01
    # Different seeds subsample different positives.
    a, b = (set(result.corpus_ids[s].tolist()) for s in (0, 1))
    assert a != b


def test_seed_composition_and_budget(truth, result):
    label = dict(zip(truth.ids.tolist(), truth.labels.tolist()))
    for s, seed in result.seed_ids.items():
        assert len(seed) == 20 and len(set(seed.tolist())) == 20
        assert sum(label[i] == "red" for i in seed.tolist()) == 2
    for name in result.summary:
        for s in (0, 1):
            rows = [r for r in result.rows if r["strategy"] == name and r["seed"] == s]
            assert [r["labels"] for r in rows] == [20, 40, 60, 80]  # the seed counts in the budget
            assert rows[0]["positives_found"] == 2
            ids = [m["id"] for m in result.mined[name] if m["seed"] == s]
            assert len(ids) == 60 and len(set(ids)) == 60  # never proposed twice
            assert not set(ids) & set(result.seed_ids[s].tolist())
            # positives found = seed positives + positives among the proposals
            assert rows[-1]["positives_found"] == 2 + sum(m["positive"] for m in result.mined[name] if m["seed"] == s)


def test_budget_not_a_multiple_of_the_batch_ends_with_a_short_batch(truth):
    res = simulate(truth, _cfg(budget=70, seeds=1, strategies=("random",)))
    assert [r["labels"] for r in res.rows] == [20, 40, 60, 70]
    assert res.rows[-1]["batch"] == 10


def test_same_seed_same_result_and_seeds_differ(truth, result):
    # Seed 1 alone, one strategy alone: the same rows and proposals as inside the full run.
    name = "seals:most-likely-positive"
    again = simulate(truth, _cfg(seeds=[1], strategies=(name,)))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rows]
    want = [r for r in result.rows if r["strategy"] == name and r["seed"] == 1]
    assert strip(again.rows) == strip(want)
    assert again.mined[name] == [m for m in result.mined[name] if m["seed"] == 1]
    assert np.array_equal(again.seed_ids[1], result.seed_ids[1])
    r0 = [m["id"] for m in result.mined["random"] if m["seed"] == 0]
    r1 = [m["id"] for m in result.mined["random"] if m["seed"] == 1]
    assert r0 != r1


def test_metrics_per_round_are_consistent(result):
    for r in result.rows:
        assert 0.0 <= r["recall"] <= 1.0 and 0.0 <= r["ap"] <= 1.0
        assert r["recall"] == pytest.approx(r["positives_found"] / r["pool_positives"])
        if r["round"] > 0:
            assert r["precision"] == pytest.approx(r["batch_positives"] / r["batch"])
            assert 0 < r["scanned_fraction"] <= 1.0
            assert r["scanned"] == r["pool_size"]
            assert r["seconds"] > 0
            assert r["ap_gain_per_1000"] is not None
        assert 1 <= r["coverage"] <= 10
    full = [r for r in result.rows if r["strategy"] == "most-likely-positive" and r["round"] > 0]
    seals = [r for r in result.rows if r["strategy"] == "seals:most-likely-positive" and r["round"] > 0]
    # The full scan scores every unlabelled item; SEALS scores only the neighbours of the labelled ones.
    assert all(r["scanned"] == len(result.corpus_ids[r["seed"]]) - (r["labels"] - r["batch"]) for r in full)
    assert all(s["scanned"] < f["scanned"] for s, f in zip(seals, full))


def test_most_likely_positive_finds_more_than_random(result):
    s = result.summary
    assert s["most-likely-positive"]["recall"] > s["random"]["recall"] + 0.15
    assert s["seals:most-likely-positive"]["recall"] > s["random"]["recall"] + 0.15


def test_build_corpus_rejects_a_prevalence_that_leaves_nothing_to_find(truth):
    with pytest.raises(InputError, match="nothing would be left to find"):
        build_corpus(truth, "red", prevalence=0.001, seed_positives=5, seed_negatives=95,
                     rng=np.random.default_rng(0))


def test_ground_truth_sorts_and_validates():
    gt = GroundTruth(ids=[5, 2], vectors=np.eye(2), labels=["a", "b"], is_test=[False, True])
    assert gt.ids.tolist() == [2, 5] and gt.labels.tolist() == ["b", "a"] and gt.is_test.tolist() == [True, False]
    with pytest.raises(InputError, match="one entry per id"):
        GroundTruth(ids=[1, 2], vectors=np.eye(2), labels=["a"], is_test=[False, True])
    with pytest.raises(InputError, match="unique"):
        GroundTruth(ids=[2, 2], vectors=np.eye(2), labels=["a", "b"], is_test=[False, True])


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"budget": 10}, "smaller than the seed"),
        ({"prevalence": 1.5}, "prevalence"),
        ({"batch": 0}, "batch"),
        ({"strategies": ("nope",)}, "unknown strategy"),
        ({"proxy": "forest"}, "unknown proxy"),
        ({"seeds": 0}, "seeds"),
    ],
)
def test_bad_config(truth, kw, match):
    with pytest.raises(InputError, match=match):
        simulate(truth, _cfg(**kw))


def test_strategy_specs_name_their_proxy():
    from assay.select.strategies import SealsStrategy
    from assay.simulate import make_strategy, split_spec

    assert split_spec("seals:entropy@mlp") == ("seals:entropy", "mlp")
    assert split_spec("random") == ("random", None)
    with pytest.raises(InputError, match="expected a proxy name"):
        split_spec("random@")
    with pytest.raises(UnknownNameError, match="unknown proxy 'forest'"):
        _cfg(strategies=("random@forest",)).validate()
    _cfg(strategies=("random@ensemble", "seals:mixed", "diverse-positive")).validate()
    s = make_strategy("seals:mixed", seals_k=7)
    assert isinstance(s, SealsStrategy) and s.k == 7
    with pytest.raises(UnknownNameError, match="seals:mixed"):  # the message lists the extra names too
        make_strategy("nope")


def test_unknown_class_lists_the_classes(truth):
    with pytest.raises(UnknownNameError, match="unknown class 'purple'.*blue, green, red"):
        simulate(truth, _cfg(positive="purple"))


# ------------------------------------------------------------------------------------------ CLI


def _run(ws, *args):
    return CliRunner().invoke(app, ["-w", str(ws.root), "simulate", *args])


_SMALL = ["--prevalence", "0.1", "--budget", "60", "--batch", "20", "--seeds", "1", "--seed-positives", "2",
          "--seed-negatives", "18", "--seals-k", "10"]


def test_cli_json_shape_and_report_files(ws, tmp_path):
    out = tmp_path / "report"
    res = _run(ws, "--positive", "green", *_SMALL, "--strategies", "random,seals:entropy", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert set(obj["strategies"]) == {"random", "seals:entropy"}
    for s in obj["strategies"].values():
        assert isinstance(s["ap"], float) and isinstance(s["recall"], float) and s["labels"] == 60
        assert isinstance(s["scanned_fraction"], float) and isinstance(s["seconds_per_round"], float)
        for k in ("mining_precision", "ap_gain_per_1000", "coverage", "novelty_hit_rate"):
            assert k in s
    assert len(obj["rounds"]) == 2 * 3 and obj["protocol"]["budget_counts_seed"] is True
    assert obj["protocol"]["encoder"] == "test-mean-color" and obj["positive"] == "green"
    for name in ("rounds.csv", "summary.json", "index.html", "recall.png", "ap.png", "scanned.png"):
        assert (out / name).is_file(), name
    with open(out / "rounds.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {"labels", "recall", "ap", "scanned_fraction", "seconds"} <= set(table[0])
    page = (out / "index.html").read_text()
    thumbs = [p.name for p in (out / "thumbs").iterdir()]
    assert thumbs and all(f'src="thumbs/{t}"' in page for t in thumbs)
    assert 'src="recall.png"' in page
    assert not list(tmp_path.glob(".report.*"))  # the temporary folder is gone


def test_cli_text_output(ws):
    res = _run(ws, "--positive", "blue", *_SMALL, "--strategies", "most-likely-positive")
    assert res.exit_code == 0, res.output
    assert "most-likely-positive" in res.stdout and "recall" in res.stdout


def test_test_fraction_holds_out_a_fixed_random_share_for_a_corpus_without_a_split(ws, truth):
    gt = load_ground_truth(ws, split_column="no-such-column", test_fraction=0.3)
    assert 0.15 < gt.is_test.mean() < 0.45
    again = load_ground_truth(ws, test_fraction=0.3)  # split columns are ignored, and the share is stable
    np.testing.assert_array_equal(gt.is_test, again.is_test)
    assert not np.array_equal(gt.is_test, truth.is_test)
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        load_ground_truth(ws, test_fraction=1.0)
    with pytest.raises(InputError, match="--test-fraction"):
        load_ground_truth(ws, split_column="no-such-column")
    res = _run(ws, "--positive", "red", *_SMALL, "--strategies", "random", "--split-column", "none",
               "--test-fraction", "0.3", "--json")
    assert res.exit_code == 0, res.output
    proto = json.loads(res.stdout)["protocol"]
    assert proto["test_fraction"] == 0.3 and proto["test_size"] == int(gt.is_test.sum())


def test_relative_uris_in_a_truth_file_are_relative_to_its_folder(ws, tmp_path, truth, monkeypatch):
    import os

    sub = tmp_path / "truth"
    sub.mkdir()
    path = sub / "truth.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "label", "split"])
        w.writeheader()
        for i, lab, t in zip(truth.ids, truth.labels, truth.is_test):
            w.writerow({"uri": os.path.relpath(truth.uris[int(i)], sub), "label": lab, "split": "test" if t else "train"})
    monkeypatch.chdir(tmp_path)  # not the truth file's folder
    gt = load_ground_truth(ws, truth=path)
    np.testing.assert_array_equal(gt.labels, truth.labels)


def test_cli_truth_file(ws, tmp_path, truth):
    path = tmp_path / "truth.csv"
    rows = [{"uri": truth.uris[int(i)], "label": "yes" if lab == "red" else "no", "split": "test" if t else "train"}
            for i, lab, t in zip(truth.ids, truth.labels, truth.is_test)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["uri", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    res = _run(ws, "--positive", "yes", *_SMALL, "--strategies", "random", "--truth", str(path), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["protocol"]["test_positives"] == int(((truth.labels == "red") & truth.is_test).sum())


@pytest.mark.parametrize(
    "args, match",
    [
        (["--positive", "purple"], "unknown class 'purple'"),
        (["--positive", "red", "--budget", "10"], "smaller than the seed"),
        (["--positive", "red", "--label-column", "kind"], "no item of the workspace carries the 'kind' column"),
        (["--positive", "red", "--test-split", "holdout"], "no item is in the test split 'holdout'"),
        (["--positive", "red", "--strategies", "seals:nope"], "unknown strategy"),
        # messages name the options as typed
        (["--positive", "red", "--seals-k", "0"], "--seals-k must be an integer >= 1, got 0"),
        (["--positive", "red", "--seals-k", "10", "--seals-k-positive", "5"],
         "--seals-k-positive must be at least --seals-k (10), got 5"),
        (["--positive", "red", "--seed-negatives", "0"], "--seed-negatives must be an integer >= 1"),
        (["--positive", "red", "--novelty-threshold", "5"], "--novelty-threshold must be a cosine in [-1, 1]"),
        (["--positive", "red", "--test-fraction", "1.5"], "--test-fraction must be a number strictly between 0 and 1"),
    ],
)
def test_cli_bad_input_fails_clearly_and_writes_nothing(ws, tmp_path, args, match):
    out = tmp_path / "out"
    small = [a for a in _SMALL]
    if "--budget" in args:
        i = small.index("--budget")
        del small[i : i + 2]
    res = _run(ws, *small, *args, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert match in " ".join(res.output.split())
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_truth_file_that_does_not_cover_the_corpus(ws, tmp_path, truth):
    path = tmp_path / "partial.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        for i, lab in list(zip(truth.ids, truth.labels))[:50]:
            w.writerow([int(i), lab])
    out = tmp_path / "out"
    res = _run(ws, "--positive", "red", *_SMALL, "--truth", str(path), "--out", str(out))
    assert res.exit_code == 2 and "does not cover the corpus" in " ".join(res.output.split())
    assert not out.exists()
    bad = tmp_path / "unknown.csv"
    bad.write_text("id,label\n999999,red\n")
    res = _run(ws, "--positive", "red", *_SMALL, "--truth", str(bad))
    assert res.exit_code == 2 and "999999" in res.output
    first = int(truth.ids[0])
    bad.write_text(f"id,label\n999999,red\nx,red\n{first},\n{first},red\n{first},red\n{first},blue\n")
    res = _run(ws, "--positive", "red", *_SMALL, "--truth", str(bad))
    out_text = " ".join(res.output.split())
    assert res.exit_code == 2 and "4 bad rows" in out_text, res.output
    for want in ("row 1: item id 999999", "row 2: id must be an integer", "row 3: empty label",
                 f"row 6: item {first} appears twice, with label/split ('red', None) and ('blue', None)"):
        assert want in out_text, res.output


def test_truth_files_that_cannot_be_read_are_clear_errors(ws, tmp_path, truth):
    (tmp_path / "adir").mkdir()
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "dup.csv").write_text(f"id,label,id\n{int(truth.ids[0])},red,{int(truth.ids[1])}\n")
    for name, words in (("adir", "is a folder, not a file"), ("bin.csv", "not UTF-8 text"),
                        ("dup.csv", "has the column(s) ['id'] more than once"), ("missing.csv", "not found")):
        res = _run(ws, "--positive", "red", *_SMALL, "--truth", str(tmp_path / name))
        assert res.exit_code == 2 and words in " ".join(res.output.split()), (name, res.output)
    # JSONL works as CSV does
    path = tmp_path / "truth.jsonl"
    path.write_text("".join(json.dumps({"id": int(i), "label": "yes" if lab == "red" else "no",
                                        "split": "test" if t else "train"}) + "\n"
                            for i, lab, t in zip(truth.ids, truth.labels, truth.is_test)))
    res = _run(ws, "--positive", "yes", *_SMALL, "--strategies", "random", "--truth", str(path), "--json")
    assert res.exit_code == 0, res.output


def test_a_truth_file_may_cover_items_outside_the_simulated_corpus(ws, tmp_path, truth):
    """A dataset's whole truth file: rows for items that dedup set aside or whose files failed are skipped."""
    item_set_aside = int(truth.ids[0])
    failed = int(truth.ids[1])
    ws.catalog.mark_errors([(failed, "gone")])
    rep = int(truth.ids[2])
    ws.catalog.replace_duplicate_groups({rep: [rep, item_set_aside]}, method="embedding", threshold=0.9)
    assert item_set_aside in ws.catalog.non_representative_ids().tolist()
    path = tmp_path / "all.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "split"])
        for i, lab, t in zip(truth.ids, truth.labels, truth.is_test):
            w.writerow([int(i), lab, "test" if t else "train"])
    gt = load_ground_truth(ws, truth=path)
    assert failed not in gt.ids.tolist() and item_set_aside not in gt.ids.tolist()
    assert gt.ids.size == truth.ids.size - 2


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.realdata
@pytest.mark.slow
def test_cifar_subset_most_likely_positive_beats_random(tmp_path, shared_data_dir):
    from assay.datasets import write_cifar10

    manifest = write_cifar10(shared_data_dir / "cifar10" / "cifar10_jpeg_bytes.npz", tmp_path / "data", n=1000, seed=3)
    w = Workspace.init(tmp_path / "ws")
    ingest(w.catalog, [manifest])
    assert embed(w, batch_size=64).embedded == 1000
    gt = load_ground_truth(w)
    cfg = SimulationConfig(positive="automobile", prevalence=0.05, budget=200, batch=30, seeds=2, seed_positives=2,
                           seed_negatives=18, strategies=("random", "most-likely-positive", "seals:most-likely-positive"),
                           seals_k=30)
    res = simulate(gt, cfg)
    s = res.summary
    # ~40 automobiles among ~800 photos; 200 labels at random find about a quarter of them.
    assert s["most-likely-positive"]["positives_found"] > 1.5 * s["random"]["positives_found"]
    assert s["most-likely-positive"]["recall"] > 0.5
    assert s["seals:most-likely-positive"]["recall"] > s["random"]["recall"]
    w.close()


def test_the_report_of_a_text_corpus_shows_the_words(tmp_path):
    from assay.report import write_report

    rng = np.random.default_rng(3)
    rows = ["uri,text,label,split"]
    for i in range(160):
        red = i % 8 == 0
        words = "zzzz card arrived" if red else " ".join(rng.choice(["aa", "bb", "cc", "dd", "ee"], 3))
        rows.append(f"t{i},{words} {i},{'red' if red else 'other'},{'test' if i % 5 == 0 else 'train'}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    w = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(w.catalog, [tmp_path / "t.csv"])
    embed(w)
    truth = load_ground_truth(w)
    assert truth.texts and all(t for t in truth.texts.values())
    res = simulate(truth, _cfg(strategies=("most-likely-positive",), seeds=1, budget=40, batch=10, seed_positives=2,
                               seed_negatives=8, prevalence=0.2))
    write_report(res, tmp_path / "rep")
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "zzzz card arrived" in page or any(w in page for w in ("aa ", "bb ", "cc "))
    assert not (tmp_path / "rep" / "thumbs").exists()  # no image was read for a text item
    w.close()


def test_seals_k_positive_reaches_the_pool_and_the_protocol(truth):
    paper = simulate(truth, _cfg(seeds=1, strategies=("seals:most-likely-positive",), seals_k_positive=10))
    wide = simulate(truth, _cfg(seeds=1, strategies=("seals:most-likely-positive",)))
    assert paper.protocol["seals_k_positive"] == 10 and wide.protocol["seals_k_positive"] == 40
    # positives' wider neighbourhoods make a pool at least as large, and larger here
    assert wide.summary["seals:most-likely-positive"]["scanned_fraction"] > \
        paper.summary["seals:most-likely-positive"]["scanned_fraction"]
