"""Label imports: existing labels from CSV (or Parquet / JSONL), Label Studio, COCO, ImageFolder, FiftyOne.

Every entry of the file is parsed and checked before anything is written: an item that is not in the
corpus, a label that is not a yes/no, a Label Studio task from another project (an image URI this corpus
does not hold, or a labelling config whose results are not assay's ``choices``) raises
:class:`~assay.errors.InputError` naming the row or task, and nothing is imported. Labels are written
through ``Catalog.add_labels`` with source ``import`` (rows that an assay export marked ``pseudo`` stay
``pseudo``), appended to the history like every label.

Formats (:data:`IMPORT_FORMATS`)
    ``csv``          columns ``id`` or ``uri``, ``label`` (1/0, yes/no, true/false, positive/negative), optional
                     ``concept``, ``annotator``, ``source``; rows with an empty label are skipped. ``.parquet``
                     and ``.jsonl`` files are read the same way.
    ``label-studio`` a Label Studio JSON export (a list of tasks): ``data.image`` is mapped back to an item by
                     URI (after removing ``url_prefix``; assay's own exports also carry ``data.assay_uri``);
                     the latest annotation that was not cancelled gives the label through its ``choices``
                     result: ``<concept>`` is positive, ``not-<concept>`` (or ``not <concept>``, or any yes/no
                     word) negative. Tasks without an annotation are skipped.
    ``coco``         a COCO JSON: an image is positive when it has an annotation of the concept's category,
                     negative otherwise; images map to items by ``coco_url``, else ``file_name``.
    ``imagefolder``  ``<root>/<concept>/`` positives and ``<root>/not-<concept>/`` negatives; files named
                     ``<id>.<ext>`` (as assay exports them) or links to a corpus file.
    ``fiftyone``     ``labels.json`` of a FiftyOneImageClassificationDataset (``data/<id>.<ext>``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, NotFoundError, RowProblems, UnknownNameError, as_item_id
from .exports import negative_name, safe_name

__all__ = ["IMPORT_FORMATS", "ImportReport", "LabelEntry", "parse_labels", "import_labels"]

IMPORT_FORMATS = ("csv", "label-studio", "coco", "imagefolder", "fiftyone")

log = logging.getLogger(__name__)
_LABEL_COLS = ("id", "uri", "label", "concept", "annotator", "source")


@dataclass
class LabelEntry:
    """One parsed label, before it is written."""

    concept: str
    item_id: int
    value: int
    annotator: str | None
    source: str  # "import" or "pseudo"
    where: str  # "row 3", "task 7 (id 41)" ...


@dataclass
class ImportReport:
    format: str
    file: str
    written: int
    concepts: dict[str, int] = field(default_factory=dict)
    positives: int = 0
    skipped: int = 0
    pseudo: int = 0
    created_concepts: list[str] = field(default_factory=list)
    unchanged: int = 0  # entries equal to the latest label from the same source and annotator: not written again

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uri_ids(cat: Any, uris: Sequence[str]) -> dict[str, int]:
    from .scores import _uri_map

    return {u: v[0] for u, v in _uri_map(cat, list(uris)).items()} if uris else {}


def _candidates_for(uri: str, base: Path | None = None) -> list[str]:
    """Forms under which a path may be in the catalog: as given, and as an absolute path. A relative path is
    tried against ``base`` first (the folder of the file that names it, as for manifests), then against the
    working directory."""
    from ..media import file_uri, is_local, local_path

    out = [uri]
    if is_local(uri):
        p = local_path(uri)
        if base is not None and "://" not in uri and not Path(p).is_absolute():
            out.append(file_uri(Path(base) / p))
        out += [p, file_uri(p), str(Path(p).absolute())]  # normalised, and as older versions recorded it
    return list(dict.fromkeys(out))


def _resolve_uris(cat: Any, uris: Sequence[str], base: Path | None = None) -> dict[str, int]:
    forms = {u: _candidates_for(u, base) for u in uris}
    found = _uri_ids(cat, [f for fs in forms.values() for f in fs])
    out: dict[str, int] = {}
    for u, fs in forms.items():
        for f in fs:
            if f in found:
                out[u] = found[f]
                break
    return out


# ---------------------------------------------------------------------------------------------- csv
def _parse_csv(ws: Any, path: Path, concept: str | None, annotator: str | None,
               problems: RowProblems) -> tuple[list[LabelEntry], int]:
    """The rows of a CSV / JSONL / Parquet labels file; a bad row is added to ``problems`` and left out."""
    from .scores import column_hint, concept_of_row, read_score_records

    records = read_score_records(path)
    if not records:
        raise InputError(f"{path} holds no label rows")
    cols = set().union(*(r.keys() for r in records))  # every row's keys: JSONL rows need not all have each
    if "label" not in cols:
        raise InputError(f"{path} has no 'label' column; columns are {sorted(cols)}{column_hint(cols, _LABEL_COLS)}")
    if not ({"id", "uri"} & cols):
        raise InputError(f"{path} needs an 'id' or a 'uri' column; columns are {sorted(cols)}{column_hint(cols, _LABEL_COLS)}")
    if concept is None and "concept" not in cols:
        raise InputError(f"{path} has no 'concept' column; add one or pass --concept{column_hint(cols, _LABEL_COLS)}")
    cat = ws.catalog
    uris = [str(r["uri"]) for r in records if r.get("id") in (None, "") and r.get("uri") not in (None, "")]
    uri_ids = _resolve_uris(cat, uris, base=path.parent)
    from ..loop import parse_label_value

    entries: list[LabelEntry] = []
    skipped = 0
    for n, rec in enumerate(records, 1):
        where = f"{path.name} row {n}"
        if str(rec.get("label") if rec.get("label") is not None else "").strip() == "":
            skipped += 1
            continue
        with problems.row(where):
            value = parse_label_value(rec.get("label"))
            raw_id = rec.get("id")
            if raw_id not in (None, ""):
                item_id = as_item_id(raw_id, "id")
            else:
                uri = rec.get("uri")
                if uri in (None, ""):
                    raise InputError("neither id nor uri is given")
                if str(uri) not in uri_ids:
                    raise InputError(f"uri {uri!r} is not in the catalog")
                item_id = uri_ids[str(uri)]
            c = concept_of_row(rec, concept)
            src = "pseudo" if str(rec.get("source") or "").strip() == "pseudo" else "import"
            who = annotator or (str(rec["annotator"]).strip() if rec.get("annotator") not in (None, "") else None)
            entries.append(LabelEntry(c, item_id, value, who, src, where))
    return entries, skipped


# ---------------------------------------------------------------------------------------------- label studio
def _ls_choice_value(choice: str, concept: str | None, known: set[str], where: str) -> tuple[str, int]:
    ch = str(choice).strip()
    if concept is not None:
        if ch == concept:
            return concept, 1
        if ch in (negative_name(concept), f"not {concept}"):
            return concept, 0
        try:
            from ..loop import parse_label_value

            return concept, parse_label_value(ch)
        except InputError:
            raise InputError(
                f"{where}: choice {ch!r} is neither {concept!r} nor {negative_name(concept)!r} (nor a yes/no); "
                "the export comes from a project with another label config"
            ) from None
    if ch in known:
        return ch, 1
    for prefix in ("not-", "not "):
        if ch.startswith(prefix) and ch[len(prefix):] in known:
            return ch[len(prefix):], 0
    raise InputError(
        f"{where}: choice {ch!r} names no concept of this workspace (known: {sorted(known)}); "
        "pass --concept, or this export comes from another project"
    )


def _ls_annotator(ann: dict[str, Any]) -> str | None:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return None if who in (None, "") else f"label-studio:{who}"


def _read_json(path: Path) -> Any:
    """A JSON file's content; a folder, a file that is not UTF-8 or not JSON is an InputError naming it."""
    if path.is_dir():
        raise InputError(f"{path} is a folder; expected a JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not JSON: {exc}") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def _parse_label_studio(
    ws: Any, path: Path, concept: str | None, annotator: str | None, url_prefix: str | None,
) -> tuple[list[LabelEntry], int]:
    tasks = _read_json(path)
    if isinstance(tasks, dict) and isinstance(tasks.get("tasks"), list):
        tasks = tasks["tasks"]
    if not isinstance(tasks, list):
        raise InputError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    cat = ws.catalog
    known = {c.name for c in cat.concepts()}

    def image_of(task: Any, where: str) -> list[str]:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InputError(f"{where}: a task needs a 'data' object; is this a Label Studio JSON export?")
        data = task["data"]
        img = data.get("image")
        if not isinstance(img, str) or not img:
            if isinstance(data.get("assay_uri"), str) and data["assay_uri"]:
                return [data["assay_uri"]]  # a text task (or any task) exported by assay names its item
            raise InputError(
                f"{where}: the task has no data.image and no data.assay_uri (data keys: {sorted(data)}); "
                "assay imports image tasks, and text tasks that assay exported"
            )
        forms = [img[len(url_prefix):] if url_prefix and img.startswith(url_prefix) else img]
        if url_prefix and img.startswith(url_prefix):
            from urllib.parse import unquote

            forms.append("/" + forms[0])
            forms += [unquote(forms[0]), "/" + unquote(forms[0])]  # as assay exports it: percent-encoded
        if isinstance(data.get("assay_uri"), str):
            forms.append(data["assay_uri"])
        return forms

    wheres = []
    all_forms: list[str] = []
    for n, task in enumerate(tasks, 1):
        tid = task.get("id") if isinstance(task, dict) else None
        where = f"{path.name} task {n}" + (f" (id {tid})" if tid is not None else "")
        wheres.append(where)
        all_forms.extend(image_of(task, where))
    uri_ids = _resolve_uris(cat, all_forms)
    entries: list[LabelEntry] = []
    skipped = 0
    for task, where in zip(tasks, wheres):
        forms = image_of(task, where)
        item_id = next((uri_ids[f] for f in forms if f in uri_ids), None)
        if item_id is None:
            img = task["data"].get("image")
            shown = f"image {img!r}" if img else f"item {task['data'].get('assay_uri')!r}"
            raise InputError(
                f"{where}: {shown} is not in this corpus; "
                "is this an export from another project (or does it need --url-prefix)?"
            )
        anns = task.get("annotations") or task.get("completions") or []
        if not isinstance(anns, list):
            raise InputError(f"{where}: 'annotations' must be a list, got {type(anns).__name__}")
        live = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
        if not live:
            skipped += 1
            continue
        ann = max(enumerate(live), key=lambda ka: (str(ka[1].get("updated_at") or ka[1].get("created_at") or ""), ka[0]))[1]
        result = ann.get("result")
        if not isinstance(result, list):
            raise InputError(f"{where}: an annotation's 'result' must be a list")
        if not result:
            skipped += 1
            continue
        choices = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"]
        if not choices:
            types = sorted({str(r.get("type")) for r in result if isinstance(r, dict)})
            raise InputError(
                f"{where}: the annotation has no 'choices' result (result types: {types}); "
                "the export comes from a project with another label config"
            )
        value_obj = choices[0].get("value")
        if not isinstance(value_obj, dict):
            raise InputError(f"{where}: a choices result's 'value' must be an object with 'choices', got {value_obj!r}")
        vals = value_obj.get("choices") or []
        if not isinstance(vals, list) or len(vals) != 1:
            raise InputError(f"{where}: expected exactly one choice, got {vals!r}")
        c, value = _ls_choice_value(vals[0], concept, known, where)
        entries.append(LabelEntry(c, item_id, value, annotator or _ls_annotator(ann), "import", where))
    return entries, skipped


