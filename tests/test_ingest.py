from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assay.catalog import Catalog
from assay.errors import InputError, NotFoundError
from assay.ingest import ingest
from assay.media import decode_image, probe_image

from conftest import write_images


@pytest.fixture
def cat(tmp_path):
    c = Catalog(f"sqlite:///{tmp_path / 'c.db'}").open()
    yield c
    c.close()


def _png_with_size(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (a decompression bomb as far as the header goes)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length+type of IHDR
    data[ihdr : ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def _bad_corpus(root: Path) -> dict[str, str]:
    """Every kind of awkward file; returns name -> expected status."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "ok.jpg", quality=90)
    (root / "empty.jpg").write_bytes(b"")
    (root / "not_image.png").write_text("hello, I am text")
    full = (root / "ok.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "bomb.png").write_bytes(_png_with_size(40000, 40000))
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (20, 10))).astype(np.uint16)).save(root / "sixteen.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 40x30, shown 30x40
    Image.fromarray(rgb).save(root / "rotated.jpg", exif=exif.tobytes())
    uni = root / "dossier é 漢字"
    uni.mkdir()
    Image.fromarray(rgb).save(uni / "photo with spaces ü.png")
    (root / "notes.txt").write_text("skipped: no image extension")
    (root / ".hidden.jpg").write_bytes(full)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a symlink loop
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    return {
        "ok.jpg": "ok", "empty.jpg": "error", "not_image.png": "error", "truncated.jpg": "ok",
        "bomb.png": "error", "cmyk.jpg": "ok", "sixteen.png": "ok", "palette.png": "ok", "rotated.jpg": "ok",
        "photo with spaces ü.png": "ok", "dangling.jpg": "error",
    }


def test_folder_with_every_kind_of_bad_file(cat, tmp_path):
    expected = _bad_corpus(tmp_path / "corpus")
    rep = ingest(cat, [tmp_path / "corpus"])
    rows = {Path(r.uri).name: r for r in cat.get_many(cat.ids(status=None))}
    assert {k: v.status for k, v in rows.items()} == expected
    assert rep.seen == len(expected) and rep.new == len(expected) and rep.errors == 4
    assert rep.skipped_files == 2  # notes.txt and .hidden.jpg
    assert any("symlink loop" in s for s in rep.skipped_rows)
    assert rows["empty.jpg"].error == "empty file (0 bytes)"
    assert "not an image" in rows["not_image.png"].error
    assert "decompression bomb" in rows["bomb.png"].error or "Mpx" in rows["bomb.png"].error
    assert "missing file" in rows["dangling.jpg"].error
    assert (rows["rotated.jpg"].width, rows["rotated.jpg"].height) == (30, 40)
    assert (rows["ok.jpg"].width, rows["ok.jpg"].height, rows["ok.jpg"].format) == (40, 30, "JPEG")
    assert rows["ok.jpg"].sha256 == __import__("hashlib").sha256((tmp_path / "corpus" / "ok.jpg").read_bytes()).hexdigest()
    # Again: nothing new.
    rep2 = ingest(cat, [tmp_path / "corpus"])
    assert rep2.new == 0 and rep2.already_present == len(expected)


def test_decoding_odd_modes_gives_upright_rgb(tmp_path):
    _bad_corpus(tmp_path / "c")
    for name, size in [("cmyk.jpg", (40, 30)), ("sixteen.png", (10, 20)), ("palette.png", (40, 30)), ("rotated.jpg", (30, 40))]:
        im = decode_image((tmp_path / "c" / name).read_bytes())
        assert im.mode == "RGB" and im.size == size, name
    from assay.errors import DecodeError

    with pytest.raises(DecodeError, match="truncated"):
        decode_image((tmp_path / "c" / "truncated.jpg").read_bytes())
    with pytest.raises(DecodeError, match="above the limit"):
        probe_image((tmp_path / "c" / "ok.jpg").read_bytes(), max_pixels=100)


def test_large_jpeg_decodes_in_draft_mode(tmp_path):
    Image.new("RGB", (6000, 4000), (200, 10, 10)).save(tmp_path / "big.jpg", quality=80)
    im = decode_image((tmp_path / "big.jpg").read_bytes(), draft_size=(224, 224))
    assert im.mode == "RGB" and 224 <= min(im.size) < 4000


def test_same_bytes_twice_are_exact_duplicates(cat, tmp_path):
    paths = write_images(tmp_path / "d", 3)
    (tmp_path / "d" / "copy.png").write_bytes(paths[0].read_bytes())
    ingest(cat, [tmp_path / "d"])
    dups = cat.duplicate_map()
    assert dups == {cat.id_for_uri(str(tmp_path / "d" / "img_000.png")): cat.id_for_uri(str(tmp_path / "d" / "copy.png"))} or \
        dups == {cat.id_for_uri(str(tmp_path / "d" / "copy.png")): cat.id_for_uri(str(tmp_path / "d" / "img_000.png"))}
    assert cat.count()["exact_duplicates"] == 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifests_keep_metadata_and_resolve_relative_uris(cat, tmp_path, fmt):
    write_images(tmp_path / "m" / "imgs", 3)
    rows = [{"uri": f"imgs/img_{i:03d}.png", "label": ["cat", "dog", "cat"][i], "split": "train"} for i in range(3)]
    rows.append({"uri": "imgs/missing.png", "label": "cat", "split": "test"})
    path = tmp_path / "m" / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text("uri,label,split\n" + "".join(f"{r['uri']},{r['label']},{r['split']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    rep = ingest(cat, [path])
    assert rep.new == 4 and rep.errors == 1
    items = cat.get_many(cat.ids(status=None))
    assert [i.meta["label"] for i in items] == ["cat", "dog", "cat", "cat"]
    assert items[0].uri == str(tmp_path / "m" / "imgs" / "img_000.png")
    assert items[3].status == "error" and "missing file" in items[3].error


def test_text_manifest_ingests_text_items(cat, tmp_path):
    p = tmp_path / "texts.csv"
    p.write_text('text,category\n"card not working",card_issue\n"where is my money",transfer\n"card not working",card_issue\n')
    rep = ingest(cat, [p])
    assert rep.new == 3
    items = cat.get_many(cat.ids(modality="text"))
    assert [i.text for i in items] == ["card not working", "where is my money", "card not working"]
    assert items[2].duplicate_of == items[0].id
    assert ingest(cat, [p]).new == 0


def test_bad_sources_fail_before_writing(cat, tmp_path):
    write_images(tmp_path / "ok", 2)
    with pytest.raises(NotFoundError, match="does not exist"):
        ingest(cat, [tmp_path / "ok", tmp_path / "nope"])
    assert cat.count()["total"] == 0
    (tmp_path / "bad.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(InputError, match="expected a 'uri' column"):
        ingest(cat, [tmp_path / "bad.csv"])
    with pytest.raises(InputError, match="at least one source"):
        ingest(cat, [])
    (tmp_path / "empty").mkdir()
    rep = ingest(cat, [tmp_path / "empty"])
    assert rep.seen == 0 and rep.new == 0


def test_fsspec_file_urls(cat, tmp_path):
    write_images(tmp_path / "f", 2)
    rep = ingest(cat, [f"file://{tmp_path / 'f'}"])
    assert rep.new == 2 and cat.count()["ok"] == 2


def test_fsspec_remote_prefix_and_manifest(cat, tmp_path):
    """A non-local fsspec filesystem (memory://) goes through the same listing and reading path as s3://."""
    import fsspec

    fs = fsspec.filesystem("memory")
    paths = write_images(tmp_path / "src", 3)
    for p in paths:
        fs.pipe(f"/bucket/photos/{p.name}", p.read_bytes())
    fs.pipe("/bucket/photos/readme.txt", b"not an image")
    rep = ingest(cat, ["memory://bucket/photos"])
    assert rep.new == 3 and rep.errors == 0 and rep.skipped_files == 1
    uris = sorted(r.uri for r in cat.get_many(cat.ids()))
    assert uris == [f"memory:///bucket/photos/{p.name}" for p in paths]
    # A manifest on the remote filesystem: absolute URIs are kept, so a known one adds nothing.
    fs.pipe("/bucket/m.csv", b"uri,label\nmemory:///bucket/photos/img_001.png,b\n")
    rep = ingest(cat, ["memory:///bucket/m.csv"])
    assert rep.seen == 1 and rep.new == 0 and rep.already_present == 1
    with pytest.raises(NotFoundError):
        ingest(cat, ["memory://bucket/nothing-here"])
