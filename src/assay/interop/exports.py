"""Exports of a concept's mined set: CSV, Parquet, Label Studio, COCO, ImageFolder, FiftyOne.

The rows (:func:`collect_rows`) are the concept's labelled items, the latest label of each, with its
provenance (``source``: human, oracle, import or pseudo; ``annotator``; the ``round`` that proposed the item),
and a ``score``: the final proxy's P(positive) (trained on every non-pseudo label), or an imported model's
score with ``score_model``. ``top`` adds the best-scored unlabelled items (label empty), for pre-labelling.
``include_pseudo=False`` (``--no-pseudo``) leaves pseudo-labels out of every format.

Formats (:data:`FORMATS`, :func:`export`)
    ``csv`` / ``parquet``  columns ``id, uri, concept, label, source, annotator, score, round``.
    ``label-studio``       a JSON list of tasks, ``data.image`` = the item's URI (or ``url_prefix`` + its local
                           path, for Label Studio's local-files serving), ``data.assay_id``; human/oracle/imported
                           labels as ``annotations`` (a ``choices`` result), and ``predictions`` carrying
                           ``model_version`` and ``score`` (a ``choices`` result, plus ``rectanglelabels``
                           results where a detector gave boxes) for pre-labelling. Pseudo-labels go out as
                           predictions only (``model_version`` ``assay-pseudo``): they are machine labels to
                           check, not annotations. The matching labelling config is written beside the JSON as
                           ``<name>.label_config.xml`` (:func:`label_studio_config`).
    ``coco``               ``images`` (id = assay item id, ``file_name`` = local path or URI, ``coco_url`` = URI,
                           width, height), one category (the concept), ``annotations`` for positives: one per
                           detector box (``bbox`` ``[x, y, w, h]`` in pixels, ``score``), else one **image-level
                           annotation without a ``bbox`` key** (``area`` 0). Negatives are images with no
                           annotation, the COCO convention. Only labelled items are written.
    ``imagefolder``        ``<out>/<concept>/`` and ``<out>/not-<concept>/`` holding ``<id><ext>`` symlinks to
                           the images (``copy=True`` copies; remote URIs are always downloaded).
    ``fiftyone``           FiftyOne's ``FiftyOneImageClassificationDataset`` layout, loadable with
                           ``fo.Dataset.from_dir(out, fo.types.FiftyOneImageClassificationDataset)`` without
                           fiftyone installed at export time: ``data/<id><ext>`` and ``labels.json``
                           ``{"classes": ["not-<concept>", "<concept>"], "labels": {"<id>": 0 | 1}}``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from .._atomic import atomic_output
from ..errors import InputError, UnknownNameError, check_folder

__all__ = [
    "FORMATS",
    "EXPORT_COLUMNS",
    "ExportRow",
    "ExportReport",
    "collect_rows",
    "export",
    "label_studio_config",
    "negative_name",
    "safe_name",
]

FORMATS = ("csv", "parquet", "label-studio", "coco", "imagefolder", "fiftyone")
EXPORT_COLUMNS = ("id", "uri", "concept", "label", "source", "annotator", "score", "round")
PSEUDO_MODEL_VERSION = "assay-pseudo"


@dataclass
class ExportRow:
    id: int
    uri: str
    concept: str
    label: int | None
    source: str | None
    annotator: str | None
    score: float | None
    round: int | None
    width: int | None = None
    height: int | None = None
    text: str | None = None  # a text item's text (None for images)
    status: str = "ok"

    def public(self, with_text: bool = False) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in EXPORT_COLUMNS}
        if with_text:
            d["text"] = self.text
        return d


@dataclass
class ExportReport:
    format: str
    out: str
    rows: int
    positives: int
    negatives: int
    unlabelled: int
    pseudo: int
    boxes: int = 0
    extra_files: list[str] | None = None
    left_out: int = 0  # labelled items whose file failed (status error): not written by image exports

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_name(name: str) -> str:
    """A folder/file-safe form of a concept name."""
    s = re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip().strip(".")
    return s or "concept"


def negative_name(concept: str) -> str:
    """The class name of the negatives: ``not-<concept>``."""
    return f"not-{concept}"


# ---------------------------------------------------------------------------------------------- rows
def _latest_labels(cat: Any, concept_id: int, include_pseudo: bool) -> dict[int, dict[str, Any]]:
    """Each labelled item's current label: the latest answer of a person (or a stand-in: human, oracle,
    import); a pseudo-label only for items nobody answered (never over an answer, whatever its age), and only
    with ``include_pseudo`` -- the same precedence the proxy's training uses."""
    latest: dict[int, dict[str, Any]] = {}
    pseudo: dict[int, dict[str, Any]] = {}
    for h in cat.label_history(concept_id):
        target = pseudo if h["source"] == "pseudo" else latest
        prev = target.get(int(h["item_id"]))
        if prev is None or int(h["id"]) > int(prev["id"]):
            target[int(h["item_id"])] = h
    if include_pseudo:
        for i, h in pseudo.items():
            latest.setdefault(i, h)
    return latest