# ---------------------------------------------------------------------------------------------- coco
def _parse_coco(ws: Any, path: Path, concept: str | None, annotator: str | None) -> tuple[list[LabelEntry], int]:
    doc = _read_json(path)
    for key in ("images", "categories", "annotations"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise InputError(f"{path}: a COCO file needs a list '{key}'")
    def _id(v: Any, where: str) -> int:  # COCO ids are integers; "1" and 1 must not silently differ
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{path.name} {where}: expected an integer id, got {v!r}")
        return v

    cats: dict[str, int] = {}
    for n, c in enumerate(doc["categories"], 1):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise InputError(f"{path.name} category {n}: expected an object with a 'name'")
        if c["name"] in cats:
            raise InputError(f"{path.name}: category name {c['name']!r} appears twice")
        cats[c["name"]] = _id(c.get("id"), f"category {n}")
    if concept is None:
        if len(cats) != 1:
            raise InputError(f"{path} has categories {sorted(map(str, cats))}; pass --concept to pick one")
        concept = str(next(iter(cats)))
    if concept not in cats:
        raise InputError(f"{path} has no category {concept!r}; categories: {sorted(map(str, cats))}")
    cid = cats[concept]
    image_ids: set[int] = set()
    forms_of = {}
    for n, im in enumerate(doc["images"], 1):
        if not isinstance(im, dict):
            raise InputError(f"{path.name} image {n}: expected an object")
        i = _id(im.get("id"), f"image {n}")
        if i in image_ids:
            raise InputError(f"{path.name} image {n}: image id {i} appears twice")
        image_ids.add(i)
        forms_of[n] = [f for f in (im.get("coco_url"), im.get("file_name")) if isinstance(f, str) and f]
    positive: set[int] = set()
    for n, a in enumerate(doc["annotations"], 1):
        if not isinstance(a, dict):
            raise InputError(f"{path.name} annotation {n}: expected an object")
        img, cat_id = _id(a.get("image_id"), f"annotation {n} image_id"), _id(a.get("category_id"), f"annotation {n} category_id")
        if img not in image_ids:
            raise InputError(f"{path.name} annotation {n}: image_id {img} is not among the file's images")
        if cat_id not in cats.values():
            raise InputError(f"{path.name} annotation {n}: category_id {cat_id} is not among the file's categories")
        if cat_id == cid:
            positive.add(img)
    uri_ids = _resolve_uris(ws.catalog, [f for fs in forms_of.values() for f in fs])
    entries = []
    for n, im in enumerate(doc["images"], 1):
        where = f"{path.name} image {n} (id {im.get('id')})"
        item_id = next((uri_ids[f] for f in forms_of[n] if f in uri_ids), None)
        if item_id is None:
            raise InputError(f"{where}: {im.get('coco_url') or im.get('file_name')!r} is not in this corpus")
        src = "pseudo" if im.get("assay_source") == "pseudo" else "import"
        entries.append(LabelEntry(concept, item_id, int(im.get("id") in positive), annotator, src, where))
    return entries, 0


# ---------------------------------------------------------------------------------------------- folders
def _file_item(ws: Any, f: Path, where: str) -> int:
    """The item a file stands for: the corpus file it is (or links to); else, for a copy named ``<id>.<ext>``
    by an export, that item, but only when the file's bytes are the item's (a folder of ordinary files named
    ``000123.jpg`` must not be taken for items 123)."""
    target = f.resolve() if f.is_symlink() else f.absolute()
    found = _resolve_uris(ws.catalog, [str(target), os.path.abspath(f), str(f.absolute())])
    if found:
        return next(iter(found.values()))
    if f.stem.isdigit():
        import hashlib

        from ..errors import NotFoundError

        try:
            item = ws.catalog.get(int(f.stem))
        except NotFoundError:
            item = None
        if item is not None and item.sha256 and hashlib.sha256(f.read_bytes()).hexdigest() == item.sha256:
            return item.id
        raise InputError(
            f"{where}: {f.name} is not a corpus file, and its bytes are not those of item {int(f.stem)}"
        )
    if f.is_file():  # a copy under another name (FiftyOne's default export copies media): match its bytes
        import hashlib

        import sqlalchemy as sa

        from ..catalog import items_table

        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        t = items_table
        with ws.catalog.engine.connect() as conn:
            hit = conn.execute(sa.select(t.c.id).where(t.c.sha256 == digest).order_by(t.c.id).limit(1)).first()
        if hit is not None:
            return int(hit[0])
    raise InputError(f"{where}: {f.name} is neither named by an item id, a corpus file, nor a copy of one")


def _folder_concept(names: list[str], concept: str | None, known: set[str], where: str) -> tuple[str, dict[str, int]]:
    candidates = [concept] if concept is not None else sorted(known)
    for c in candidates:
        mapping = {safe_name(c): 1, safe_name(negative_name(c)): 0}
        if names and all(n in mapping for n in names):
            return c, mapping
    raise InputError(
        f"{where}: class folders {names} are not <concept> and not-<concept>"
        + (f" for --concept {concept!r}" if concept else "; pass --concept")
    )


def _parse_imagefolder(ws: Any, root: Path, concept: str | None, annotator: str | None) -> tuple[list[LabelEntry], int]:
    if not root.is_dir():
        raise InputError(f"an imagefolder import needs a folder, got {root}")
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))  # .ipynb_checkpoints
    c, mapping = _folder_concept(dirs, concept, {x.name for x in ws.catalog.concepts()}, str(root))
    entries = []
    for d in dirs:
        for f in sorted(p for p in (root / d).iterdir() if not p.name.startswith(".")):
            where = f"{d}/{f.name}"
            entries.append(LabelEntry(c, _file_item(ws, f, where), mapping[d], annotator, "import", where))
    return entries, 0


