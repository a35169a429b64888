"""The ONNX detector plugin: a tiny model built here with onnx.helper, standalone and inside the embedding pass."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from test_interop_common import cli_app, colour_corpus, make_ws, runner, truth

from assay import Workspace, embed, ingest
from assay.errors import InputError, NotFoundError
from assay.interop.detector import Detection, DetectorHook, OnnxDetector, load_adapter, run_detector
from assay.interop.scores import read_boxes, read_scores

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ADAPTER = textwrap.dedent(
    """
    import numpy as np

    class TinyAdapter:
        concepts = ["red", "blue"]

        def __init__(self, bad_score=False):
            self.bad_score = bad_score

        def preprocess(self, image):
            arr = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0  # [16, 16, 3]
            return {"images": arr.transpose(2, 0, 1)}  # [3, 16, 16]

        def postprocess(self, outputs, sizes):
            out = []
            for s, b in zip(outputs["score"], outputs["box"]):
                s = 1.5 if self.bad_score else float(s)
                out.append([("red", s, tuple(b.tolist()))] if s > 0.05 else [])
            return out

    class BadScore(TinyAdapter):
        def __init__(self):
            super().__init__(bad_score=True)
    """
)


def _tiny_model(path, batch=None):
    """score = sigmoid(10 * (mean R - mean G)); box = a constant [0.25, 0.25, 0.75, 0.75] per image."""
    from onnx import TensorProto, helper

    n = batch if batch is not None else "N"
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0),  # [N, 3]
        helper.make_node("Gather", ["m", "i0"], ["r"], axis=1),  # [N]
        helper.make_node("Gather", ["m", "i1"], ["g"], axis=1),  # [N]
        helper.make_node("Sub", ["r", "g"], ["d"]),
        helper.make_node("Mul", ["d", "k"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["score"]),
        helper.make_node("Unsqueeze", ["r", "ax1"], ["r1"]),  # [N, 1]
        helper.make_node("Mul", ["r1", "zeros"], ["z4"]),  # [N, 4]
        helper.make_node("Add", ["z4", "boxc"], ["box"]),  # [N, 4]
    ]
    inits = [
        helper.make_tensor("i0", TensorProto.INT64, [], [0]),
        helper.make_tensor("i1", TensorProto.INT64, [], [1]),
        helper.make_tensor("k", TensorProto.FLOAT, [], [10.0]),
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zeros", TensorProto.FLOAT, [1, 4], [0, 0, 0, 0]),
        helper.make_tensor("boxc", TensorProto.FLOAT, [1, 4], [0.25, 0.25, 0.75, 0.75]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, 3, 16, 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [n]),
         helper.make_tensor_value_info("box", TensorProto.FLOAT, [n, 4])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def plugin(tmp_path):
    (tmp_path / "adapter.py").write_text(ADAPTER)
    return _tiny_model(tmp_path / "tiny.onnx"), f"{tmp_path / 'adapter.py'}:TinyAdapter"


@pytest.fixture
def ws(tmp_path):
    w = make_ws(tmp_path, n_red=5, n_other=15)
    yield w
    w.close()


def test_load_adapter_forms_and_errors(plugin, tmp_path):
    _, spec = plugin
    a = load_adapter(spec)
    assert a.concepts == ["red", "blue"] and load_adapter(a) is a
    with pytest.raises(InputError, match="module:Name"):
        load_adapter("no-colon")
    with pytest.raises(NotFoundError):
        load_adapter(f"{tmp_path / 'missing.py'}:X")
    with pytest.raises(NotFoundError):
        load_adapter(f"{tmp_path / 'adapter.py'}:Nope")
    with pytest.raises(NotFoundError):
        load_adapter("assay_no_such_module:X")

    class NoConcepts:
        def preprocess(self, image): ...

        def postprocess(self, o, s): ...

    with pytest.raises(InputError, match="concepts"):
        load_adapter(NoConcepts())


def test_run_detector_stores_scores_and_boxes(ws, plugin):
    model, spec = plugin
    det = OnnxDetector(model, spec, name="tiny")
    rep = run_detector(ws, det, batch_size=4)
    t = truth(ws)
    assert rep.items == len(t) and rep.failed == 0 and rep.concepts == ["red", "blue"]
    ids, s = read_scores(ws.catalog, "red", "tiny")
    y = np.asarray([t[int(i)] for i in ids])
    assert len(ids) == len(t) and s[y == 1].min() > 0.9 and s[y == 0].max() < s[y == 1].min()
    boxes = read_boxes(ws.catalog, "red", "tiny")
    assert boxes and all(b == [[0.25, 0.25, 0.75, 0.75, pytest.approx(float(s[list(ids).index(i)]))]] for i, b in boxes.items())
    blue_ids, blue = read_scores(ws.catalog, "blue", "tiny")
    assert len(blue_ids) == len(t) and (blue == 0).all()  # no detection: score 0
    again = run_detector(ws, det, only_missing=True)
    assert again.items == 0 and again.skipped == len(t)


def test_detector_batch_of_one_model_and_bad_adapter_output(ws, tmp_path, plugin):
    _, spec = plugin
    fixed = _tiny_model(tmp_path / "fixed.onnx", batch=1)
    det = OnnxDetector(fixed, spec, name="fixed").load()
    rep = run_detector(ws, det, batch_size=8)
    assert rep.items == len(truth(ws))
    bad = OnnxDetector(plugin[0], f"{tmp_path / 'adapter.py'}:BadScore", name="bad")
    with pytest.raises(InputError, match=r"detector 'bad', image 0: score 1.5 is outside \[0, 1\]"):
        run_detector(ws, bad)
    assert len(read_scores(ws.catalog, "red", "bad")[0]) == 0
    with pytest.raises(NotFoundError):
        OnnxDetector(tmp_path / "none.onnx", spec).load()


def test_detector_hook_inside_the_embedding_pass(tmp_path, plugin):
    model, spec = plugin
    w = Workspace.init(tmp_path / "ws2", default_encoder="test-mean-color")
    ingest(w.catalog, [colour_corpus(tmp_path / "imgs2", n_red=4, n_other=8)])
    hook = DetectorHook(w, OnnxDetector(model, spec, name="tiny"), commit_every=5)
    rep = embed(w, batch_size=4, hooks=[hook])
    assert rep.embedded == 12 and hook.report.items == 12 and hook.report.failed == 0
    ids, s = read_scores(w.catalog, "red", "tiny")
    assert ids.tolist() == sorted(w.vectors().ids().tolist())
    t = truth(w)
    assert all((s_ > 0.9) == bool(t[int(i)]) for i, s_ in zip(ids, s))
    # the vectors are the same as without the hook
    w3 = Workspace.init(tmp_path / "ws3", default_encoder="test-mean-color")
    ingest(w3.catalog, [tmp_path / "imgs2" / "manifest.csv"])
    embed(w3, batch_size=4)
    a_ids, a = w.vectors().load()
    b_ids, b = w3.vectors().load()
    assert np.array_equal(np.sort(a_ids), np.sort(b_ids))
    assert np.allclose(a[np.argsort(a_ids)], b[np.argsort(b_ids)], atol=1e-3)
    w.close()
    w3.close()


def test_detector_hook_failure_never_stops_embedding(tmp_path, plugin):
    model, _ = plugin
    w = Workspace.init(tmp_path / "ws4", default_encoder="test-mean-color")
    ingest(w.catalog, [colour_corpus(tmp_path / "imgs4", n_red=2, n_other=3)])
    hook = DetectorHook(w, OnnxDetector(model, f"{tmp_path / 'adapter.py'}:BadScore", name="bad"))
    rep = embed(w, hooks=[hook])
    assert rep.embedded == 5 and hook.report.failed == 5 and hook.report.failure_samples
    w.close()


def test_score_rows_and_cli(ws, plugin):
    model, spec = plugin
    det = OnnxDetector(model, spec, name="t")
    rows = det.score_rows([7], [[Detection("red", 0.4, (0, 0, 0.5, 0.5)), Detection("red", 0.8, None)]])
    assert rows == [("red", 7, 0.8, [[0, 0, 0.5, 0.5, 0.4]]), ("blue", 7, 0.0, None)]
    r = runner.invoke(cli_app(), ["scores", "detect", "--onnx", str(model), "--adapter", spec, "--model", "cli-tiny",
                                  "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["items"] == len(truth(ws))
