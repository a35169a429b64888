"""A small deterministic encoder for pipeline tests (registered as "test-mean-color")."""

from __future__ import annotations

import numpy as np

from assay.encoders.base import BaseEncoder, EncoderOutput, l2_normalize, register_encoder


class MeanColorEncoder(BaseEncoder):
    name = "test-mean-color"
    version = "1"
    dim = 12
    modalities = frozenset({"image", "text"})
    extras_spec = {"hist": 3}
    input_size = 16

    def __init__(self, fail_on_batch_with: float | None = None) -> None:
        self.loaded = False
        self.calls = 0

    def load(self) -> None:
        self.loaded = True

    def preprocess(self, image) -> np.ndarray:
        arr = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0  # [16, 16, 3]
        return arr.transpose(2, 0, 1)  # [3, 16, 16]

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        self.calls += 1
        n = batch.shape[0]
        q = batch.reshape(n, 3, 4, 4, 4, 4).mean(axis=(3, 5))  # [n, 3, 4, 4]
        feats = np.concatenate([q.mean(axis=3).reshape(n, -1)], axis=1) + 1e-3  # [n, 12]
        return EncoderOutput(l2_normalize(feats), {"hist": batch.mean(axis=(2, 3))})

    def embed_texts(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for j, ch in enumerate(t.encode()):
                out[i, (ch + j) % self.dim] += 1.0
        return l2_normalize(out + 1e-3)


register_encoder("test-mean-color")(MeanColorEncoder)
