"""Interop: model scores as a weak detector, pseudo-labels, label imports and dataset exports.

Modules
    :mod:`~assay.interop.scores`   per-item model scores (and boxes) in their own catalog table; import from
                                   CSV / Parquet / JSONL, all or nothing; the medium-confidence band.
    :mod:`~assay.interop.tagger`   the built-in weak tagger: ImageNet class probabilities of efficientnet-lite0.
    :mod:`~assay.interop.detector` the ONNX detector plugin (model path + a small Python adapter), standalone
                                   over the corpus or as a hook inside the embedding pass.
    :mod:`~assay.interop.pseudo`   pseudo-labels at a threshold chosen for a target precision (out-of-fold).
    :mod:`~assay.interop.exports`  CSV, Parquet, Label Studio, COCO, ImageFolder, FiftyOne.
    :mod:`~assay.interop.imports`  labels from CSV, Label Studio, COCO, ImageFolder and FiftyOne exports.

Nothing heavy is imported here; each module imports its optional dependencies lazily.
"""

from __future__ import annotations

__all__ = ["scores", "tagger", "detector", "pseudo", "exports", "imports"]
