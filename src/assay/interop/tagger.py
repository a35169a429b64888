"""The built-in weak tagger: ImageNet class probabilities of efficientnet-lite0 as model scores.

The ``efficientnet-lite0`` encoder keeps each item's 1000 raw ImageNet logits as the per-item extra
``imagenet_logits`` of its vector store, so a concept that maps to ImageNet classes (an ambulance:
``ambulance``, ``police van``; a dog: classes 151-268) gets a model score for free, with no extra pass over
the images::

    score(x) = sum_{c in classes} softmax(logits(x))_c

the probability the classifier gives to *any* of the concept's classes (the classes are mutually exclusive
under the softmax, so the sum is a probability in ``[0, 1]``). The scores are stored like any imported model
scores (:mod:`assay.interop.scores`, model name ``imagenet-tagger`` by default) and are usable wherever
those are: the medium-confidence band as candidates, the ``value`` strategy's model term, exports.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError, NoEmbeddingsError
from .scores import write_scores

__all__ = ["CLASS_SCORES_EXTRA", "DEFAULT_TAGGER_MODEL", "resolve_imagenet_classes", "class_probability", "TagReport", "tag_concept"]

CLASS_SCORES_EXTRA = "imagenet_logits"
DEFAULT_TAGGER_MODEL = "imagenet-tagger"


def _names() -> list[str]:
    from ..encoders.efficientnet import imagenet_class_names

    return imagenet_class_names()


def resolve_imagenet_classes(spec: str | Sequence[str | int], names: Sequence[str] | None = None) -> list[int]:
    """Class indices for a comma-separated list (or a sequence) of ImageNet class names or indices.

    Names match case-insensitively and ignore surrounding spaces; ``"151-268"`` is a range of indices.

    Raises
    ------
    InputError
        An unknown name (the message suggests the closest class names), an index outside ``[0, C)``, or
        an empty list.
    """
    names = list(names) if names is not None else _names()
    lower = {n.strip().lower(): i for i, n in enumerate(names)}
    parts: list[Any] = [p for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[int] = []
    for part in parts:
        if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
            idx = [int(part)]
        else:
            s = str(part).strip()
            if not s:
                continue
            if s.isdigit():
                idx = [int(s)]
            elif "-" in s and all(x.strip().isdigit() for x in s.split("-", 1)):
                a, b = (int(x) for x in s.split("-", 1))
                if b < a:
                    raise InputError(f"class range {s!r} must go up (low-high)")
                idx = list(range(a, b + 1))
            elif s.lower() in lower:
                idx = [lower[s.lower()]]
            else:
                close = difflib.get_close_matches(s.lower(), list(lower), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(repr(names[lower[c]]) for c in close)}?" if close else ""
                raise InputError(f"{s!r} is not an ImageNet class name{hint}")
        for i in idx:
            if not 0 <= i < len(names):
                raise InputError(f"ImageNet class index {i} is outside [0, {len(names)})")
            if i not in out:
                out.append(i)
    if not out:
        raise InputError(f"no ImageNet classes given (got {spec!r}); e.g. --imagenet-classes \"ambulance,police van\"")
    return out


def class_probability(logits: Any, classes: Sequence[int]) -> np.ndarray:
    """``sum_{c in classes} softmax(logits)_c`` per row: ``[n, C]`` logits -> ``[n]`` float64 in [0, 1]."""
    z = np.asarray(logits, dtype=np.float64)  # [n, C]
    if z.ndim != 2:
        raise InputError(f"logits must be [n_items, n_classes], got shape {z.shape}")
    cls = np.asarray(list(classes), dtype=np.int64)
    if cls.size == 0 or cls.min() < 0 or cls.max() >= z.shape[1]:
        raise InputError(f"classes must be indices in [0, {z.shape[1]}), got {cls.tolist()}")
    if z.size and not np.isfinite(z).all():
        raise InputError("logits contain NaN or inf")
    z = z - z.max(axis=1, keepdims=True)  # [n, C], stable softmax
    e = np.exp(z)  # [n, C]
    p = e[:, cls].sum(axis=1) / e.sum(axis=1)  # [n]
    return np.clip(p, 0.0, 1.0)


@dataclass
class TagReport:
    concept: str
    model: str
    classes: list[int]
    class_names: list[str]
    items: int
    mean_score: float
    above_half: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tag_concept(
    ws: Any, concept: str, classes: str | Sequence[str | int], *, model: str = DEFAULT_TAGGER_MODEL,
    encoder: str | None = None, extra: str = CLASS_SCORES_EXTRA,
) -> TagReport:
    """Score every embedded item for ``concept`` from the stored ImageNet logits; store as model scores.

    Parameters
    ----------
    ws : Workspace
    concept : str
        Concept name the scores are stored under.
    classes : str or sequence
        ImageNet class names or indices (see :func:`resolve_imagenet_classes`).
    model : str
        Model name for the stored scores (default ``imagenet-tagger``).
    encoder : str, optional
        The encoder whose store holds the logits (default: the workspace's default encoder).
    extra : str
        The store extra holding the class logits.

    Raises
    ------
    NoEmbeddingsError
        The encoder's store is missing or keeps no class logits (not an ImageNet classifier).
    """
    ws.catalog.check_concept_name(concept)  # scores under a name no concept could have would never be used
    store = ws.vectors(encoder)
    if not store.exists():
        raise NoEmbeddingsError(f"no embeddings for encoder {encoder or ws.default_encoder!r}; run `assay embed` first")
    meta = store.meta()
    width = meta.get("extras", {}).get(extra)
    if width is None:
        raise NoEmbeddingsError(
            f"the {meta['encoder']!r} store keeps no {extra!r} class scores; the weak tagger needs an ImageNet "
            "classifier encoder such as efficientnet-lite0"
        )
    names = _names() if int(width) == 1000 else [str(i) for i in range(int(width))]
    idx = resolve_imagenet_classes(classes, names)
    all_ids: list[np.ndarray] = []
    all_scores: list[np.ndarray] = []
    for ids, logits in store.iter_shards(extra=extra):
        if len(ids):
            all_ids.append(np.asarray(ids, dtype=np.int64))
            all_scores.append(class_probability(logits, idx))  # [n_shard]
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    write_scores(ws.catalog, model, [(concept, int(i), float(s), None) for i, s in zip(ids.tolist(), scores.tolist())])
    return TagReport(
        concept=concept, model=model, classes=idx, class_names=[names[i] for i in idx], items=int(ids.size),
        mean_score=float(scores.mean()) if scores.size else 0.0, above_half=int((scores >= 0.5).sum()),
    )
