"""The detector plugin: an ONNX model plus a small Python adapter, writing model scores (and boxes).

A plugin is two things:

* an ONNX model file, run with ONNX Runtime (CPU by default);
* an **adapter**, a small Python object that knows the model's input and output conventions::

      class MyAdapter:
          concepts = ["ambulance", "fire-truck"]         # what the model detects

          def preprocess(self, image: PIL.Image.Image) -> dict[str, np.ndarray]:
              # one RGB image -> the model's inputs for that image, WITHOUT the batch axis
              return {"images": chw_float32}

          def postprocess(self, outputs: dict[str, np.ndarray], sizes: list[tuple[int, int]]) -> list[list]:
              # the model's outputs for a batch (batch axis first) and each image's (width, height)
              # -> per image, a list of detections (concept, score in [0, 1], box or None);
              #    a box is (x0, y0, x1, y1) normalised to [0, 1]
              return [[("ambulance", 0.83, (0.1, 0.2, 0.5, 0.9))], []]

  Adapters are named ``module.path:ClassName`` or ``/path/to/adapter.py:ClassName`` (a class is
  instantiated without arguments; an instance or a factory function's result is used as is).

The item's model score for a concept is its best detection's score (0 when the model found none), and its
boxes are all the detections of that concept. The plugin runs:

* standalone over the corpus (:func:`run_detector`, ``assay scores detect``), items decoded in a thread
  pool and fed to the model ``batch_size`` at a time; a model whose batch axis is fixed at 1 is run image
  by image; or
* inside the embedding pass (:class:`DetectorHook`, given to :func:`assay.embed.embed` as ``hooks=[...]``),
  so each image is read and decoded once for both the encoder and the detector.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import EncoderError, InputError, NotFoundError, require
from .scores import read_scores, write_scores

__all__ = ["Detection", "DetectorAdapter", "OnnxDetector", "DetectorHook", "DetectReport", "load_adapter", "run_detector"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """One detection: a concept, a score in [0, 1], and a box ``(x0, y0, x1, y1)`` normalised, or None."""

    concept: str
    score: float
    box: tuple[float, float, float, float] | None = None


class DetectorAdapter(Protocol):
    """What a detector plugin's adapter provides (see the module docstring)."""

    concepts: Sequence[str]

    def preprocess(self, image: Any) -> dict[str, np.ndarray]: ...

    def postprocess(self, outputs: dict[str, np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[list[Any]]: ...


def load_adapter(spec: str | Any) -> Any:
    """An adapter from ``module:Name`` or ``/path/file.py:Name`` (or an adapter object, returned as is)."""
    if not isinstance(spec, str):
        _check_adapter(spec)
        return spec
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise InputError(f"an adapter is named module:Name or /path/adapter.py:Name, got {spec!r}")
    if mod_name.endswith(".py") or os.sep in mod_name:
        path = Path(mod_name)
        if not path.exists():
            raise NotFoundError(f"adapter file not found: {path}")
        name = f"assay_detector_adapter_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise InputError(f"cannot load adapter file {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise NotFoundError(f"adapter module {mod_name!r} cannot be imported: {exc}") from exc
    if not hasattr(module, attr):
        raise NotFoundError(f"adapter {attr!r} not found in {mod_name}")
    obj = getattr(module, attr)
    if callable(obj) and not hasattr(obj, "preprocess") or isinstance(obj, type):
        obj = obj()
    _check_adapter(obj)
    return obj


def _check_adapter(obj: Any) -> None:
    for name in ("preprocess", "postprocess"):
        if not callable(getattr(obj, name, None)):
            raise InputError(f"a detector adapter needs a {name}() method; {type(obj).__name__} has none")
    concepts = getattr(obj, "concepts", None)
    if not concepts or isinstance(concepts, str) or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise InputError(f"a detector adapter needs `concepts`, a non-empty list of names; got {concepts!r}")


def _as_detection(d: Any, concepts: set[str], where: str) -> Detection:
    if isinstance(d, Detection):
        concept, score, box = d.concept, d.score, d.box
    elif isinstance(d, dict):
        concept, score, box = d.get("concept"), d.get("score"), d.get("box")
    elif isinstance(d, (tuple, list)) and len(d) in (2, 3):
        concept, score, box = d[0], d[1], (d[2] if len(d) == 3 else None)
    else:
        raise InputError(f"{where}: a detection must be (concept, score, box), got {d!r}")
    if concept not in concepts:
        raise InputError(f"{where}: concept {concept!r} is not in the adapter's concepts {sorted(concepts)}")
    try:
        score = float(score)
    except (TypeError, ValueError):
        raise InputError(f"{where}: score must be a number, got {score!r}") from None
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise InputError(f"{where}: score {score!r} is outside [0, 1]")
    if box is not None:
        from .scores import check_box

        try:
            b = check_box(list(box)[:4])
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        box = (b[0], b[1], b[2], b[3])
    return Detection(str(concept), score, box)


class OnnxDetector:
    """An ONNX detector with its adapter. The constructor stores parameters; :meth:`load` opens the model.

    Parameters
    ----------
    model_path : path to an ``.onnx`` file
    adapter : adapter object or its name (see :func:`load_adapter`)
    name : str, optional
        The model name scores are stored under (default: the file's stem).
    providers : list of str, optional
        ONNX Runtime execution providers (default: CPU).
    """

    def __init__(self, model_path: str | Path, adapter: Any, *, name: str | None = None,
                 providers: Sequence[str] | None = None) -> None:
        self.model_path = Path(model_path)
        self.adapter_spec = adapter
        self.name = name or self.model_path.stem
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self._session: Any = None
        self.adapter: Any = None
        self._batchable = True

    def load(self) -> OnnxDetector:
        if self._session is not None:
            return self
        if not self.model_path.exists():
            raise NotFoundError(f"detector model not found: {self.model_path}")
        self.adapter = load_adapter(self.adapter_spec)
        ort = require("onnxruntime", "onnx", "the ONNX detector plugin")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=self.providers)
        except Exception as exc:
            raise EncoderError(f"cannot load the ONNX detector {self.model_path}: {exc}") from exc
        first = self._session.get_inputs()[0].shape
        self._batchable = not (first and isinstance(first[0], int) and first[0] == 1)
        return self

    @property
    def concepts(self) -> list[str]:
        self.load()
        return [str(c) for c in self.adapter.concepts]

    def prepare(self, image: Any) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
        """The adapter's inputs for one decoded image, and its ``(width, height)``."""
        self.load()
        inputs = self.adapter.preprocess(image)
        if not isinstance(inputs, dict) or not inputs:
            raise InputError(f"adapter.preprocess must return a dict of input arrays, got {type(inputs).__name__}")
        return {k: np.asarray(v) for k, v in inputs.items()}, (int(image.size[0]), int(image.size[1]))

    def run_prepared(self, prepared: Sequence[tuple[dict[str, np.ndarray], tuple[int, int]]]) -> list[list[Detection]]:
        """Detections per image for already-prepared inputs (one batch)."""
        self.load()
        if not prepared:
            return []
        groups = [list(prepared)] if self._batchable else [[p] for p in prepared]
        out: list[list[Detection]] = []
        concepts = set(self.concepts)
        for group in groups:
            try:
                feed = {k: np.stack([g[0][k] for g in group]) for k in group[0][0]}
            except (KeyError, ValueError) as exc:
                raise InputError(
                    f"detector {self.name!r}: adapter.preprocess must give every image the same input names and "
                    f"shapes (resize inside preprocess), got {exc}"
                ) from None
            names = [o.name for o in self._session.get_outputs()]
            try:
                values = self._session.run(names, feed)
            except Exception as exc:
                raise EncoderError(f"the detector {self.name!r} failed on a batch: {exc}") from exc
            res = self.adapter.postprocess(dict(zip(names, values)), [g[1] for g in group])
            if not isinstance(res, (list, tuple)) or len(res) != len(group):
                raise InputError(f"adapter.postprocess must return one list of detections per image ({len(group)}), "
                                 f"got {type(res).__name__} of length {len(res) if hasattr(res, '__len__') else '?'}")
            for k, dets in enumerate(res):
                out.append([_as_detection(d, concepts, f"detector {self.name!r}, image {k}") for d in dets])
        return out

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        """Detections for each of ``images`` (PIL images)."""
        return self.run_prepared([self.prepare(im) for im in images])

    def score_rows(self, item_ids: Sequence[int], detections: Sequence[Sequence[Detection]]) -> list[tuple]:
        """Model-score rows ``(concept, item id, score, boxes)``: one per concept per item."""
        rows = []
        for item_id, dets in zip(item_ids, detections):
            for c in self.concepts:
                mine = [d for d in dets if d.concept == c]
                score = max((d.score for d in mine), default=0.0)
                boxes = [[*d.box, d.score] for d in mine if d.box is not None]
                rows.append((c, int(item_id), score, boxes or None))
        return rows


@dataclass
class DetectReport:
    model: str
    concepts: list[str]
    items: int = 0
    failed: int = 0
    skipped: int = 0
    detections: int = 0
    seconds: float = 0.0
    failure_samples: list[tuple[int, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failure_samples"] = [{"id": i, "reason": r} for i, r in self.failure_samples]
        d["seconds"] = round(self.seconds, 3)
        return d


def _decode(uri: str) -> Any:
    from ..media import decode_image, read_bytes

    return decode_image(read_bytes(uri))


def run_detector(
    ws: Any, detector: OnnxDetector, *, ids: Sequence[int] | np.ndarray | None = None, batch_size: int = 16,
    workers: int | None = None, only_missing: bool = False, commit_every: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> DetectReport:
    """Run the detector over the corpus (or ``ids``) and store its scores and boxes as model scores.

    Scores are committed every ``commit_every`` items, so an interrupted run keeps what it finished;
    ``only_missing`` skips items the model has scored already (resume). An item that cannot be read or
    decoded is counted in ``failed`` with its reason and skipped; the catalog is not changed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    t0 = time.perf_counter()
    detector.load()
    cat = ws.catalog
    todo = cat.ids(status="ok", modality="image") if ids is None else np.asarray(ids, dtype=np.int64)
    report = DetectReport(model=detector.name, concepts=detector.concepts)
    if only_missing:
        done, _ = read_scores(cat, detector.concepts[0], detector.name)
        keep = ~np.isin(todo, done)
        report.skipped = int((~keep).sum())
        todo = todo[keep]
    rows: list[tuple] = []
    n_pending = 0
    workers = workers or max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="assay-detect") as pool:
        for start in range(0, len(todo), batch_size):
            items = cat.get_many(todo[start : start + batch_size])
            futs = [(it.id, pool.submit(lambda u: detector.prepare(_decode(u)), it.uri)) for it in items]
            ok_ids, prepared = [], []
            for item_id, fut in futs:
                try:
                    prepared.append(fut.result())
                    ok_ids.append(item_id)
                except Exception as exc:  # one bad image never stops the run; it is counted
                    report.failed += 1
                    if len(report.failure_samples) < 20:
                        report.failure_samples.append((int(item_id), f"{type(exc).__name__}: {exc}"))
            dets = detector.run_prepared(prepared)
            rows.extend(detector.score_rows(ok_ids, dets))
            report.items += len(ok_ids)
            report.detections += sum(len(d) for d in dets)
            n_pending += len(ok_ids)
            if progress is not None:
                progress(len(items))
            if n_pending >= commit_every:
                write_scores(cat, detector.name, rows)
                rows, n_pending = [], 0
    if rows:
        write_scores(cat, detector.name, rows)
    report.seconds = time.perf_counter() - t0
    return report


class DetectorHook:
    """Runs a detector inside the embedding pass (``embed(ws, hooks=[DetectorHook(ws, detector)])``).

    The embedding pipeline calls :meth:`preprocess` on each decoded image in its decode threads,
    :meth:`process` on each batch, and :meth:`close` at the end (also after an interruption). Scores are
    written every ``commit_every`` items and at :meth:`close`. A batch the detector fails on is counted in
    ``report.failed`` (with a sample reason) and never stops the embedding; run ``assay scores detect
    --only-missing`` afterwards to fill those in.
    """

    def __init__(self, ws: Any, detector: OnnxDetector, *, commit_every: int = 2048) -> None:
        self.ws = ws
        self.detector = detector
        self.commit_every = commit_every
        self.report = DetectReport(model=detector.name, concepts=[])
        self._rows: list[tuple] = []
        self._pending = 0

    def preprocess(self, image: Any) -> Any:
        return self.detector.prepare(image)

    def process(self, ids: Sequence[int], prepared: Sequence[Any]) -> None:
        if not self.report.concepts:
            self.report.concepts = self.detector.concepts
        try:
            dets = self.detector.run_prepared(prepared)
        except Exception as exc:  # the embedding goes on; the failure is counted and logged
            self.report.failed += len(ids)
            if len(self.report.failure_samples) < 20:
                self.report.failure_samples.append((int(ids[0]), f"{type(exc).__name__}: {exc}"))
            log.warning("detector %s failed on a batch of %d items: %s", self.detector.name, len(ids), exc)
            return
        self._rows.extend(self.detector.score_rows(ids, dets))
        self.report.items += len(ids)
        self.report.detections += sum(len(d) for d in dets)
        self._pending += len(ids)
        if self._pending >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            write_scores(self.ws.catalog, self.detector.name, self._rows)
        self._rows, self._pending = [], 0

    def close(self) -> None:
        self.flush()
