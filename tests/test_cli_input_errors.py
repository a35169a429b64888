"""Mistakes in what a user types are exit code 2 with a message naming the mistake, and change nothing."""

from __future__ import annotations

import pytest
from test_interop_common import label_some, make_ws, runner

from assay.cli.main import app
from assay.errors import EncoderError, EncoderSourceError, InputError


@pytest.fixture
def ws(tmp_path):
    w = make_ws(tmp_path, n_red=3, n_other=5)
    label_some(w, "red", n_pos=2, n_neg=3)
    yield w
    w.close()


def _cli(ws, *args):
    return runner.invoke(app, ["-w", str(ws.root), *args])


@pytest.mark.parametrize("args", [
    ["index", "--encoder", "bogus"],
    ["mine", "red", "--encoder", "bogus"],
    ["harvest", "red", "--encoder", "bogus"],
    ["dedup", "--encoder", "bogus"],
    ["search", "--item", "1", "--encoder", "bogus"],
    ["search", "--text", "red", "--encoder", "bogus"],
])
def test_an_encoder_name_that_is_no_encoder_lists_the_encoders(ws, args):
    r = _cli(ws, *args)
    assert r.exit_code == 2, r.output
    assert "unknown encoder 'bogus'; expected one of" in r.output and "efficientnet-lite0" in r.output


def test_a_real_encoder_without_embeddings_suggests_the_name_as_typed(ws):
    r = _cli(ws, "index", "--encoder", "clip:x")
    assert r.exit_code == 1 and "no embeddings of clip:x" in r.output
    assert "assay embed --encoder clip:x" in " ".join(r.output.split())  # the name typed, not its folder key


def test_a_missing_model_folder_is_an_input_error(tmp_path):
    from assay.encoders.base import get_encoder

    (tmp_path / "empty").mkdir()
    for source, words in ((tmp_path / "nope", "does not exist"), (tmp_path / "empty", "has no config.json")):
        enc = get_encoder(f"clip:{source}")
        with pytest.raises(EncoderSourceError, match=words) as exc:
            enc.model_dir()
        assert isinstance(exc.value, InputError) and isinstance(exc.value, EncoderError)


def test_an_encoder_of_another_modality_is_refused_before_a_store_is_made(ws, tmp_path):
    r = _cli(ws, "embed", "--encoder", "minilm")  # the workspace holds images only
    assert r.exit_code == 2 and "embeds text items only" in r.output and "image encoder" in r.output
    assert not (ws.root / "vectors" / "minilm").exists() and "minilm" not in ws.embedded_encoders()
    from assay import Workspace, ingest

    texts = Workspace.init(tmp_path / "texts", default_encoder="efficientnet-lite0")
    (tmp_path / "t.csv").write_text("text\nhello world\nanother line\n")
    ingest(texts.catalog, [tmp_path / "t.csv"])
    r = _cli(texts, "embed")
    assert r.exit_code == 2 and "holds 2 text items" in r.output and "text encoder" in r.output
    texts.close()


def test_two_encoder_names_of_one_folder_never_mix_or_reset_each_other(ws, tmp_path):
    import numpy as np

    ids = ws.catalog.ids()[:3]
    vecs = np.eye(3, 8, dtype=np.float32)
    np.save(tmp_path / "e.npy", vecs)
    np.save(tmp_path / "e.ids.npy", np.asarray(ids, dtype=np.int64))
    r = _cli(ws, "embed", "--encoder", "precomputed:a b", "--from", str(tmp_path / "e.npy"))
    assert r.exit_code == 0, r.output
    for extra in ([], ["--reset"]):
        r = _cli(ws, "embed", "--encoder", "precomputed:a_b", "--from", str(tmp_path / "e.npy"), *extra)
        assert r.exit_code == 2 and "map to the same folder" in r.output, r.output
    assert ws.embedded_encoders() == {"precomputed:a b": 3, "test-mean-color": 8}  # untouched


