"""Shared pieces of the interop tests (workspaces built with the fake encoders); holds one smoke test."""

from __future__ import annotations

import conftest
import fake_encoder
import numpy as np
from typer.testing import CliRunner

from assay import Workspace, embed, ingest
from assay.encoders.base import EncoderOutput, register_encoder
from assay.search import build_index

AMBULANCE, POLICE_VAN = 407, 734


class FakeImageNetEncoder(fake_encoder.MeanColorEncoder):
    """Mean colours as embeddings, plus 1000 'ImageNet logits': red images score high on 'ambulance'."""

    name = "test-imagenet"
    extras_spec = {"imagenet_logits": 1000}

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        base = super().embed_batch(batch)
        n = batch.shape[0]
        rgb = batch.mean(axis=(2, 3))  # [n, 3]
        logits = np.zeros((n, 1000), dtype=np.float32)  # [n, 1000]
        logits[:, AMBULANCE] = 12.0 * (rgb[:, 0] - rgb[:, 1])
        logits[:, POLICE_VAN] = 2.0 * rgb[:, 2]
        return EncoderOutput(base.embeddings, {"imagenet_logits": logits})


register_encoder("test-imagenet")(FakeImageNetEncoder)


def colour_corpus(folder, n_red=12, n_other=48, seed=0):
    """Red images (the concept) among images of other colours, with a manifest (uri,label)."""
    return conftest.colour_corpus(folder, n_red, n_other, seed)


def make_ws(tmp_path, encoder="test-mean-color", catalog=None, index=True, **kw):
    w = Workspace.init(tmp_path / "ws", default_encoder=encoder, catalog=catalog)
    ingest(w.catalog, [colour_corpus(tmp_path / "imgs", **kw)])
    embed(w)
    if index:  # (an index over a store with class logits would load a text model for the ConSE bridge)
        build_index(w, kind="flat")
    return w


def truth(ws):
    """{item id: 1 if red}."""
    return {r.id: int(r.meta["label"] == "red") for r in ws.catalog.get_many(ws.catalog.ids())}


def label_some(ws, concept="red", n_pos=8, n_neg=20, source="human"):
    """Create ``concept`` and label the first n_pos red and n_neg other items; returns (ids, values)."""
    t = truth(ws)
    pos = [i for i, v in sorted(t.items()) if v][:n_pos]
    neg = [i for i, v in sorted(t.items()) if not v][:n_neg]
    c = ws.catalog.add_concept(concept) if concept not in {x.name for x in ws.catalog.concepts()} else ws.catalog.concept(concept)
    ids = np.asarray(pos + neg, dtype=np.int64)
    vals = np.asarray([1] * len(pos) + [0] * len(neg), dtype=np.int64)
    ws.catalog.add_labels(c.id, ids, vals, source=source, annotator="alice")
    return ids, vals


def cli_app():
    import typer

    from assay.cli import interop_cmds
    from assay.cli.main import app as main_app

    names = {c.name for c in main_app.registered_commands} | {g.name for g in main_app.registered_groups}
    if "export" in names:  # the lead has registered the commands already
        return main_app
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    interop_cmds.register(app)
    return app


runner = CliRunner()


def test_fake_imagenet_store_keeps_logits(tmp_path):
    ws = make_ws(tmp_path, encoder="test-imagenet", index=False, n_red=2, n_other=4)
    _, logits = ws.vectors().load(extra="imagenet_logits")
    assert logits.shape == (6, 1000) and np.argmax(logits[0]) == AMBULANCE
    ws.close()
