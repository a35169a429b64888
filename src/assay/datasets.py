"""Real datasets written out as files plus a manifest, for the demo, tests and benchmarks.

Nothing here downloads: the digits ship with scikit-learn, and CIFAR-10 / the ImageNet sample are read
from a local copy (``--data PATH`` or ``ASSAY_SHARED_DATA``) when one is given.
"""

from __future__ import annotations

import csv
import os
import tarfile
from pathlib import Path

import numpy as np

from .errors import InputError, NotFoundError

__all__ = ["write_digits", "write_cifar10", "write_imagenet_sample", "shared_data_dir"]


def shared_data_dir(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding cifar10/, imagenet-sample/, banking77/: ``path``, else ``ASSAY_SHARED_DATA``."""
    cand = path if path is not None else os.environ.get("ASSAY_SHARED_DATA")
    if cand is None:
        return None
    p = Path(cand)
    return p if p.is_dir() else None


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_digits(out_dir: str | os.PathLike[str], *, scale: int = 4, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write scikit-learn's 1,797 bundled 8x8 digit scans as PNGs (upscaled ``scale`` x) plus ``manifest.csv``
    (``uri,label,split``). Returns the manifest path."""
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    d = load_digits()
    rng = np.random.default_rng(seed)
    is_test = rng.random(len(d.target)) < test_fraction
    rows = []
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        arr = (np.asarray(img) / 16.0 * 255).astype(np.uint8)  # [8, 8]
        p = out / "images" / f"digit_{i:04d}_{label}.png"
        if not p.exists():
            Image.fromarray(arr, "L").resize((8 * scale, 8 * scale), Image.NEAREST).save(p)
        rows.append({"uri": str(p.relative_to(out)), "label": DIGIT_CLASSES[int(label)], "split": "test" if is_test[i] else "train"})
    return _write_manifest(out / "manifest.csv", rows)


#: The class names of :func:`write_digits`.
DIGIT_CLASSES = tuple(f"digit-{d}" for d in range(10))
_CIFAR_KEYS = ("jpeg", "offsets", "label", "split", "name", "classes")


def cifar10_classes(npz_path: str | os.PathLike[str]) -> list[str]:
    """The class names of a ``cifar10_jpeg_bytes.npz``, checking that it is one (every array
    :func:`write_cifar10` reads is there), without reading the photos."""
    npz_path = Path(npz_path)
    if not npz_path.exists():
        raise NotFoundError(f"CIFAR-10 file not found: {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            missing = [k for k in _CIFAR_KEYS if k not in z.files]
            if missing:
                raise InputError(f"{npz_path} is not a CIFAR-10 npz as the shared data holds it: it lacks "
                                 f"{', '.join(missing)} (it has {', '.join(z.files) or 'no arrays'})")
            return [str(c) for c in z["classes"]]
    except (OSError, ValueError) as exc:  # not an npz at all, or object arrays
        raise InputError(f"{npz_path} is not a readable npz file: {exc}") from None


def write_cifar10(
    npz_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, n: int | None = None, seed: int = 0,
    splits: tuple[str, ...] = ("train", "test"),
) -> Path:
    """Write CIFAR-10 JPEGs from the shared ``cifar10_jpeg_bytes.npz`` as files plus ``manifest.csv``
    (``uri,label,split``); ``n`` samples that many at random (the train split is sorted by class)."""
    npz_path = Path(npz_path)
    cifar10_classes(npz_path)  # a clear error for a file that is not one
    z = np.load(npz_path, allow_pickle=False)
    jpeg, offsets, labels, split, names, classes = (z[k] for k in ("jpeg", "offsets", "label", "split", "name", "classes"))
    split_names = np.array(["train", "test"])[split]
    keep = np.nonzero(np.isin(split_names, list(splits)))[0]
    if n is not None:
        if n <= 0:
            raise InputError(f"n must be a positive integer, got {n}")
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=min(n, len(keep)), replace=False))
    out = Path(out_dir)
    rows = []
    for i in keep:
        rel = Path("images") / str(names[i])
        p = out / rel
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(jpeg[offsets[i] : offsets[i + 1]].tobytes())
        rows.append({"uri": str(rel), "label": str(classes[labels[i]]), "split": str(split_names[i])})
    return _write_manifest(out / "manifest.csv", rows)


def write_imagenet_sample(tar_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Extract the 1,000-photo ImageNet sample and write ``manifest.csv`` (``uri,label,class_index``)."""
    tar_path = Path(tar_path)
    if not tar_path.exists():
        raise NotFoundError(f"ImageNet sample not found: {tar_path}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(".jpeg")), key=lambda m: Path(m.name).name)
        rows = []
        for idx, m in enumerate(members):
            name = Path(m.name).name
            p = out / "images" / name
            if not p.exists():
                f = tf.extractfile(m)
                assert f is not None
                p.write_bytes(f.read())
            wnid, _, cls = Path(name).stem.partition("_")
            rows.append({"uri": str(p.relative_to(out)), "label": cls.replace("_", " "), "class_index": idx, "wnid": wnid})
    return _write_manifest(out / "manifest.csv", rows)
