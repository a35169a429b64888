"""Registers the built-in encoders. Imported by the registry on first use; imports nothing heavy."""

from __future__ import annotations

from ..errors import InputError
from .base import register_encoder
from .clip import ClipEncoder
from .efficientnet import EfficientNetLite0Encoder, EfficientNetLite2Encoder
from .text import MiniLMEncoder

__all__: list[str] = []


@register_encoder("efficientnet-lite0")
def _efficientnet_lite0(**kwargs) -> EfficientNetLite0Encoder:
    """``efficientnet-lite0``; kwargs: backend, cache_dir, batch_size, num_threads, weights, replicas."""
    return EfficientNetLite0Encoder(**kwargs)


@register_encoder("efficientnet-lite2")
def _efficientnet_lite2(**kwargs) -> EfficientNetLite2Encoder:
    """``efficientnet-lite2`` (260 px, extra ``lite2``); kwargs as for efficientnet-lite0."""
    return EfficientNetLite2Encoder(**kwargs)


@register_encoder("clip")
def _clip(source: str | None = None, **kwargs) -> ClipEncoder:
    """``clip:<hub id or local dir>``; kwargs: batch_size, device, local_files_only, revision."""
    if source is None:
        raise InputError("the clip encoder needs a model: clip:<hub id or local directory>, got just 'clip'")
    return ClipEncoder(source, **kwargs)


@register_encoder("minilm")
def _minilm(**kwargs) -> MiniLMEncoder:
    """``minilm``; kwargs: batch_size, device, model_dir."""
    return MiniLMEncoder(**kwargs)
