"""Model scores: import (CSV / Parquet / JSONL, all or nothing), the band, the value term, the loop, the tagger."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from test_interop_common import AMBULANCE, POLICE_VAN, cli_app, label_some, make_ws, runner, truth

from assay.errors import InputError, NoEmbeddingsError, NotFoundError, UnknownNameError
from assay.interop import scores as SC
from assay.interop.tagger import class_probability, resolve_imagenet_classes, tag_concept
from assay.loop import Miner, select_round
from assay.select import scores as S
from assay.select.strategies import SelectionContext, get_strategy


@pytest.fixture
def ws(tmp_path):
    w = make_ws(tmp_path)
    yield w
    w.close()


def _write_csv(path, header, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _n_scores(ws):
    SC.ensure_tables(ws.catalog)
    with ws.catalog.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(SC.model_scores_table)).scalar()


# ---------------------------------------------------------------------------------------------- import
def test_import_csv_by_id_and_uri_with_boxes(ws, tmp_path):
    ids = ws.catalog.ids()
    uris = ws.catalog.uris(ids[:2])
    rows = [
        [int(ids[0]), "", "red", 0.9, json.dumps([[0.1, 0.2, 0.5, 0.6]])],
        ["", uris[int(ids[1])], "red", 0.45, ""],
        [int(ids[2]), "", "red", 0.0, json.dumps([[2, 3, 10, 12, 0.7]])],
    ]
    p = _write_csv(tmp_path / "s.csv", ["id", "uri", "concept", "score", "boxes"], rows[:2])
    rep = SC.import_scores(ws.catalog, p, model="det")
    assert rep.rows == 2 and rep.concepts == {"red": 2} and rep.with_boxes == 1
    got_ids, got = SC.read_scores(ws.catalog, "red", "det")
    assert got_ids.tolist() == sorted([int(ids[0]), int(ids[1])])
    assert dict(zip(got_ids.tolist(), got.tolist())) == {int(ids[0]): 0.9, int(ids[1]): 0.45}
    assert SC.read_boxes(ws.catalog, "red", "det") == {int(ids[0]): [[0.1, 0.2, 0.5, 0.6, None]]}
    # pixel boxes are divided by the image size from the catalog (32 x 24 images)
    p2 = _write_csv(tmp_path / "p.csv", ["id", "concept", "score", "boxes"], [[int(ids[2]), "red", 0.0, rows[2][4]]])
    SC.import_scores(ws.catalog, p2, model="det", box_units="pixels")
    b = SC.read_boxes(ws.catalog, "red", "det")[int(ids[2])][0]
    assert np.allclose(b[:4], [2 / 32, 3 / 24, 10 / 32, 12 / 24]) and b[4] == 0.7
    # importing again replaces the row of that (model, concept, item)
    p3 = _write_csv(tmp_path / "again.csv", ["id", "score"], [[int(ids[0]), 0.1]])
    SC.import_scores(ws.catalog, p3, model="det", concept="red")
    got_ids, got = SC.read_scores(ws.catalog, "red", "det")
    assert len(got_ids) == 3 and got[got_ids.tolist().index(int(ids[0]))] == 0.1
    assert SC.score_models(ws.catalog) == [{"model": "det", "concept": "red", "items": 3,
                                            "mean_score": round((0.1 + 0.45 + 0.0) / 3, 6), "with_boxes": 1}]


def test_import_parquet_and_jsonl(ws, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = ws.catalog.ids()[:3].tolist()
    pq.write_table(pa.Table.from_pylist([{"id": i, "concept": "red", "score": 0.5, "boxes": [[0.0, 0.0, 1.0, 1.0]]} for i in ids]),
                   tmp_path / "s.parquet")
    assert SC.import_scores(ws.catalog, tmp_path / "s.parquet", model="m1").rows == 3
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps({"id": i, "score": 0.25}) for i in ids) + "\n")
    assert SC.import_scores(ws.catalog, tmp_path / "s.jsonl", model="m2", concept="red").with_boxes == 0
    assert {m["model"] for m in SC.score_models(ws.catalog, "red")} == {"m1", "m2"}
    with pytest.raises(InputError, match="several models"):
        SC.resolve_model(ws.catalog, "red")
    assert SC.resolve_model(ws.catalog, "red", "m2") == "m2"


@pytest.mark.parametrize(
    "header,row,match",
    [
        (["id", "concept", "score"], [999999, "red", 0.5], r"row 2: item id 999999 is not in the catalog"),
        (["uri", "concept", "score"], ["/nowhere.png", "red", 0.5], r"row 2: uri '/nowhere.png' is not in the catalog"),
        (["id", "concept", "score"], ["ID", "red", 1.5], r"row 2: score '1.5' is outside \[0, 1\]"),
        (["id", "concept", "score"], ["ID", "red", -0.1], r"row 2: score '-0.1' is outside"),
        (["id", "concept", "score"], ["ID", "red", "high"], r"row 2: score must be a number, got 'high'"),
        (["id", "concept", "score"], ["ID", "red", "nan"], r"row 2: score must be a finite number"),
        (["id", "concept", "score", "boxes"], ["ID", "red", 0.5, "[[0.5, 0.5, 0.2, 0.9]]"], r"row 2: a box needs x1 > x0"),
        (["id", "concept", "score", "boxes"], ["ID", "red", 0.5, "[[0.1, 0.2, 0.3]]"], r"row 2: a box must be \[x0, y0, x1, y1\]"),
        (["id", "concept", "score", "boxes"], ["ID", "red", 0.5, "[[10, 10, 40, 20]]"], r"row 2: normalized box .* outside \[0, 1\]"),
        (["id", "concept", "score", "boxes"], ["ID", "red", 0.5, "not json"], r"row 2: boxes must be JSON"),
        (["id", "concept", "score", "boxes"], ["ID", "red", 0.5, "[[0, 0, 1, 1, 3]]"], r"row 2: a box score must be in \[0, 1\]"),
        (["id", "concept", "score"], ["ID", "", 0.5], r"row 2: concept is empty"),
        (["id", "concept"], ["ID", "red"], r"no 'score' column"),
        (["item", "concept", "score"], ["ID", "red", 0.5], r"needs an 'id' or a 'uri' column"),
        (["id", "score"], ["ID", 0.5], r"no 'concept' column"),
        (["id", "concept", "score"], ["ID", "red", 0.5], r"row 2: item .* already has a score for 'red' in row 1"),
        (["id", "concept", "score"], ["ID", "a/b", 0.5], r"row 2: a concept name may not contain '/'"),
    ],
)
def test_import_bad_rows_write_nothing(ws, tmp_path, header, row, match):
    first = int(ws.catalog.ids()[0])
    good = [first if h == "id" else ws.catalog.uris([first])[first] if h == "uri" else "red" if h == "concept"
            else 0.5 if h == "score" else "" for h in header]
    row = [first if v == "ID" else v for v in row]
    p = _write_csv(tmp_path / "bad.csv", header, [good, row])
    with pytest.raises(InputError, match=match):
        SC.import_scores(ws.catalog, p, model="det")
    assert _n_scores(ws) == 0


def test_import_reports_every_bad_row(ws, tmp_path):
    first = int(ws.catalog.ids()[0])
    p = _write_csv(tmp_path / "bad.csv", ["id", "concept", "score"],
                   [[first, "red", 1.5], [999999, "red", 0.5], [first, "red", "high"]])
    with pytest.raises(InputError) as exc:
        SC.import_scores(ws.catalog, p, model="det")
    msg = str(exc.value)
    assert "bad.csv: 3 bad rows, nothing recorded" in msg and "row 1: score '1.5' is outside" in msg
    assert "row 2: item id 999999" in msg and "row 3: score must be a number" in msg
    assert _n_scores(ws) == 0


def test_import_pixel_boxes_outside_the_image_and_other_errors(ws, tmp_path):
    first = int(ws.catalog.ids()[0])
    p = _write_csv(tmp_path / "b.csv", ["id", "concept", "score", "boxes"], [[first, "red", 0.5, "[[0, 0, 33, 10]]"]])
    with pytest.raises(InputError, match=r"row 1: box .* outside the 32x24 image"):
        SC.import_scores(ws.catalog, p, model="det", box_units="pixels")
    with pytest.raises(UnknownNameError):
        SC.import_scores(ws.catalog, p, model="det", box_units="inches")
    with pytest.raises(InputError, match="differs from --concept"):
        SC.import_scores(ws.catalog, p, model="det", concept="blue")
    with pytest.raises(NotFoundError):
        SC.import_scores(ws.catalog, tmp_path / "missing.csv", model="det")
    (tmp_path / "e.csv").write_text("id,concept,score\n")
    with pytest.raises(InputError, match="no score rows"):
        SC.import_scores(ws.catalog, tmp_path / "e.csv", model="det")
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "score": 0.5}\n{oops\n')
    with pytest.raises(InputError, match="line 2: not JSON"):
        SC.import_scores(ws.catalog, tmp_path / "bad.jsonl", model="det", concept="red")
    assert _n_scores(ws) == 0


def test_cli_scores_import_list_use(ws, tmp_path):
    app = cli_app()
    ids = ws.catalog.ids()[:4].tolist()
    p = _write_csv(tmp_path / "s.csv", ["id", "score"], [[i, 0.5] for i in ids])
    r = runner.invoke(app, ["scores", "import", str(p), "--model", "det", "--concept", "red", "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == 4
    bad = _write_csv(tmp_path / "bad.csv", ["id", "score"], [[ids[0], 2.0]])
    r = runner.invoke(app, ["scores", "import", str(bad), "--model", "det", "--concept", "red", "-w", str(ws.root)])
    assert r.exit_code == 2 and "row 1" in r.output
    r = runner.invoke(app, ["scores", "list", "-w", str(ws.root), "--json"])
    assert json.loads(r.stdout)["models"][0]["items"] == 4
    ws.catalog.add_concept("red")
    r = runner.invoke(app, ["scores", "use", "red", "--band", "0.2", "0.8", "--weight", "0.5", "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    use = SC.get_score_use(ws.catalog, "red")
    assert use == SC.ModelScoreUse(model="det", band=(0.2, 0.8), weight=0.5)
    r = runner.invoke(app, ["scores", "use", "red", "--off", "-w", str(ws.root)])
    assert r.exit_code == 0 and SC.get_score_use(ws.catalog, "red") is None
    r = runner.invoke(app, ["scores", "use", "red", "--band", "0.8", "0.2", "-w", str(ws.root)])
    assert r.exit_code == 2 and "0 <= low < high <= 1" in r.output


# ---------------------------------------------------------------------------------------------- pure helpers
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=0, max_size=40), st.floats(0, 0.5), st.floats(0.5, 1))
def test_band_candidates_oracle(scores, lo, hi):
    if not lo < hi:
        return
    ids = np.arange(len(scores), dtype=np.int64) * 3 + 1
    s = np.asarray(scores, dtype=np.float64)
    got = SC.band_candidates(ids, s, low=lo, high=hi)
    centre = (lo + hi) / 2
    want = sorted([(abs(v - centre), int(i)) for i, v in zip(ids, s) if lo <= v <= hi])
    assert got.tolist() == [i for _, i in want]
    assert SC.band_candidates(ids, s, low=lo, high=hi, limit=2).tolist() == [i for _, i in want][:2]


def test_band_and_lookup_validation():
    with pytest.raises(InputError, match="0 <= low < high <= 1"):
        SC.band_candidates([1], [0.5], low=0.7, high=0.3)
    with pytest.raises(InputError, match="aligned"):
        SC.band_candidates([1, 2], [0.5], low=0.3, high=0.7)
    f = SC.score_lookup(np.array([5, 2, 9]), np.array([0.5, 0.2, 0.9]))
    out = f(np.array([9, 3, 2]))
    assert out[0] == 0.9 and np.isnan(out[1]) and out[2] == 0.2
    assert np.isnan(SC.score_lookup([], [])(np.array([1]))).all()
    with pytest.raises(InputError):
        SC.ModelScoreUse(model="m", weight=-1)
    with pytest.raises(UnknownNameError):
        SC.ModelScoreUse(model="m", term="bogus")


def test_model_score_term_and_value():
    p = np.array([0.5, 0.1, np.nan, 0.95])
    u = S.model_score_term(p, "uncertainty")
    assert u[0] == pytest.approx(np.log(2)) and u[0] > u[1] > u[3]
    assert u[2] == pytest.approx(np.mean(u[[0, 1, 3]]))  # unscored items get the neutral mean
    r = S.model_score_term(p, "relevance")
    assert r[3] == 0.95 and r[2] == pytest.approx((0.5 + 0.1 + 0.95) / 3)
    assert (S.model_score_term(np.full(3, np.nan)) == 0).all()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        S.model_score_term(np.array([1.5]))
    with pytest.raises(UnknownNameError):
        S.model_score_term(p, "nope")
    rel = np.array([0.1, 0.2, 0.3, 0.4])
    # d = 0 (the default) leaves the value unchanged; d > 0 adds the rank-normalised model term
    base = S.value(relevance=rel, a=1, b=0, c=0)
    assert np.allclose(S.value(relevance=rel, model=u, a=1, b=0, c=0), base)
    with_model = S.value(relevance=rel, model=u, a=1, b=0, c=0, d=2.0)
    assert np.allclose(with_model, base + 2.0 * S.normalize(u))


def test_value_strategy_model_term():
    ids = np.arange(10, dtype=np.int64)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(10, 4)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    proba = np.linspace(0.05, 0.95, 10)
    model = np.full(10, 0.99)
    model[7] = 0.5  # the only item the model is unsure about
    ctx = SelectionContext(pool_ids=ids, vectors=lambda q: vec[q], proba=lambda q: proba[q],
                           model_scores=lambda q: model[q])
    only_model = get_strategy("value", a=0, b=0, c=0, d=1.0).select(ctx, 1, 0)
    assert only_model.ids.tolist() == [7]
    plain = get_strategy("value").select(ctx, 3, 0)
    same = get_strategy("value", d=0.0).select(ctx, 3, 0)
    assert plain.ids.tolist() == same.ids.tolist()
    with pytest.raises(InputError, match="model_scores"):
        get_strategy("value", d=1.0).select(ctx.replace(model_scores=None), 3, 0)
    with pytest.raises(InputError):
        get_strategy("value", a=0, b=0, c=0, d=0)
    mult = get_strategy("value", a=0, b=0, c=0, d=1.0, form="multiplicative").select(ctx, 1, 0)
    assert mult.ids.tolist() == [7]


def test_seals_extra_candidates_join_the_pool():
    def neighbors(q, k):
        q = np.asarray(q)
        nb = np.stack([(q + j) % 5 for j in range(k)], axis=1)  # every neighbourhood stays within 0..4
        return np.ones(nb.shape, dtype=np.float32), nb.astype(np.int64)

    proba = np.full(20, 0.9)
    proba[15] = 0.5  # most uncertain, but outside the kNN pool
    ctx = SelectionContext(labelled_ids=np.array([0, 1]), proba=lambda q: proba[q], neighbors=neighbors, corpus_size=20)
    without = get_strategy("seals:entropy", pool_params={"k": 3}).select(ctx, 1, 0)
    assert 15 not in without.ids
    extra = ctx.replace(extra_candidates=np.array([15, 1, 15]), non_representative=np.array([16]))
    sel = get_strategy("seals:entropy", pool_params={"k": 3}).select(extra, 1, 0)
    assert sel.ids.tolist() == [15]
    dropped = ctx.replace(extra_candidates=np.array([15]), non_representative=np.array([15]))
    assert 15 not in get_strategy("seals:entropy", pool_params={"k": 3}).select(dropped, 1, 0).ids


def test_select_round_cold_start_seeds_from_the_band():
    corpus = np.arange(50, dtype=np.int64)
    vec = np.eye(50, 8, dtype=np.float32) + 0.01
    out = select_round(strategy="seals:entropy", n=6, rng=np.random.default_rng(0), corpus_ids=corpus,
                       vectors=lambda q: vec[q], labelled_ids=np.array([3]), labels=np.array([1]),
                       band_ids=np.array([40, 3, 41, 42]), random_fraction=0.5)
    assert out.cold_start
    seeded = [int(i) for i, r in zip(out.ids, out.reasons) if r == "seed-model"]
    assert seeded == [40, 41, 42]  # labelled item 3 dropped, band order kept
    assert out.reasons.count("seed-random") == 3


# ---------------------------------------------------------------------------------------------- the loop
def test_miner_uses_band_candidates_and_value_term(ws, tmp_path):
    t = truth(ws)
    label_some(ws, n_pos=3, n_neg=3)
    # A weak detector: unsure (0.5) about the red items not labelled yet, sure about everything else.
    labelled, _ = ws.catalog.current_labels(ws.catalog.concept("red").id)
    unsure = [i for i, v in sorted(t.items()) if v and i not in set(labelled.tolist())]
    rows = [("red", i, 0.5 if i in unsure else (0.95 if v else 0.02), None) for i, v in t.items()]
    SC.write_scores(ws.catalog, "weak", rows)
    m = Miner(ws, "red")
    row, out = m.propose(strategy="seals:value", batch=5, seed=0, seals_k=2, model_scores=SC.ModelScoreUse(
        model="weak", weight=5.0), strategy_params={"a": 0.0, "b": 0.0, "c": 0.1})
    assert not out.cold_start
    assert set(out.ids.tolist()) <= set(unsure) and "strategy-band" in out.reasons
    assert row.params["model_scores"]["model"] == "weak" and row.params["model_scores"]["band_candidates"] == len(unsure)
    assert row.params["strategy_params"]["d"] == 5.0
    # recorded use is picked up by default; False turns it off
    SC.set_score_use(ws.catalog, "red", SC.ModelScoreUse(model="weak"))
    row2, _ = m.propose(strategy="seals:entropy", batch=3, seed=0, seals_k=2)
    assert row2.params["model_scores"]["model"] == "weak"
    row3, _ = m.propose(strategy="seals:entropy", batch=3, seed=0, seals_k=2, model_scores=False)
    assert row3.params["model_scores"] is None
    with pytest.raises(NotFoundError):
        SC.set_score_use(ws.catalog, "red", SC.ModelScoreUse(model="nobody"))


# ---------------------------------------------------------------------------------------------- tagger
def test_resolve_imagenet_classes():
    assert resolve_imagenet_classes("ambulance, police van") == [AMBULANCE, POLICE_VAN]
    assert resolve_imagenet_classes("Ambulance,407,151-153") == [AMBULANCE, 151, 152, 153]
    assert resolve_imagenet_classes([407, "police van"]) == [AMBULANCE, POLICE_VAN]
    with pytest.raises(InputError, match="did you mean 'ambulance'"):
        resolve_imagenet_classes("ambulanse")
    with pytest.raises(InputError, match="outside"):
        resolve_imagenet_classes("1000")
    with pytest.raises(InputError, match="no ImageNet classes"):
        resolve_imagenet_classes(" , ")


def test_class_probability_oracle():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(7, 12)) * 3
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert np.allclose(class_probability(z, [2, 5]), p[:, 2] + p[:, 5])
    assert np.allclose(class_probability(z, range(12)), 1.0)
    with pytest.raises(InputError):
        class_probability(z, [12])


def test_tagger_scores_red_items(tmp_path):
    w = make_ws(tmp_path, encoder="test-imagenet", index=False)
    t = truth(w)
    rep = tag_concept(w, "red", "ambulance,police van")
    assert rep.items == len(t) and rep.class_names == ["ambulance", "police van"]
    ids, s = SC.read_scores(w.catalog, "red", "imagenet-tagger")
    y = np.asarray([t[int(i)] for i in ids])
    assert s[y == 1].min() > 0.5 > s[y == 0].max()
    _, logits = w.vectors().load(extra="imagenet_logits")
    assert np.allclose(s, class_probability(logits, [AMBULANCE, POLICE_VAN]))
    r = runner.invoke(cli_app(), ["scores", "tag", "red", "--imagenet-classes", "ambulance", "--model", "tg",
                                  "-w", str(w.root), "--json"])
    assert r.exit_code == 0, r.output and json.loads(r.stdout)["classes"] == [AMBULANCE]
    w.close()


def test_tagger_needs_class_logits(ws):
    with pytest.raises(NoEmbeddingsError, match="keeps no 'imagenet_logits'"):
        tag_concept(ws, "red", "ambulance")
    with pytest.raises(InputError, match="may not contain '/'"):  # a name no concept could have
        tag_concept(ws, "a/b", "ambulance")


# ---------------------------------------------------------------------------------------------- postgres
@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get("ASSAY_TEST_POSTGRES_URL"), reason="ASSAY_TEST_POSTGRES_URL is not set")
def test_scores_on_postgres(tmp_path):
    from assay.catalog import Catalog

    base = os.environ["ASSAY_TEST_POSTGRES_URL"]
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(Catalog(base).url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = Catalog(base).url + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{schema}"
    try:
        w = make_ws(tmp_path, catalog=url, n_red=3, n_other=5)
        ids = w.catalog.ids().tolist()
        p = _write_csv(tmp_path / "s.csv", ["id", "concept", "score", "boxes"],
                       [[i, "red", 0.5, "[[0.1, 0.1, 0.2, 0.2]]"] for i in ids])
        assert SC.import_scores(w.catalog, p, model="det").rows == len(ids)
        got, _ = SC.read_scores(w.catalog, "red", "det")
        assert got.tolist() == sorted(ids)
        assert len(SC.read_boxes(w.catalog, "red", "det")) == len(ids)
        bad = _write_csv(tmp_path / "bad.csv", ["id", "concept", "score"], [[ids[0], "blue", 0.4], [ids[1], "blue", 7]])
        with pytest.raises(InputError, match="row 2"):
            SC.import_scores(w.catalog, bad, model="det")
        assert {m["concept"] for m in SC.score_models(w.catalog)} == {"red"}
        w.close()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
