"""``clip:<hub id or local dir>``: a CLIP model through transformers' ``CLIPModel``, image and text towers.

The argument is a directory written by ``CLIPModel.save_pretrained`` (plus the tokenizer's and, ideally,
the image processor's ``save_pretrained``), or a Hugging Face hub id such as
``openai/clip-vit-base-patch32``. A hub id is resolved once through ``huggingface_hub.snapshot_download``
(the local hub cache first when offline); from then on everything loads from that directory with
``local_files_only=True``. Anything that fails raises :class:`~assay.errors.EncoderError` with the reason.

Image preprocessing follows the directory's ``preprocessor_config.json`` (resize the shortest edge,
centre crop, rescale, normalise with the CLIP mean/std), implemented here with Pillow and numpy so that it
runs in worker threads without the model, and behaves the same across transformers versions.

``version`` hashes the directory's configs, tokenizer files and weights (see
:func:`~assay.encoders.cache.dir_fingerprint`) together with this module's preprocessing code version.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import EncoderError, EncoderSourceError, InputError, require
from .base import BaseEncoder, EncoderOutput, l2_normalize
from .cache import dir_fingerprint, spec_hash
from .efficientnet import ensure_rgb
from .text import check_texts

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["ClipEncoder"]

_PREPROCESS_CODE_VERSION = 1
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
_HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
# transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: the defaults of CLIPImageProcessor
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_BICUBIC = 3


class ClipEncoder(BaseEncoder):
    """A CLIP model (image and text towers) loaded from a local directory or a hub id.

    Parameters
    ----------
    source : str
        A directory saved by ``CLIPModel.save_pretrained`` (and the tokenizer's), or a hub id.
    batch_size : int, default 32
        Images or texts per forward pass; bigger inputs run in chunks of this size.
    device : str, default "cpu"
        A torch device.
    local_files_only : bool, default False
        For a hub id: only use the local hub cache, never the network.
    revision : str, optional
        For a hub id: the branch, tag or commit.

    After :meth:`load`, ``modalities`` is ``{"image", "text"}``, or ``{"image"}`` when the directory
    holds no tokenizer.
    """

    modalities = frozenset({"image", "text"})
    extras_spec: ClassVar[dict[str, int]] = {}

    def __init__(
        self,
        source: str,
        *,
        batch_size: int = 32,
        device: str = "cpu",
        local_files_only: bool = False,
        revision: str | None = None,
    ) -> None:
        if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
            raise InputError(f"clip needs a hub id or a local directory, got {source!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.source = str(source)
        self.name = f"clip:{self.source}"
        self.batch_size = batch_size
        self.device = device
        self.local_files_only = bool(local_files_only)
        self.revision = revision
        self._dir: Path | None = None
        self._version: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._pre: dict[str, Any] | None = None
        self._dim: int | None = None
        self._max_text_len: int | None = None

    # -- where the files are -------------------------------------------------------------------------

    def model_dir(self) -> Path:
        """The local directory holding the model (downloading a hub id into the hub cache if needed)."""
        if self._dir is None:
            self._dir = self._resolve_dir()
        return self._dir

    def _resolve_dir(self) -> Path:
        p = Path(self.source).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise EncoderSourceError(
                    f"{self.name}: {str(p)!r} has no config.json; expected a directory written by "
                    "CLIPModel.save_pretrained"
                )
            return p
        if p.exists():
            raise EncoderSourceError(
                f"{self.name}: {str(p)!r} is a file; "
                "expected a directory written by CLIPModel.save_pretrained"
            )
        looks_like_path = (
            self.source.startswith((".", "~", os.sep)) or "\\" in self.source or self.source.count("/") > 1
        )
        if looks_like_path or not _HUB_ID.match(self.source):
            raise EncoderSourceError(
                f"{self.name}: the directory {self.source!r} does not exist (and it is not a hub id)"
            )
        hub = require("huggingface_hub", "clip", "loading a CLIP model by hub id")
        try:
            got = Path(
                hub.snapshot_download(
                    self.source,
                    revision=self.revision,
                    allow_patterns=_HUB_PATTERNS,
                    local_files_only=self.local_files_only,
                )
            )
            if not any(got.glob("*.safetensors")):
                got = Path(
                    hub.snapshot_download(
                        self.source,
                        revision=self.revision,
                        allow_patterns=["pytorch_model.bin"],
                        local_files_only=self.local_files_only,
                    )
                )
        except Exception as exc:
            raise EncoderError(
                f"cannot load CLIP model {self.source!r} from the Hugging Face hub or its local cache "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}). "
                "Without network access, pass a local directory written by CLIPModel.save_pretrained: "
                "clip:/path/to/model"
            ) from exc
        if not (got / "config.json").is_file():
            raise EncoderError(f"{self.name}: the hub snapshot at {got} has no config.json")
        return got

    # -- identity ------------------------------------------------------------------------------------

    @property
    def version(self) -> str:  # type: ignore[override]
        """Hash of the model directory's configs, tokenizer and weights, and of the preprocessing code."""
        if self._version is None:
            files = dir_fingerprint(self.model_dir(), _FINGERPRINT_SUFFIXES)
            self._version = spec_hash({"files": files, "preprocess_code": _PREPROCESS_CODE_VERSION})[:16]
        return self._version

    @property
    def dim(self) -> int:  # type: ignore[override]
        """The joint embedding width (``projection_dim``)."""
        if self._dim is None:
            transformers = require("transformers", "clip", "CLIP encoders")
            try:
                cfg = transformers.CLIPConfig.from_pretrained(str(self.model_dir()), local_files_only=True)
            except Exception as exc:
                raise EncoderError(f"{self.name}: cannot read the CLIP config: {exc}") from exc
            self._dim = int(cfg.projection_dim)
        return self._dim

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # -- loading -------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model, the tokenizer (when present) and the preprocessing spec."""
        if self.loaded:
            return
        require("torch", "clip", "CLIP encoders")
        transformers = require("transformers", "clip", "CLIP encoders")
        d = self.model_dir()
        try:
            model = transformers.CLIPModel.from_pretrained(str(d), local_files_only=True)
        except Exception as exc:
            raise EncoderError(f"cannot load CLIP model from {d}: {type(exc).__name__}: {exc}") from exc
        model.eval()
        model.to(self.device)
        tokenizer = None  # image-only unless the directory holds tokenizer files
        # (transformers 5 would happily build an empty CLIPTokenizer from no files at all)
        if (d / "tokenizer.json").is_file() or (
            (d / "vocab.json").is_file() and (d / "merges.txt").is_file()
        ):
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            except Exception as exc:
                raise EncoderError(
                    f"cannot load the CLIP tokenizer from {d}: {type(exc).__name__}: {exc}"
                ) from exc
        self._pre = _preprocess_spec(d, int(model.config.vision_config.image_size))
        self._dim = int(model.config.projection_dim)
        text_positions = int(model.config.text_config.max_position_embeddings)
        tok_max = int(getattr(tokenizer, "model_max_length", text_positions) or text_positions)
        self._max_text_len = min(text_positions, tok_max)
        self._tokenizer = tokenizer
        self._model = model
        self.modalities = frozenset({"image", "text"} if tokenizer is not None else {"image"})

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise EncoderError(f"{self.name} is not loaded; call load() first")

    # -- images --------------------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        self._require_loaded()
        spec = self._pre or {}
        return (3, int(spec["crop_height"]), int(spec["crop_width"]))

    @property
    def input_size(self) -> int:
        """Side of the model's input; the pipeline uses it as a JPEG draft hint."""
        self._require_loaded()
        spec = self._pre or {}
        return int(spec["shortest_edge"] or max(spec["height"], spec["width"]))

    @property
    def draft_size(self) -> tuple[int, int]:
        """JPEG draft hint: decoding at a reduced scale down to this size loses nothing after the resize."""
        side = self.input_size
        return (side, side)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One decoded image -> float32 ``[3, crop_h, crop_w]`` as the model's image processor would give.

        Needs :meth:`load` (for the directory's preprocessing spec), not the model itself; thread-safe.
        """
        from PIL import Image

        self._require_loaded()
        spec = self._pre or {}
        im = ensure_rgb(image)
        if spec["do_resize"]:
            w, h = im.size
            if spec["shortest_edge"]:
                short, long_ = (w, h) if w <= h else (h, w)
                new_short = int(spec["shortest_edge"])
                new_long = int(new_short * long_ / short)
                size = (new_short, new_long) if w <= h else (new_long, new_short)
            else:
                size = (int(spec["width"]), int(spec["height"]))
            if size != im.size:
                im = im.resize(size, Image.Resampling(spec["resample"]))
        pixels = np.asarray(im)  # [h, w, 3] uint8
        if spec["do_center_crop"]:
            pixels = _center_crop(pixels, spec["crop_height"], spec["crop_width"])  # [ch, cw, 3]
        x = pixels.astype(np.float32)  # [ch, cw, 3]
        if spec["do_rescale"]:
            x *= np.float32(spec["rescale_factor"])
        if spec["do_normalize"]:
            x -= np.asarray(spec["image_mean"], dtype=np.float32)
            x /= np.asarray(spec["image_std"], dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # [3, ch, cw]

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        """Image tower on a stacked batch ``[n, 3, crop_h, crop_w]`` -> embeddings float32 ``[n, dim]``."""
        self._require_loaded()
        x = np.asarray(batch)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"{self.name} expects a batch of shape [n, {', '.join(map(str, self.input_shape))}], "
                f"got {list(x.shape)}"
            )
        import torch

        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)  # [n, dim]
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = torch.from_numpy(x[start : start + self.batch_size]).to(self.device)
                feats = _features(self._model.get_image_features(pixel_values=chunk))
                out[start : start + len(chunk)] = feats.float().cpu().numpy()
        return EncoderOutput(l2_normalize(out), {})

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Preprocess and embed a list of images -> float32 ``[n, dim]``, L2-normalised."""
        if not isinstance(images, (list, tuple)):
            raise InputError(f"images must be a list of PIL images, got {type(images).__name__}")
        self._require_loaded()
        return super().embed_images(list(images))

    # -- texts ---------------------------------------------------------------------------------------

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Text tower -> float32 ``[n, dim]``, L2-normalised, in the same space as the images."""
        texts = check_texts(texts)
        self._require_loaded()
        if self._tokenizer is None:
            raise InputError(
                f"encoder {self.name!r} has no text tower here: no tokenizer in {self.model_dir()} "
                f"(modalities: {sorted(self.modalities)}); save the tokenizer into that directory"
            )
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)  # [n, dim]
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                enc = self._tokenizer(
                    chunk, padding=True, truncation=True, max_length=self._max_text_len, return_tensors="pt"
                )
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                feats = _features(self._model.get_text_features(**enc))
                out[start : start + len(chunk)] = feats.float().cpu().numpy()
        return l2_normalize(out)


# ----------------------------------------------------------------------------------------------------


def _features(out: Any) -> Any:
    """transformers 4 returns the projected features as a tensor, transformers 5 as ``pooler_output``."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:  # pragma: no cover - an unknown transformers API
        raise EncoderError(f"unexpected CLIP feature output of type {type(out).__name__}")
    return pooled


def _size_dict(value: Any) -> dict[str, int]:
    if isinstance(value, int):
        return {"height": value, "width": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, dict):
        return {k: int(v) for k, v in value.items() if v is not None}
    raise EncoderError(f"unsupported size in preprocessor_config.json: {value!r}")


def _preprocess_spec(folder: Path, image_size: int) -> dict[str, Any]:
    """The image preprocessing of a CLIP directory: its ``preprocessor_config.json`` over CLIP defaults."""
    cfg: dict[str, Any] = {}
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EncoderError(f"cannot read {path}: {exc}") from exc
    size = _size_dict(cfg.get("size", {"shortest_edge": image_size}))
    if "shortest_edge" not in size and not {"height", "width"} <= set(size):
        raise EncoderError(f"unsupported size in {path}: {cfg.get('size')!r}")
    do_resize = bool(cfg.get("do_resize", True))
    do_crop = bool(cfg.get("do_center_crop", True))
    if do_crop:
        crop = _size_dict(cfg.get("crop_size", image_size))
        crop_h, crop_w = int(crop.get("height", image_size)), int(crop.get("width", image_size))
    elif do_resize and "shortest_edge" not in size:
        crop_h, crop_w = size["height"], size["width"]
    else:
        raise EncoderError(
            f"unsupported preprocessing in {path}: without a centre crop or a fixed resize, images of "
            "different shapes cannot be batched"
        )
    return {
        "do_resize": do_resize,
        "shortest_edge": size.get("shortest_edge"),
        "height": size.get("height", image_size),
        "width": size.get("width", image_size),
        "resample": int(cfg.get("resample", _BICUBIC)),
        "do_center_crop": do_crop,
        "crop_height": crop_h,
        "crop_width": crop_w,
        "do_rescale": bool(cfg.get("do_rescale", True)),
        "rescale_factor": float(cfg.get("rescale_factor", 1 / 255)),
        "do_normalize": bool(cfg.get("do_normalize", True)),
        "image_mean": [float(v) for v in cfg.get("image_mean", _CLIP_MEAN)],
        "image_std": [float(v) for v in cfg.get("image_std", _CLIP_STD)],
    }


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop ``[h, w, c]`` to ``[height, width, c]``, zero-padding (centred) where it is smaller."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        ph, pw = max(height - h, 0), max(width - w, 0)
        pixels = np.pad(
            pixels, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        )  # [>=height, >=width, c]
        h, w = pixels.shape[:2]
    top = int((h - height) / 2.0)
    left = int((w - width) / 2.0)
    return pixels[top : top + height, left : left + width]