def _parse_fiftyone(ws: Any, root: Path, concept: str | None, annotator: str | None) -> tuple[list[LabelEntry], int]:
    labels_path = root / "labels.json" if root.is_dir() else root
    if not labels_path.exists():
        raise NotFoundError(f"no labels.json in {root}")
    base = labels_path.parent
    doc = _read_json(labels_path)
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), dict):
        raise InputError(f"{labels_path}: expected {{'classes': [...], 'labels': {{uuid: target}}}}")
    classes = doc.get("classes")
    if isinstance(classes, list):
        names = sorted({safe_name(str(x)) for x in classes})
    else:  # FiftyOne writes "classes": null by default, with the class names as the targets
        targets = [t.get("label") if isinstance(t, dict) else t for t in doc["labels"].values()]
        names = sorted({safe_name(t) for t in targets if isinstance(t, str)})
    c, mapping = _folder_concept(names, concept, {x.name for x in ws.catalog.concepts()}, str(labels_path))
    files = {p.stem: p for p in (base / "data").iterdir()} if (base / "data").is_dir() else {}
    entries, skipped = [], 0
    for key, target in doc["labels"].items():
        where = f"labels.json entry {key!r}"
        if isinstance(target, dict):
            target = target.get("label")
        if target is None:
            skipped += 1
            continue
        if isinstance(target, int) and isinstance(classes, list):
            if not 0 <= target < len(classes):
                raise InputError(f"{where}: class index {target} is outside the {len(classes)} classes")
            target = classes[target]
        name = safe_name(str(target))
        if name not in mapping:
            raise InputError(f"{where}: class {target!r} is not {c!r} or {negative_name(c)!r}")
        f = files.get(key)
        item_id = _file_item(ws, f, where) if f is not None else (int(key) if str(key).isdigit() else None)
        if item_id is None:
            raise InputError(f"{where}: no data/{key}.* file and the key is not an item id")
        entries.append(LabelEntry(c, item_id, mapping[name], annotator, "import", where))
    return entries, skipped