def collect_rows(
    ws: Any, concept: str, *, include_pseudo: bool = True, top: int = 0, score_model: str | None = None,
    with_scores: bool = True, proxy: str = "logistic", encoder: str | None = None,
) -> tuple[list[ExportRow], str | None]:
    """The export rows of ``concept`` (labelled items first, by id; then ``top`` unlabelled by score).

    Returns ``(rows, model_version)``: ``model_version`` names where the scores came from
    (``assay-<proxy>`` or the imported model's name), None when there are no scores.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise InputError(f"top must be a non-negative integer, got {top!r}")
    cat = ws.catalog
    c = cat.concept(concept)
    latest = _latest_labels(cat, c.id, include_pseudo)
    labelled = np.asarray(sorted(latest), dtype=np.int64)
    round_no = {r.id: r.number for r in cat.rounds(c.id)}
    score_of: dict[int, float] = {}
    model_version: str | None = None
    extra_ids = np.zeros(0, dtype=np.int64)
    # The unlabelled top-scored rows skip labelled items, non-representative duplicates and items not ok.
    skip = (np.concatenate([labelled, cat.non_representative_ids(), cat.ids(status="error"), cat.group_mates(labelled)])
            if top else labelled)  # copies of labelled items are answered already: not offered for labelling
    if with_scores and score_model is not None:
        from .scores import read_scores, resolve_model

        model_version = resolve_model(cat, concept, score_model)
        s_ids, s_vals = read_scores(cat, concept, model_version)
        score_of = dict(zip(s_ids.tolist(), s_vals.tolist()))
        if top:
            un = ~np.isin(s_ids, skip)
            order = np.argsort(-s_vals[un], kind="stable")[:top]
            extra_ids = s_ids[un][order]
    elif with_scores:
        store = ws.vectors(encoder)
        if encoder is not None:
            store.meta()  # an encoder named explicitly must have embeddings (a typo is an error, not empty scores)
        tr_ids, tr_y = cat.current_labels(c.id, include_pseudo=False)
        if store.exists() and len(tr_ids):
            keep = store.contains(tr_ids)
            tr_ids, tr_y = tr_ids[keep], tr_y[keep]
        if store.exists() and (tr_y == 1).any() and (tr_y == 0).any():
            from ..loop import make_proxy

            model = make_proxy(proxy).fit(store.get(tr_ids), tr_y)
            model_version = f"assay-{proxy}"
            if top:
                ids_all, p_all = [], []
                for ids, vecs in store.iter_shards():
                    if len(ids):
                        ids_all.append(np.asarray(ids, dtype=np.int64))
                        p_all.append(model.predict_proba(vecs))
                ids_all_a = np.concatenate(ids_all)
                p_all_a = np.concatenate(p_all)
                score_of = dict(zip(ids_all_a.tolist(), p_all_a.tolist()))
                un = ~np.isin(ids_all_a, skip)
                order = np.argsort(-p_all_a[un], kind="stable")[:top]
                extra_ids = ids_all_a[un][order]
            else:
                have = labelled[store.contains(labelled)] if len(labelled) else labelled
                if len(have):
                    score_of = dict(zip(have.tolist(), model.predict_proba(store.get(have)).tolist()))
        elif top:  # asked for the best unlabelled items, which need a model: say why there is none
            store.meta()  # no embeddings for this encoder: names the encoders that have some
            raise InputError(
                f"--top {top} ranks unlabelled items with a model trained on {concept!r}'s labels, which needs at "
                f"least one positive and one negative label on embedded items (has {int((tr_y == 1).sum())} "
                f"positive, {int((tr_y == 0).sum())} negative); label more, or pass --no-scores without --top")
    items = {r.id: r for r in cat.get_many(np.concatenate([labelled, extra_ids]))}
    rows: list[ExportRow] = []
    for i in labelled.tolist():
        h = latest[i]
        it = items.get(i)
        rows.append(ExportRow(
            id=i, uri=it.uri if it else "", concept=concept, label=int(h["value"]), source=h["source"],
            annotator=h["annotator"], score=score_of.get(i), round=round_no.get(h["round_id"]),
            width=it.width if it else None, height=it.height if it else None, **_item_fields(it),
        ))
    for i in extra_ids.tolist():
        it = items.get(i)
        rows.append(ExportRow(
            id=i, uri=it.uri if it else "", concept=concept, label=None, source=None, annotator=None,
            score=score_of.get(i), round=None, width=it.width if it else None, height=it.height if it else None,
            **_item_fields(it),
        ))
    return rows, model_version


def _item_fields(it: Any) -> dict[str, Any]:
    if it is None:
        return {"status": "error"}
    return {"text": (it.text or "") if it.modality == "text" else None, "status": it.status}


def _boxes_model(cat: Any, concept: str, boxes_model: str | None, score_model: str | None) -> str | None:
    from .scores import score_models

    with_boxes = [m["model"] for m in score_models(cat, concept) if m["with_boxes"]]
    if boxes_model is not None:
        if boxes_model not in with_boxes:
            raise InputError(f"model {boxes_model!r} gave no boxes for {concept!r}; models with boxes: {with_boxes}")
        return boxes_model
    if score_model in with_boxes:
        return score_model
    if len(with_boxes) > 1:
        import logging

        logging.getLogger(__name__).warning(
            "%d models gave boxes for %r (%s): the export has no boxes; choose one with --boxes-model",
            len(with_boxes), concept, ", ".join(with_boxes))
    return with_boxes[0] if len(with_boxes) == 1 else None


# ---------------------------------------------------------------------------------------------- writers
def _has_text(rows: list[ExportRow]) -> bool:
    return any(r.text is not None for r in rows)


def _write_csv(rows: list[ExportRow], out: Path) -> None:
    with_text = _has_text(rows)  # a `text` column when the concept's items are texts
    with atomic_output(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(EXPORT_COLUMNS) + (["text"] if with_text else []))
        w.writeheader()
        for r in rows:
            d = r.public(with_text)
            w.writerow({k: ("" if v is None else v) for k, v in d.items()})


def _write_parquet(rows: list[ExportRow], out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("id", pa.int64()), ("uri", pa.string()), ("concept", pa.string()), ("label", pa.int8()),
        ("source", pa.string()), ("annotator", pa.string()), ("score", pa.float64()), ("round", pa.int32()),
    ])
    with_text = _has_text(rows)
    if with_text:
        schema = schema.append(pa.field("text", pa.string()))
    with atomic_output(out) as tmp:
        pq.write_table(pa.Table.from_pylist([r.public(with_text) for r in rows], schema=schema), tmp)


def label_studio_config(concept: str, text: bool = False) -> str:
    """The Label Studio labelling config the exported tasks fit: an image, a yes/no choice, boxes (with
    ``text``: the text and a yes/no choice)."""
    pos, neg = quoteattr(concept), quoteattr(negative_name(concept))
    if text:
        return (
            "<View>\n"
            '  <Text name="text" value="$text"/>\n'
            '  <Choices name="label" toName="text" choice="single" showInline="true">\n'
            f"    <Choice value={pos}/>\n"
            f"    <Choice value={neg}/>\n"
            "  </Choices>\n"
            "</View>\n"
        )
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        '  <Choices name="label" toName="image" choice="single" showInline="true">\n'
        f"    <Choice value={pos}/>\n"
        f"    <Choice value={neg}/>\n"
        "  </Choices>\n"
        '  <RectangleLabels name="box" toName="image">\n'
        f"    <Label value={pos}/>\n"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def _ls_image(uri: str, url_prefix: str | None) -> str:
    if url_prefix is None:
        return uri
    from urllib.parse import quote

    from ..media import is_local, local_path

    # The path is percent-encoded: a '#', '?' or space in a file name must not end the URL's query.
    return url_prefix + quote(local_path(uri).lstrip("/"), safe="/") if is_local(uri) else uri


def _rid() -> str:
    return uuid.uuid4().hex[:10]


def _choice(concept: str, positive: bool, to: str = "image") -> dict[str, Any]:
    return {"id": _rid(), "from_name": "label", "to_name": to, "type": "choices",
            "value": {"choices": [concept if positive else negative_name(concept)]}}


def _rect(concept: str, box: list, width: int | None, height: int | None) -> dict[str, Any]:
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    r: dict[str, Any] = {
        "id": _rid(), "from_name": "box", "to_name": "image", "type": "rectanglelabels",
        "value": {"x": 100 * x0, "y": 100 * y0, "width": 100 * (x1 - x0), "height": 100 * (y1 - y0),
                  "rotation": 0, "rectanglelabels": [concept]},
    }
    if len(box) > 4 and box[4] is not None:
        r["score"] = float(box[4])
    if width and height:
        r.update(original_width=int(width), original_height=int(height), image_rotation=0)
    return r


def _write_label_studio(rows: list[ExportRow], out: Path, concept: str, model_version: str | None,
                        boxes: dict[int, list], url_prefix: str | None) -> list[str]:
    n_text = sum(r.text is not None for r in rows)
    if 0 < n_text < len(rows):
        raise InputError(f"{concept!r} has {n_text} text items and {len(rows) - n_text} image items; a Label Studio "
                         "project labels one kind: export them apart (csv or parquet hold both)")
    is_text = n_text > 0
    to = "text" if is_text else "image"
    tasks = []
    for r in rows:
        data: dict[str, Any] = {"text": r.text} if is_text else {"image": _ls_image(r.uri, url_prefix)}
        task: dict[str, Any] = {"data": {**data, "assay_id": r.id, "assay_uri": r.uri}}
        if r.label is not None and r.source != "pseudo":
            task["annotations"] = [{"result": [_choice(r.concept, r.label == 1, to)], "ground_truth": False}]
        preds = []
        if r.score is not None and model_version is not None:
            result = [_choice(r.concept, r.score >= 0.5, to)]
            if not is_text:
                result += [_rect(r.concept, b, r.width, r.height) for b in boxes.get(r.id, [])]
            preds.append({"model_version": model_version, "score": float(r.score), "result": result})
        if r.source == "pseudo" and r.label is not None:
            preds.append({"model_version": PSEUDO_MODEL_VERSION, "score": float(r.score) if r.score is not None else 1.0,
                          "result": [_choice(r.concept, r.label == 1, to)]})
        if preds:
            task["predictions"] = preds
        tasks.append(task)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
    cfg = out.with_name(out.stem + ".label_config.xml")
    with atomic_output(cfg) as tmp:
        tmp.write_text(label_studio_config(concept, text=is_text), encoding="utf-8")
    return [str(cfg)]


def _write_coco(rows: list[ExportRow], out: Path, concept: str, boxes: dict[int, list]) -> int:
    from ..media import is_local, local_path

    images, anns = [], []
    n_boxes = 0
    for r in rows:
        if r.label is None:
            continue
        images.append({
            "id": r.id, "file_name": local_path(r.uri) if is_local(r.uri) else r.uri, "coco_url": r.uri,
            "width": r.width or 0, "height": r.height or 0,
            "assay_label": r.label, "assay_source": r.source, "assay_annotator": r.annotator, "assay_round": r.round,
        })
        if r.label != 1:
            continue
        item_boxes = boxes.get(r.id, []) if (r.width and r.height) else []
        for b in item_boxes:
            x0, y0, x1, y1 = (float(v) for v in b[:4])
            bw, bh = (x1 - x0) * r.width, (y1 - y0) * r.height
            ann = {"id": len(anns) + 1, "image_id": r.id, "category_id": 1, "iscrowd": 0,
                   "bbox": [x0 * r.width, y0 * r.height, bw, bh], "area": bw * bh}
            if len(b) > 4 and b[4] is not None:
                ann["score"] = float(b[4])
            anns.append(ann)
            n_boxes += 1
        if not item_boxes:  # image-level: the concept is present, where is unknown
            anns.append({"id": len(anns) + 1, "image_id": r.id, "category_id": 1, "iscrowd": 0, "area": 0.0})
    doc = {
        "info": {"description": f"assay export of concept {concept!r}", "version": "1.0"},
        "licenses": [],
        "images": images,
        "categories": [{"id": 1, "name": concept, "supercategory": "assay"}],
        "annotations": anns,
    }
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return n_boxes


def _suffix(uri: str) -> str:
    suf = Path(uri.split("?", 1)[0]).suffix.lower()
    return suf if re.fullmatch(r"\.[a-z0-9]{1,5}", suf or "") else ".jpg"


def _place(uri: str, dest: Path, copy: bool) -> None:
    from ..media import is_local, local_path, read_bytes

    if dest.exists() or dest.is_symlink():
        dest.unlink()
    if is_local(uri):
        src = Path(local_path(uri))
        if copy:
            with atomic_output(dest) as tmp:  # never a half-copied image under the final name
                shutil.copyfile(src, tmp)
        else:
            os.symlink(src.absolute(), dest)
    else:
        data = read_bytes(uri)
        with atomic_output(dest) as tmp:
            tmp.write_bytes(data)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create the folder: {exc}") from exc


def _check_sources(rows: list[ExportRow]) -> None:
    """A file tree export links or copies every labelled file: a local file that is gone is refused before
    anything is written (a half-written tree, or a dangling link, is worse than no export)."""
    from ..media import is_local, local_path

    gone = [r for r in rows if r.label is not None and is_local(r.uri) and not os.path.isfile(local_path(r.uri))]
    if gone:
        raise InputError(f"{len(gone)} labelled items' files are missing, e.g. item {gone[0].id} ({gone[0].uri}); put "
                         "them back, or export as csv/parquet, which do not need the files")


def _write_imagefolder(rows: list[ExportRow], out: Path, concept: str, copy: bool) -> None:
    _check_sources(rows)
    _check_out_dir(out)
    pos_dir, neg_dir = out / safe_name(concept), out / safe_name(negative_name(concept))
    pos_dir.mkdir(exist_ok=True)
    neg_dir.mkdir(exist_ok=True)
    wanted = {
        (pos_dir if r.label == 1 else neg_dir) / f"{r.id}{_suffix(r.uri)}": r for r in rows if r.label is not None
    }
    # A re-export into the same folder drops what an earlier export put there and this one does not (an item
    # whose label flipped must not sit in both class folders); files not named <id>.<ext> are left alone.
    for d in (pos_dir, neg_dir):
        for f in d.iterdir():
            if f.stem.isdigit() and f not in wanted and (f.is_symlink() or f.is_file()):
                f.unlink()
    for dest, r in wanted.items():
        _place(r.uri, dest, copy)


def _write_fiftyone(rows: list[ExportRow], out: Path, concept: str, copy: bool) -> None:
    _check_sources(rows)
    _check_out_dir(out)
    data = out / "data"
    data.mkdir(exist_ok=True)
    labels: dict[str, int] = {}
    for r in rows:
        if r.label is None:
            continue
        _place(r.uri, data / f"{r.id}{_suffix(r.uri)}", copy)
        labels[str(r.id)] = int(r.label)
    doc = {"classes": [negative_name(concept), concept], "labels": labels}
    with atomic_output(out / "labels.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")

_TOP_FORMATS = ("csv", "parquet", "label-studio")


def export(
    ws: Any, concept: str, *, fmt: str, out: str | Path, include_pseudo: bool = True, copy: bool = False,
    top: int = 0, score_model: str | None = None, boxes_model: str | None = None, with_scores: bool = True,
    proxy: str = "logistic", url_prefix: str | None = None, encoder: str | None = None,
) -> ExportReport:
    """Write ``concept``'s mined set in format ``fmt`` (one of :data:`FORMATS`) to ``out``.

    ``out`` is a file for csv, parquet, label-studio and coco, and a folder for imagefolder and fiftyone.
    See the module docstring for each format's layout.
    """
    if fmt not in FORMATS:
        raise UnknownNameError("export format", fmt, FORMATS)
    if boxes_model is not None and fmt not in ("label-studio", "coco"):
        raise InputError(f"--boxes-model adds boxes, which only the label-studio and coco exports hold; the {fmt} "
                         "export has no place for them: leave it out")
    if url_prefix is not None and fmt != "label-studio":
        raise InputError(f"--url-prefix is for the label-studio export (the image URLs of its tasks), not {fmt}")
    from ..loop import PROXIES

    if proxy not in PROXIES:  # checked now, not only once the concept has both kinds of labels
        raise UnknownNameError("proxy", proxy, PROXIES)
    if top and fmt not in _TOP_FORMATS:
        # these layouts hold labelled items only (a class folder, a category id): an unlabelled row has no place
        raise InputError(f"--top adds unlabelled rows, which only the {', '.join(_TOP_FORMATS)} exports hold; "
                         f"the {fmt} export writes labelled items only: leave --top out, or export as csv")
    out = Path(out)
    if fmt in ("csv", "parquet", "label-studio", "coco") and out.is_dir():
        raise InputError(f"--out {out} is a folder; the {fmt} export writes one file")
    if fmt in ("imagefolder", "fiftyone") and out.suffix.lower() in (".json", ".csv", ".parquet", ".txt"):
        raise InputError(f"the {fmt} export writes a folder, and --out {out.name} names a file: give a folder name")
    want = {"csv": ".csv", "parquet": ".parquet", "label-studio": ".json", "coco": ".json"}.get(fmt)
    if want is not None and out.suffix and out.suffix.lower() != want:
        raise InputError(f"--out {out.name} does not fit --format {fmt}: its file should end in {want}")
    check_folder(out.parent, f"--out {out}")  # no file on the way; its folders are made once the rest is checked
    rows, model_version = collect_rows(
        ws, concept, include_pseudo=include_pseudo, top=top,
        score_model=score_model, with_scores=with_scores, proxy=proxy, encoder=encoder,
    )
    check_folder(out.parent, f"--out {out}", create=True)
    boxes: dict[int, list] = {}
    if fmt in ("label-studio", "coco"):
        bm = _boxes_model(ws.catalog, concept, boxes_model, score_model)
        if bm is not None:
            from .scores import read_boxes

            boxes = read_boxes(ws.catalog, concept, bm)
    extra: list[str] | None = None
    n_boxes = 0
    left_out = 0
    if fmt in ("coco", "imagefolder", "fiftyone"):
        n_text = sum(r.text is not None for r in rows)
        if n_text:
            raise InputError(f"{concept!r} has {n_text} text items; the {fmt} export is for images: use csv, "
                             "parquet or label-studio for texts")
        broken = [r for r in rows if r.status != "ok"]
        copies = ws.catalog.ok_copies([r.id for r in broken]) if broken else {}
        for r in broken:  # a moved or renamed file: its old item failed, the same bytes live on elsewhere
            if r.id in copies:
                r.uri, r.status = copies[r.id], "ok"
        broken = [r for r in broken if r.status != "ok"]
        if broken:  # a file that failed to read or decode would break the training job that reads the export
            import logging

            logging.getLogger(__name__).warning(
                "%d labelled items are left out of the %s export: their files failed (status error), e.g. item %d "
                "(%s); `assay status --errors` lists the reasons", len(broken), fmt, broken[0].id, broken[0].uri)
            rows = [r for r in rows if r.status == "ok"]
            left_out = len(broken)
    if fmt == "csv":
        _write_csv(rows, out)
    elif fmt == "parquet":
        _write_parquet(rows, out)
    elif fmt == "label-studio":
        extra = _write_label_studio(rows, out, concept, model_version, boxes, url_prefix)
        n_boxes = sum(len(boxes.get(r.id, [])) for r in rows if r.score is not None)
    elif fmt == "coco":
        n_boxes = _write_coco(rows, out, concept, boxes)
    elif fmt == "imagefolder":
        _write_imagefolder(rows, out, concept, copy)
    else:
        _write_fiftyone(rows, out, concept, copy)
    return ExportReport(
        format=fmt, out=str(out), rows=len(rows), positives=sum(r.label == 1 for r in rows),
        negatives=sum(r.label == 0 for r in rows), unlabelled=sum(r.label is None for r in rows),
        pseudo=sum(r.source == "pseudo" for r in rows), boxes=n_boxes, extra_files=extra, left_out=left_out,
    )
