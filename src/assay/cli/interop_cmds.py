"""`assay scores ...`, `assay pseudo-label`, `assay export`, `assay labels import|history|conflicts` (see
docs/interop.md and docs/labelling.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import JsonOpt, WorkspaceOpt, errors_to_exit, open_workspace, out, print_json

scores_app = typer.Typer(help="Model scores: import, tag with ImageNet classes, run a detector, use in the loop.",
                         no_args_is_help=True)
labels_app = typer.Typer(help="Labels: import them from other tools; show their history and conflicts.",
                         no_args_is_help=True)


@scores_app.command("import")
def scores_import(
    file: Annotated[Path, typer.Argument(help="CSV, Parquet or JSONL: id or uri, concept, score[, boxes].")],
    model: Annotated[str, typer.Option("--model", help="Name the scores are stored under.")],
    workspace: WorkspaceOpt = None,
    concept: Annotated[Optional[str], typer.Option("--concept", help="The concept of every row (else a concept column).")] = None,
    boxes: Annotated[str, typer.Option("--boxes", help="Units of the boxes column: normalized (0-1) or pixels.")] = "normalized",
    json_: JsonOpt = False,
) -> None:
    """Import per-item model scores, all or nothing (every row is checked first)."""
    from ..interop.scores import import_scores

    with errors_to_exit():
        ws = open_workspace(workspace)
        rep = import_scores(ws.catalog, file, model=model, concept=concept, box_units=boxes)
        if json_:
            print_json(rep.to_dict())
        else:
            per = ", ".join(f"{c}: {n}" for c, n in rep.concepts.items())
            out.print(f"imported {rep.rows} scores from {model!r} ({per}); {rep.with_boxes} rows with boxes")


@scores_app.command("tag")
def scores_tag(
    concept: Annotated[str, typer.Argument(help="Concept name the scores are stored under.")],
    imagenet_classes: Annotated[str, typer.Option("--imagenet-classes", help='ImageNet class names or indices, e.g. "ambulance,police van" or "151-268".')],
    workspace: WorkspaceOpt = None,
    model: Annotated[str, typer.Option("--model", help="Model name for the scores.")] = "imagenet-tagger",
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Store holding the ImageNet logits.")] = None,
    json_: JsonOpt = False,
) -> None:
    """The built-in weak tagger: score = the summed ImageNet probability of the concept's classes."""
    from ..interop.tagger import tag_concept

    with errors_to_exit():
        ws = open_workspace(workspace)
        rep = tag_concept(ws, concept, imagenet_classes, model=model, encoder=encoder)
        if json_:
            print_json(rep.to_dict())
        else:
            out.print(f"tagged {rep.items} items for {concept!r} as {model!r} from {', '.join(rep.class_names)}; "
                      f"{rep.above_half} score >= 0.5, mean {rep.mean_score:.4f}")