# ---------------------------------------------------------------------------------------------- entry points
def parse_labels(
    ws: Any, path: str | Path, *, fmt: str = "csv", concept: str | None = None, annotator: str | None = None,
    url_prefix: str | None = None,
) -> tuple[list[LabelEntry], int]:
    """Parse and check a labels file; return ``(entries, skipped)`` without writing anything."""
    if fmt not in IMPORT_FORMATS:
        raise UnknownNameError("import format", fmt, IMPORT_FORMATS)
    p = Path(path)
    if not p.exists():
        raise NotFoundError(f"labels file not found: {p}")
    problems = RowProblems(None, header=p.name)  # every bad row is reported, not only the first
    if fmt == "csv":
        entries, skipped = _parse_csv(ws, p, concept, annotator, problems)
    elif fmt == "label-studio":
        entries, skipped = _parse_label_studio(ws, p, concept, annotator, url_prefix)
    elif fmt == "coco":
        entries, skipped = _parse_coco(ws, p, concept, annotator)
    elif fmt == "imagefolder":
        entries, skipped = _parse_imagefolder(ws, p, concept, annotator)
    else:
        entries, skipped = _parse_fiftyone(ws, p, concept, annotator)
    known = set(ws.catalog.get_ids_existing(sorted({e.item_id for e in entries})))
    for e in entries:
        if e.item_id not in known:
            problems.add(f"{e.where}: item id {e.item_id} is not in the catalog")
    seen: dict[tuple[str, int], LabelEntry] = {}
    unique: list[LabelEntry] = []
    for e in entries:
        key = (e.concept, e.item_id)
        first = seen.get(key)
        if first is None:
            seen[key] = e
            unique.append(e)
        elif (first.value, first.annotator, first.source) != (e.value, e.annotator, e.source):
            problems.add(f"{e.where}: item {e.item_id} is labelled for {e.concept!r} again, differently "
                         f"(first in {first.where}); keep one")
    problems.raise_if_any()
    if len(unique) < len(entries):  # the same answer twice (a file concatenated with itself): recorded once
        log.warning("%s: %d entries repeat an item's label exactly; each is recorded once", p, len(entries) - len(unique))
    return unique, skipped


