"""Registers the built-in encoders. Imported by the registry on first use; imports nothing heavy."""

from __future__ import annotations

from ..errors import InputError
from .base import register_encoder
from .clip import ClipEncoder
from .efficientnet import EfficientNetLite0Encoder, EfficientNetLite2Encoder, parse_options
from .text import MiniLMEncoder

__all__: list[str] = []


@register_encoder("efficientnet-lite0")
def _efficientnet_lite0(options: str | None = None, **kwargs) -> EfficientNetLite0Encoder:
    """``efficientnet-lite0[:size=N,crop=F,levels=K]``; kwargs: backend, cache_dir, batch_size, num_threads,
    weights, replicas, size, crop, levels."""
    return EfficientNetLite0Encoder(**_merge("efficientnet-lite0", options, kwargs))


@register_encoder("efficientnet-lite2")
def _efficientnet_lite2(options: str | None = None, **kwargs) -> EfficientNetLite2Encoder:
    """``efficientnet-lite2[:size=N,crop=F,levels=K]`` (260 px, extra ``lite2``); kwargs as for efficientnet-lite0."""
    return EfficientNetLite2Encoder(**_merge("efficientnet-lite2", options, kwargs))


def _merge(arch: str, options: str | None, kwargs: dict) -> dict:
    if options is None:
        return kwargs
    opts = parse_options(arch, options)
    both = sorted(set(opts) & set(kwargs))
    if both:
        raise InputError(f"{arch} option(s) {', '.join(both)} given both in the name and as arguments")
    return {**kwargs, **opts}


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
