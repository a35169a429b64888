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
