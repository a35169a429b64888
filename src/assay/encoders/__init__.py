"""Encoders: the protocol, the registry by name, and the built-ins.

``get_encoder("efficientnet-lite0")`` (the offline image default), ``get_encoder("clip:/path/or/hub-id")``,
``get_encoder("minilm")`` (text). Heavy libraries (torch, onnxruntime, transformers) load lazily in
``load()``; a missing one raises :class:`~assay.errors.MissingDependencyError` naming the extra.
"""

from __future__ import annotations

from .base import (
    BaseEncoder,
    Encoder,
    EncoderOutput,
    encoder_names,
    get_encoder,
    l2_normalize,
    register_encoder,
)

__all__ = [
    "BaseEncoder",
    "Encoder",
    "EncoderOutput",
    "encoder_names",
    "get_encoder",
    "l2_normalize",
    "register_encoder",
]