def import_labels(
    ws: Any, path: str | Path, *, fmt: str = "csv", concept: str | None = None, annotator: str | None = None,
    url_prefix: str | None = None, create_concepts: bool = False,
) -> ImportReport:
    """Import labels from ``path`` (see the module docstring): everything is checked first, then written.

    Concepts must exist unless ``create_concepts`` (then missing ones are created, without a text query).
    """
    entries, skipped = parse_labels(ws, path, fmt=fmt, concept=concept, annotator=annotator, url_prefix=url_prefix)
    if not entries:
        raise InputError(f"{path} holds no labels to import ({skipped} entries without a label)")
    cat = ws.catalog
    names = sorted({e.concept for e in entries})
    known = {c.name for c in cat.concepts()}
    missing = [n for n in names if n not in known]
    if missing and not create_concepts:
        raise NotFoundError(f"no concept named {missing[0]!r}; create it with `assay concept add` or pass --create-concept")
    for n in missing:  # every name checked before any is created
        cat.check_concept_name(n)
    long_names = sorted({e.annotator for e in entries if e.annotator is not None and len(e.annotator) > 200})
    if long_names:
        raise InputError(f"annotator names are at most 200 characters; {len(long_names)} are longer, e.g. "
                         f"{long_names[0][:40]!r}...")
    for n in missing:
        cat.add_concept(n)
    groups: dict[tuple[str, str, str | None], list[LabelEntry]] = {}
    for e in entries:
        groups.setdefault((e.concept, e.source, e.annotator), []).append(e)
    per: dict[str, int] = {}
    batches = []
    unchanged = 0
    for (cname, src, who), es in groups.items():
        c = cat.concept(cname)
        # an answer equal to the latest one from the same source and annotator is not written again: importing
        # a file twice adds nothing, and a changed answer is a new row (the history keeps every change)
        # an imported answer repeats what this annotator already said, whichever way it came in (re-importing
        # an assay export of human answers adds nothing); pseudo-labels compare with pseudo-labels
        latest = cat.latest_values(c.id, source=("human", "oracle", "import") if src == "import" else src,
                                   annotator=who)
        new = [e for e in es if latest.get(int(e.item_id)) != int(e.value)]
        unchanged += len(es) - len(new)
        if new:
            batches.append((c.id, np.asarray([e.item_id for e in new], dtype=np.int64),
                            np.asarray([e.value for e in new], dtype=np.int64), src, who, None))
        per[cname] = per.get(cname, 0) + len(new)
    written = cat.add_label_batches(batches) if batches else 0  # one transaction: the whole file or nothing
    return ImportReport(
        format=fmt, file=str(path), written=written, concepts=per, positives=sum(e.value == 1 for e in entries),
        skipped=skipped, pseudo=sum(e.source == "pseudo" for e in entries), created_concepts=missing,
        unchanged=unchanged,
    )
