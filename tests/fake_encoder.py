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


class MeanColorDenseEncoder(BaseEncoder):
    """A convolution-free stand-in for a CNN with a feature map (registered as "test-dense-color").

    A cell is 8x8 input pixels; its features are its mean colour and a constant. The whole image's
    embedding is the mean of its cells (as a CNN's global pooling), so a window mean embeds that window."""

    name = "test-dense-color"
    version = "1"
    dim = 4
    modalities = frozenset({"image"})
    extras_spec = {"head": 2}  # a two-class "head": logits = features @ W
    dense_extra = "head"
    input_size = 16
    feature_stride = 8
    _W = np.array([[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]], dtype=np.float32)  # [4, 2] red vs not

    def __init__(self) -> None:
        self.loaded = False
        self.feature_calls = 0

    def load(self) -> None:
        self.loaded = True

    def preprocess(self, image) -> np.ndarray:
        arr = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        return arr.transpose(2, 0, 1)  # [3, 16, 16]

    def preprocess_dense(self, image, size) -> np.ndarray:
        arr = np.asarray(image.convert("RGB").resize(tuple(size)), dtype=np.float32) / 255.0
        return arr.transpose(2, 0, 1)  # [3, H, W]

    def feature_map(self, pixels: np.ndarray) -> np.ndarray:
        self.feature_calls += 1
        n, c, h, w = pixels.shape
        cells = pixels.reshape(n, c, h // 8, 8, w // 8, 8).mean(axis=(3, 5))  # [n, 3, h/8, w/8]
        return np.concatenate([cells, np.full((n, 1, h // 8, w // 8), 0.05, np.float32)], axis=1)

    def logits_from_features(self, feats: np.ndarray) -> np.ndarray:
        return np.asarray(feats, np.float32) @ self._W

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        f = self.feature_map(np.asarray(batch, np.float32)).mean(axis=(2, 3))  # [n, 4]
        return EncoderOutput(l2_normalize(f), {"head": self.logits_from_features(f)})


register_encoder("test-dense-color")(MeanColorDenseEncoder)
