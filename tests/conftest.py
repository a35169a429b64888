from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    p = Path(os.environ.get("ASSAY_SHARED_DATA", REPO.parent / "shared" / "data"))
    return p if p.is_dir() else None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    p = shared_data()
    if p is None:
        pytest.skip("real data not found: set ASSAY_SHARED_DATA or put it at ../shared/data")
    return p


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # One ONNX/model cache per test session, never the user's ~/.cache.
    cache = tmp_path_factory.getbasetemp() / "assay-cache"
    monkeypatch.setenv("ASSAY_CACHE_DIR", str(cache))
    monkeypatch.delenv("ASSAY_CATALOG_URL", raising=False)


def catalog_urls(tmp_path: Path) -> list[str]:
    urls = [f"sqlite:///{tmp_path / 'catalog.db'}"]
    pg = os.environ.get("ASSAY_TEST_POSTGRES_URL")
    if pg:
        urls.append(pg)
    return urls


def write_images(folder: Path, n: int, *, size=(40, 30), seed: int = 0, fmt: str = "PNG") -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        p = folder / f"img_{i:03d}.{fmt.lower()}"
        Image.fromarray(arr).save(p, fmt)
        paths.append(p)
    return paths


def colour_corpus(folder: Path, n_red: int = 12, n_other: int = 48, seed: int = 0, *, size=(24, 32)) -> Path:
    """Red images (the concept) among images of other colours, with a manifest ``uri,label``; returns it.

    The test encoder ("test-mean-color") sees mean colours, so the red images form a tight cluster.
    ``size`` is (height, width).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = ["uri,label"]
    for i in range(n_red + n_other):
        red = i < n_red
        base = np.array([220, 20, 20]) if red else rng.integers(0, 256, 3) * np.array([0.3, 1, 1])
        arr = np.clip(base + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)
        name = f"{'red' if red else 'other'}_{i:03d}.png"
        Image.fromarray(arr).save(folder / name)
        rows.append(f"{name},{'red' if red else 'other'}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"
