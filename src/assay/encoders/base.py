"""The Encoder protocol and its registry.

An encoder turns items into L2-normalised float32 vectors. Image encoders split their work in two so that
the embedding pipeline can overlap decoding with inference:

* :meth:`Encoder.preprocess` turns one decoded RGB :class:`PIL.Image.Image` into a float32 array of the
  model's input shape (pure CPU work, run in worker threads, no model needed);
* :meth:`Encoder.embed_batch` runs the model on a stacked batch ``[n, *input_shape]`` and returns an
  :class:`EncoderOutput` with the embeddings ``[n, dim]`` and any named extras (for example the 1000
  ImageNet class scores of ``efficientnet-lite0`` under ``"imagenet_logits"``).

Constructors only store parameters; :meth:`Encoder.load` loads weights. Encoders are looked up by name
through :func:`get_encoder`; a name may carry an argument after a colon (``clip:/path/to/model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = [
    "Encoder",
    "EncoderOutput",
    "BaseEncoder",
    "register_encoder",
    "get_encoder",
    "encoder_names",
    "l2_normalize",
    "draft_size",
    "canonical_encoder_name",
]


def draft_size(encoder: object) -> tuple[int, int] | None:
    """The smallest decode size an image encoder needs, for JPEG draft decoding (``None``: full size).

    Encoders may declare ``draft_size`` (preferred: e.g. 256 for a 224 centre crop of 256) or ``input_size``.
    """
    ds = getattr(encoder, "draft_size", None)
    if ds:
        return (int(ds[0]), int(ds[1]))
    size = getattr(encoder, "input_size", None)
    return (int(size), int(size)) if size else None


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Return ``x`` (``[n, d]``) as float32 with unit-norm rows; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [n, 1]
    return x / np.maximum(norms, eps)


@dataclass
class EncoderOutput:
    """What one batch of inference gives.

    embeddings: float32 ``[n, dim]``, L2-normalised.
    extras: named per-item arrays ``[n, ...]`` kept beside the embeddings (e.g. ``imagenet_logits``).
    """

    embeddings: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class Encoder(Protocol):
    """What the pipeline, search and the CLI need of an encoder."""

    name: str  # registry name, e.g. "efficientnet-lite0" or "clip:/models/clip-b32"
    version: str  # changes whenever weights or preprocessing change; part of every cache key
    dim: int  # embedding width
    modalities: frozenset[str]  # subset of {"image", "text"}

    def load(self) -> None: ...

    def preprocess(self, image: "Image.Image") -> np.ndarray: ...

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput: ...

    def embed_images(self, images: "list[Image.Image]") -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


class BaseEncoder:
    """Helpers shared by concrete encoders. Subclasses set the class attributes and implement the hooks."""

    name: str = ""
    version: str = ""
    dim: int = 0
    modalities: frozenset[str] = frozenset()
    extras_spec: ClassVar[dict[str, int]] = {}  # extra name -> width, e.g. {"imagenet_logits": 1000}

    def load(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def preprocess(self, image: "Image.Image") -> np.ndarray:
        raise InputError(f"encoder {self.name!r} does not embed images (modalities: {sorted(self.modalities)})")

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        raise InputError(f"encoder {self.name!r} does not embed images (modalities: {sorted(self.modalities)})")

    def embed_images(self, images: "list[Image.Image]") -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        prep = getattr(self, "preprocess_pixels", None) or self.preprocess  # the cheaper input, where there is one
        batch = np.stack([prep(im) for im in images])
        return self.embed_batch(batch).embeddings

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise InputError(
            f"encoder {self.name!r} has no text tower (modalities: {sorted(self.modalities)}); "
            "use a CLIP encoder, or the zero-shot bridge of an ImageNet classifier"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, dim={self.dim})"


_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(prefix: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Register a factory under ``prefix``. ``get_encoder("prefix:arg")`` calls ``factory(arg)``;
    ``get_encoder("prefix")`` calls ``factory()``."""

    def deco(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[prefix] = factory
        return factory

    return deco


def _ensure_builtin_registered() -> None:
    # Importing the modules registers their factories; they import heavy libraries lazily.
    from . import builtin  # noqa: F401


def encoder_names() -> list[str]:
    _ensure_builtin_registered()
    return sorted(_REGISTRY)


def get_encoder(name: str, **kwargs) -> Encoder:
    """Build (but do not load) the encoder registered under ``name``.

    ``name`` is ``"prefix"`` or ``"prefix:argument"`` (e.g. ``"clip:/models/clip"``).
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"encoder name must be a non-empty string, got {name!r}")
    _ensure_builtin_registered()
    prefix, sep, arg = name.partition(":")
    if prefix == "precomputed" and prefix not in _REGISTRY:
        raise InputError(f"{name!r} names embeddings that are imported, not computed: "
                         "`assay embed --encoder precomputed --from PATH`, or assay.import_embeddings(ws, PATH)")
    if prefix not in _REGISTRY:
        raise UnknownNameError("encoder", name, [p + (":<arg>" if p in _TAKES_ARG - _OPTIONAL_ARG else "[:<options>]" if p in _OPTIONAL_ARG else "")
                                                for p in _REGISTRY]
                               + ["precomputed (with --from PATH)"])
    factory = _REGISTRY[prefix]
    if sep:
        if prefix not in _TAKES_ARG:
            raise InputError(f"encoder {prefix!r} takes no argument after ':', got {name!r}")
        if not arg:
            raise InputError(f"encoder {name!r}: expected an argument after {prefix!r}:, got nothing")
        return factory(arg, **kwargs)
    return factory(**kwargs)


def canonical_encoder_name(name: str) -> str:
    """The name an encoder stores its embeddings under: ``efficientnet-lite2:crop=1.0, size=224`` and
    ``efficientnet-lite2:size=224,crop=1`` are one encoder, ``efficientnet-lite0:size=224`` is
    ``efficientnet-lite0``. Other names come back as they are (nothing is built for them). Bad options are
    an :class:`InputError`."""
    if not isinstance(name, str):
        return name
    prefix, sep, _ = name.partition(":")
    if not sep or prefix.strip() not in _OPTIONAL_ARG:
        return name
    return get_encoder(name).name


_TAKES_ARG = {"clip", "efficientnet-lite0", "efficientnet-lite2"}
_OPTIONAL_ARG = {"efficientnet-lite0", "efficientnet-lite2"}  # key=value options, e.g. efficientnet-lite2:size=224
