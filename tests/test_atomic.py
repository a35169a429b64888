"""Output files are written whole or not at all (assay._atomic), and the writers that use it."""

from __future__ import annotations

import os
import stat

import pytest

from assay._atomic import atomic_output


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    out = tmp_path / "mined.csv"
    out.write_text("id,label\n1,1\n")
    with pytest.raises(OSError):
        with atomic_output(out) as tmp:
            tmp.write_text("id,label\n2,")  # half a row, then the disk fills up
            raise OSError(28, "No space left on device")
    assert out.read_text() == "id,label\n1,1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mined.csv"]


def test_a_finished_write_replaces_the_file_with_ordinary_permissions(tmp_path):
    out = tmp_path / "mined.csv"
    with atomic_output(out) as tmp:
        tmp.write_text("new\n")
    assert out.read_text() == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mined.csv"]


def test_exports_and_harvest_files_are_not_left_half_written(tmp_path, monkeypatch):
    import fake_encoder  # noqa: F401
    from conftest import colour_corpus

    from assay import Workspace, embed, export, ingest
    from assay.loop import Miner
    from assay.search import build_index

    ws = Workspace.init(tmp_path / "ws", default_encoder="test-mean-color")
    ingest(ws.catalog, [colour_corpus(tmp_path / "imgs", 6, 20, 0, size=(16, 16))])
    embed(ws)
    build_index(ws, kind="flat")
    ws.catalog.add_concept("red", text="red")
    rows = ws.catalog.get_many(ws.catalog.ids())
    reds = [r.id for r in rows if "red" in r.uri][:2]
    others = [r.id for r in rows if "red" not in r.uri][:2]
    Miner(ws, "red").record_labels(reds + others, [1, 1, 0, 0])
    out = tmp_path / "red.csv"
    export(ws, "red", fmt="csv", out=out)
    good = out.read_text()
    import csv as csv_mod

    real = csv_mod.DictWriter.writerow
    calls = {"n": 0}

    def dies(self, row):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(self, row)

    monkeypatch.setattr(csv_mod.DictWriter, "writerow", dies)
    with pytest.raises(OSError):
        export(ws, "red", fmt="csv", out=out)
    assert out.read_text() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    ws.close()


def test_an_existing_file_keeps_its_mode_and_a_symlink_its_link(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    os.chmod(real, 0o640)
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    with atomic_output(link) as tmp:
        tmp.write_text("new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_the_umask_is_read_without_being_changed(tmp_path, monkeypatch):
    """Reading the umask must not set it, even for a moment: other threads create files meanwhile."""
    from assay import _atomic

    calls = []
    real = os.umask
    old = real(0o027)
    try:
        if os.path.exists("/proc/self/status"):
            monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real(m))
        assert _atomic._umask() == 0o027
        assert calls == []  # read from /proc, never set
        with _atomic.atomic_output(tmp_path / "new.txt") as tmp:
            tmp.write_text("x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    finally:
        real(old)