def test_out_folders_are_made_only_once_the_command_is_checked(ws, tmp_path):
    for args in (["mine", "nope", "--out", str(tmp_path / "a" / "sub" / "x.csv")],
                 ["export", "nope", "--format", "csv", "--out", str(tmp_path / "b" / "x.csv")],
                 ["rounds", "nope", "--out", str(tmp_path / "c" / "x.csv")],
                 ["harvest", "nope", "--out", str(tmp_path / "d" / "x.csv")]):
        r = _cli(ws, *args)
        assert r.exit_code == 2 and "no concept named 'nope'" in r.output, (args, r.output)
    assert not any((tmp_path / d).exists() for d in "abcd")
    r = _cli(ws, "harvest", "red", "--out", str(tmp_path))
    assert r.exit_code == 2 and r.output.rstrip().endswith("ending in .csv or .parquet"), r.output
    r = _cli(ws, "mine", "red", "--batch", "2", "--out", str(tmp_path / "e" / "f" / "batch.csv"))
    assert r.exit_code == 0 and (tmp_path / "e" / "f" / "batch.csv").exists(), r.output


def test_a_search_batch_file_that_cannot_be_read_is_a_clear_error(ws, tmp_path):
    (tmp_path / "qdir").mkdir()
    (tmp_path / "bin.jsonl").write_bytes(b'{"item": 1}\n\xff\xfe\n')
    for name, words in (("qdir", "is a folder, not a file"), ("bin.jsonl", "is not UTF-8 text")):
        r = _cli(ws, "search", "--batch", str(tmp_path / name))
        assert r.exit_code == 2 and words in r.output, r.output


def test_control_characters_in_names_and_texts_never_reach_the_terminal(tmp_path):
    from assay import Workspace, embed, ingest
    from assay.search import build_index

    w = Workspace.init(tmp_path / "t", default_encoder="test-mean-color")
    (tmp_path / "t.csv").write_text('id,text\n1,"evil \x1b[2J\x1b]0;pwned\x07 title"\n2,plain words\n')
    ingest(w.catalog, [tmp_path / "t.csv"])
    embed(w)
    build_index(w, kind="flat")
    r = _cli(w, "search", "--text", "evil title", "-k", "2")
    assert r.exit_code == 0 and "\x1b" not in r.output and "\\x1b[2J" in r.output, r.output
    r = _cli(w, "search", "--text", "evil title", "-k", "2", "--json")
    assert "\\u001b" in r.output  # JSON keeps the value as it is (escaped by JSON itself)
    bad = tmp_path / "imgs"
    bad.mkdir()
    (bad / "a\tb.png").write_bytes(b"not an image")
    ingest(w.catalog, [bad])
    r = _cli(w, "status", "--errors")
    line = [x for x in r.output.splitlines() if "a\\x09b.png" in x]
    assert line and "not an image" in line[0], r.output  # the tab in the name cannot split its line
    w.close()


def test_a_text_that_cannot_seed_rounds_is_warned_about_at_concept_add(ws, tmp_path):
    import numpy as np

    import assay

    ids = ws.catalog.ids()
    rng = np.random.default_rng(0)
    np.save(tmp_path / "e.npy", rng.normal(size=(len(ids), 8)).astype(np.float32))
    np.save(tmp_path / "e.ids.npy", np.asarray(ids, dtype=np.int64))
    assay.import_embeddings(ws, tmp_path / "e.npy", name="precomputed:x")
    r = _cli(ws, "concept", "add", "dog", "--text", "a dog", "--encoder", "precomputed:x")
    assert r.exit_code == 0 and "--text cannot seed this workspace's rounds" in r.output, r.output
    assert "give --exemplar" in " ".join(r.output.split())
    r = _cli(ws, "concept", "add", "cat", "--text", "a cat")  # the fake encoder has a text tower: no warning
    assert r.exit_code == 0 and "cannot seed" not in r.output


def test_status_names_the_concepts_and_a_missing_index(tmp_path):
    w = make_ws(tmp_path, index=False, n_red=2, n_other=3)
    label_some(w, "red", n_pos=2, n_neg=3)
    r = _cli(w, "status")
    assert r.exit_code == 0 and "index      none yet (run `assay index`" in r.output, r.output
    assert "concepts   red (5 labels, 2 positive)" in r.output
    w.close()