@scores_app.command("detect")
def scores_detect(
    onnx_model: Annotated[Path, typer.Option("--onnx", help="The detector's ONNX model file.")],
    adapter: Annotated[str, typer.Option("--adapter", help="module:Name or /path/adapter.py:Name (preprocess/postprocess).")],
    workspace: WorkspaceOpt = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model name for the scores (default: the file's stem).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference call.")] = 16,
    only_missing: Annotated[bool, typer.Option("--only-missing", help="Skip items this model scored already.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Run an ONNX detector plugin over the corpus and store its scores and boxes."""
    from ..interop.detector import OnnxDetector, run_detector

    with errors_to_exit():
        ws = open_workspace(workspace)
        rep = run_detector(ws, OnnxDetector(onnx_model, adapter, name=model), batch_size=batch, only_missing=only_missing)
        if json_:
            print_json(rep.to_dict())
        else:
            out.print(f"{rep.model}: {rep.items} items scored for {', '.join(rep.concepts)}, {rep.detections} detections, "
                      f"{rep.failed} failed, {rep.skipped} skipped, in {rep.seconds:.1f} s")


@scores_app.command("list")
def scores_list(
    workspace: WorkspaceOpt = None,
    concept: Annotated[Optional[str], typer.Option("--concept")] = None,
    json_: JsonOpt = False,
) -> None:
    """Models with stored scores, per concept."""
    from ..interop.scores import score_models

    with errors_to_exit():
        ws = open_workspace(workspace)
        rows = score_models(ws.catalog, concept)
        if json_:
            print_json({"models": rows})
            return
        if not rows:
            out.print(("no scores yet" + (f" for concept {concept!r}" if concept else "")) +
                      ": add some with `assay scores import FILE --model NAME`, `scores tag` or `scores detect`")
        for r in rows:
            out.print(f"{r['concept']}: {r['model']}  {r['items']} items, mean {r['mean_score']:.4f}, {r['with_boxes']} with boxes")


@scores_app.command("use")
def scores_use(
    concept: Annotated[str, typer.Argument(help="Concept name.")],
    workspace: WorkspaceOpt = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model whose scores the loop uses (default: the only one).")] = None,
    band: Annotated[tuple[float, float], typer.Option("--band", help="Medium-confidence band LOW HIGH: its items join the candidates.")] = (0.3, 0.7),
    max_candidates: Annotated[int, typer.Option("--max-candidates", min=0, help="Band items per round, most central first.")] = 1000,
    weight: Annotated[float, typer.Option("--weight", min=0.0, help="d: weight of the model term in the value strategy (0 = off).")] = 0.0,
    term: Annotated[str, typer.Option("--term", help="Model term: uncertainty (entropy of the score) or relevance (the score).")] = "uncertainty",
    off: Annotated[bool, typer.Option("--off", help="Stop using model scores for this concept.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Make `assay mine` use a model's scores for a concept: band candidates, and the value term."""
    from ..interop.scores import ModelScoreUse, resolve_model, set_score_use

    with errors_to_exit():
        ws = open_workspace(workspace)
        if off:
            set_score_use(ws.catalog, concept, None)
            res = {"concept": concept, "use": None}
        else:
            name = resolve_model(ws.catalog, concept, model)
            use = ModelScoreUse(model=name, band=band, max_candidates=max_candidates, weight=weight, term=term)
            set_score_use(ws.catalog, concept, use)
            res = {"concept": concept, "use": use.to_dict()}
        if json_:
            print_json(res)
        elif res["use"] is None:
            out.print(f"{concept!r} no longer uses model scores")
        else:
            u = res["use"]
            out.print(f"{concept!r} uses {u['model']!r}: band {u['band']} (up to {u['max_candidates']} candidates), "
                      f"value weight d={u['weight']} on its {u['term']}")


def pseudo_label_cmd(
    concept: Annotated[str, typer.Argument(help="Concept name.")],
    workspace: WorkspaceOpt = None,
    target_precision: Annotated[float, typer.Option("--target-precision", min=0.0, max=1.0, help="Precision the threshold is chosen for.")] = 0.95,
    proxy: Annotated[str, typer.Option("--proxy", help="logistic | mlp | ensemble | svm")] = "logistic",
    folds: Annotated[int, typer.Option("--folds", min=2, help="Folds for the out-of-fold estimate.")] = 5,
    max_items: Annotated[Optional[int], typer.Option("--max-items", min=1, help="Write at most this many.")] = None,
    min_support: Annotated[int, typer.Option("--min-support", min=1, help="Labelled items a threshold must keep.")] = 5,
    include_pseudo: Annotated[bool, typer.Option("--include-pseudo", help="Train on earlier pseudo-labels too.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report the threshold and counts; write nothing.")] = False,
    encoder: Annotated[Optional[str], typer.Option("--encoder")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_: JsonOpt = False,
) -> None:
    """Label the items the final model is sure about (source pseudo), at a threshold chosen for a target precision."""
    from ..interop.pseudo import pseudo_label

    with errors_to_exit():
        ws = open_workspace(workspace)
        rep = pseudo_label(ws, concept, target_precision=target_precision, proxy=proxy, folds=folds, encoder=encoder,
                           include_pseudo=include_pseudo, max_items=max_items, min_support=min_support,
                           dry_run=dry_run, seed=seed)
        if json_:
            print_json(rep.to_dict())
            return
        verb = "would write" if dry_run else "wrote"
        out.print(
            f"threshold {rep.threshold:.4f} for precision {rep.target_precision}: estimated precision "
            f"{rep.estimated_precision:.3f} (95 % lower bound {rep.precision_lower95:.3f}, {rep.support} labelled items "
            f"out-of-fold, recall {rep.estimated_recall:.3f}); {rep.above_threshold} items above it, "
            f"{rep.skipped_labelled} already labelled, {rep.already_pseudo} already pseudo; {verb} "
            f"{rep.written if not dry_run else rep.above_threshold - rep.skipped_labelled - rep.already_pseudo} pseudo-labels"
        )


def export_cmd(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    fmt: Annotated[str, typer.Option("--format", help="csv | parquet | label-studio | coco | imagefolder | fiftyone")],
    out_path: Annotated[Path, typer.Option("--out", help="Output file (csv, parquet, label-studio, coco) or folder.")],
    workspace: WorkspaceOpt = None,
    no_pseudo: Annotated[bool, typer.Option("--no-pseudo", help="Leave pseudo-labels out.")] = False,
    copy: Annotated[bool, typer.Option("--copy", help="imagefolder/fiftyone: copy images instead of symlinking.")] = False,
    top: Annotated[int, typer.Option("--top", min=0, help="Add the N best-scored unlabelled items (csv, parquet, label-studio only; an error for the other formats).")] = 0,
    score_model: Annotated[Optional[str], typer.Option("--score-model", help="Scores from this imported model instead of the proxy.")] = None,
    boxes_model: Annotated[Optional[str], typer.Option("--boxes-model", help="Boxes from this model (default: the one model with boxes; with several, name one).")] = None,
    no_scores: Annotated[bool, typer.Option("--no-scores", help="Do not train a proxy for the score column.")] = False,
    proxy: Annotated[str, typer.Option("--proxy")] = "logistic",
    url_prefix: Annotated[Optional[str], typer.Option("--url-prefix", help="label-studio: data.image = PREFIX + local path (e.g. /data/local-files/?d=).")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Encoder whose embeddings score the rows (default: the workspace's).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Export a concept's mined set for a labelling team or a training job."""
    from ..interop.exports import export

    with errors_to_exit():
        ws = open_workspace(workspace)
        rep = export(ws, name, fmt=fmt, out=out_path, include_pseudo=not no_pseudo, copy=copy, top=top,
                     score_model=score_model, boxes_model=boxes_model, with_scores=not no_scores, proxy=proxy,
                     url_prefix=url_prefix, encoder=encoder)
        if json_:
            print_json(rep.to_dict())
        else:
            out.print(f"exported {rep.rows} rows of {name!r} as {fmt} to {rep.out}: {rep.positives} positive, "
                      f"{rep.negatives} negative, {rep.unlabelled} unlabelled, {rep.pseudo} pseudo, {rep.boxes} boxes"
                      + (f"; also {', '.join(rep.extra_files)}" if rep.extra_files else ""))


@labels_app.command("import")
def labels_import(
    file: Annotated[Path, typer.Argument(help="Labels file (or folder for imagefolder / fiftyone).")],
    fmt: Annotated[str, typer.Option("--format", help="csv | label-studio | coco | imagefolder | fiftyone")] = "csv",
    workspace: WorkspaceOpt = None,
    concept: Annotated[Optional[str], typer.Option("--concept", help="Concept of every label (else from the file).")] = None,
    annotator: Annotated[Optional[str], typer.Option("--annotator", help="Who gave these labels.")] = None,
    url_prefix: Annotated[Optional[str], typer.Option("--url-prefix", help="label-studio: prefix to strip from data.image.")] = None,
    create_concept: Annotated[bool, typer.Option("--create-concept", help="Create concepts that do not exist yet.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Import existing labels (source import), all or nothing: every entry is checked before any is written."""
    from ..interop.imports import import_labels

    with errors_to_exit():
        ws = open_workspace(workspace)
        rep = import_labels(ws, file, fmt=fmt, concept=concept, annotator=annotator, url_prefix=url_prefix,
                            create_concepts=create_concept)
        if json_:
            print_json(rep.to_dict())
        else:
            per = ", ".join(f"{c}: {n}" for c, n in rep.concepts.items())
            out.print(f"imported {rep.written} labels ({per}; {rep.positives} positive, {rep.pseudo} pseudo); "
                      f"{rep.skipped} entries without a label skipped"
                      + (f"; {rep.unchanged} already recorded as they are, not written again" if rep.unchanged else ""))


@labels_app.command("history")
def labels_history(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    workspace: WorkspaceOpt = None,
    item: Annotated[Optional[int], typer.Option("--item", min=0, help="Only this item's labels.")] = None,
    last: Annotated[int, typer.Option("--last", min=0, help="Only the N most recent rows (0 = all).")] = 0,
    json_: JsonOpt = False,
) -> None:
    """Every label row of a concept, oldest first: who said what, when, from which source and round
    (relabels and pseudo-labels included; the latest non-pseudo row of an item is its label)."""
    from ..catalog import iso_utc

    with errors_to_exit():
        ws = open_workspace(workspace)
        cat = ws.catalog
        c = cat.concept(name)
        if item is not None and not cat.get_ids_existing([item]):
            from ..errors import NotFoundError

            raise NotFoundError(f"item {item} is not in the catalog")
        rows = cat.label_history(c.id, item)
        if last:
            rows = rows[-last:]
        number = {r.id: r.number for r in cat.rounds(c.id)}
        uris = cat.uris(sorted({int(r["item_id"]) for r in rows}))
        view = [{"row": int(r["id"]), "at": iso_utc(r["created_at"]), "item_id": int(r["item_id"]),
                 "uri": uris.get(int(r["item_id"])), "label": int(r["value"]), "source": r["source"],
                 "annotator": r["annotator"], "round": number.get(r["round_id"])} for r in rows]
        if json_:
            print_json({"concept": c.name, "item_id": item, "count": len(view), "labels": view})
            return
        if not view:
            out.print(f"no labels for {c.name!r}" + (f" on item {item}" if item is not None else ""))
            return
        for v in view:
            rnd = f"round {v['round']}" if v["round"] is not None else "no round"
            out.print(f"{v['at'][:19]}  item {v['item_id']}  {'yes' if v['label'] else 'no '}  {v['source']:<6}  "
                      f"{v['annotator'] or '-'}  {rnd}  {v['uri'] or ''}")


@labels_app.command("conflicts")
def labels_conflicts(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    workspace: WorkspaceOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Items whose annotators' latest answers differ (pseudo-labels are not answers), with each annotator's
    answer; the latest answer is the item's label until someone settles it with a new one."""
    from ..catalog import iso_utc

    with errors_to_exit():
        ws = open_workspace(workspace)
        cat = ws.catalog
        c = cat.concept(name)
        found = cat.label_conflicts(c.id)
        uris = cat.uris([x["item_id"] for x in found])
        view = [{"item_id": x["item_id"], "uri": uris.get(x["item_id"]), "current": x["current"],
                 "answers": [{"annotator": a["annotator"], "value": a["value"], "source": a["source"],
                              "at": iso_utc(a["at"])} for a in x["answers"]]} for x in found]
        if json_:
            print_json({"concept": c.name, "count": len(view), "conflicts": view})
            return
        if not view:
            out.print(f"no conflicts for {c.name!r}: no two annotators' latest answers differ")
            return
        out.print(f"{len(view)} item(s) of {c.name!r} where annotators disagree:")
        for v in view:
            said = ", ".join(f"{a['annotator']}: {'yes' if a['value'] else 'no'}" for a in v["answers"])
            out.print(f"  item {v['item_id']}  now {'yes' if v['current'] else 'no'}  ({said})  {v['uri'] or ''}")


def register(app: typer.Typer) -> None:
    """Add ``scores``, ``labels``, ``pseudo-label`` and ``export`` to the ``assay`` app."""
    app.add_typer(scores_app, name="scores")
    app.add_typer(labels_app, name="labels")
    app.command("pseudo-label")(pseudo_label_cmd)
    app.command("export")(export_cmd)
