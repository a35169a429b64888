"""`assay concept`, `assay mine`, `assay label`, `assay harvest`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import JsonOpt, WorkspaceOpt, _escape, console, errors_to_exit, open_workspace, out, print_json

concept_app = typer.Typer(help="Objects of interest: create and list concepts.", no_args_is_help=True)


def _resolve_exemplars(ws, encoder: str | None, values: list[str]) -> list[int]:
    """Item ids for exemplars given as ids, catalog URIs or image files (ingested and embedded if new)."""
    from ..embed import embed
    from ..errors import DecodeError, InputError, NotFoundError, as_item_id
    from ..ingest import ingest
    from ..media import decode_image, file_uri, read_bytes
    from ..search import build_index

    ids: list[int] = []
    new_files: list[str] = []
    for v in values:
        if not v.strip():
            raise InputError("an --exemplar must be an item id, a catalog URI or an image file, got an empty value")
        if v.strip().isdigit():
            ids.append(as_item_id(v, f"exemplar {v!r}"))
            continue
        found = ws.catalog.id_for_uri(v) or ws.catalog.id_for_uri(file_uri(v))
        if found is not None:
            ids.append(found)
        elif Path(v).exists():
            new_files.append(v)
        else:
            raise NotFoundError(f"exemplar {v!r} is neither an item id, a catalog URI nor an existing file")
    # Everything is checked before anything is ingested: the ids, the encoder, and one image file each.
    known = set(ws.catalog.get_ids_existing(ids)) if ids else set()
    missing = [i for i in ids if i not in known]
    if missing:
        raise NotFoundError(f"exemplar item ids not in the catalog: {missing[:10]}")
    name = encoder or ws.default_encoder
    if values and name.split(":", 1)[0] != "precomputed":
        from ..encoders.base import get_encoder

        modalities = get_encoder(name).modalities  # an unknown name is an UnknownNameError, listing the encoders
        if new_files and "image" not in modalities:
            raise InputError(f"encoder {name!r} embeds {' and '.join(sorted(modalities))} only, and exemplar "
                             f"{new_files[0]!r} is an image file: pass --encoder with an image encoder")
    for f in new_files:
        if not Path(f).is_file():
            raise InputError(f"exemplar {f!r} cannot be used: it is a folder or not a regular file; give one image "
                             "file per --exemplar")
        try:  # a full decode, as embedding will do: a truncated file would pass a header probe
            decode_image(read_bytes(file_uri(f)))
        except DecodeError as exc:
            raise InputError(f"exemplar {f!r} cannot be used: it is not an image assay can read ({exc})") from None
    if new_files:
        ingest(ws.catalog, new_files)
        ids.extend(i for i in (ws.catalog.id_for_uri(file_uri(f)) for f in new_files) if i is not None)
    # exemplars without an embedding yet (new files, or items ingested and not embedded): those alone, not the
    # whole pending corpus
    store = ws.vectors(name)
    have = store.contains(ids) if ids and store.exists() else [False] * len(ids)  # one look-up for all
    lacking = [i for i, h in zip(ids, have) if not h]
    rows = {r.id: r for r in ws.catalog.get_many(lacking)} if lacking else {}
    if lacking and name.split(":", 1)[0] != "precomputed" and all(i in rows and rows[i].status == "ok" for i in lacking):
        from ..vectors import StoreBusyError

        try:
            embed(ws, encoder, ids=lacking)
        except StoreBusyError:
            raise InputError("an `assay embed` is running on this workspace; the exemplars are ingested: run this "
                             "command again when it finishes (it embeds only the exemplars)") from None
        build_index(ws, encoder)
    from ..loop import check_exemplars

    return check_exemplars(ws, ids, encoder)


@concept_app.command("add")
def concept_add(
    name: Annotated[str, typer.Argument(help="Concept name, e.g. delivery-truck.")],
    workspace: WorkspaceOpt = None,
    text: Annotated[Optional[str], typer.Option("--text", help="A text query describing the concept.")] = None,
    exemplar: Annotated[Optional[list[str]], typer.Option("--exemplar", help="An example: item id, catalog URI or image file (repeatable). Exemplars are recorded as positive labels.")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder")] = None,
    json_: JsonOpt = False,
) -> None:
    """Create a concept from a text query and/or exemplar images."""
    with errors_to_exit():
        ws = open_workspace(workspace)
        from ..errors import InputError

        ws.catalog.check_concept_name(name)
        if any(c.name == name for c in ws.catalog.concepts()):  # before exemplar files are ingested
            raise InputError(f"concept {name!r} exists already")
        ex_ids = _resolve_exemplars(ws, encoder, exemplar or [])
        c = ws.catalog.add_concept(name, text=text, exemplars=ex_ids, exemplar_annotator="exemplar")
        if text is not None:
            from ..errors import AssayError
            from ..search import Searcher

            try:
                Searcher(ws, encoder).text_route()
            except InputError as exc:  # the text is kept (another encoder may use it), but it seeds nothing here
                console.print(f"[yellow]warning:[/] --text cannot seed this workspace's rounds: {_escape(str(exc))}"
                              + ("" if ex_ids else "; give --exemplar, or label a few items first, or the first "
                                 "round is random"), markup=True)
            except AssayError:  # no embeddings yet: nothing to say now
                pass
        if json_:
            print_json({"id": c.id, "name": c.name, "text": c.text, "exemplars": c.exemplars})
        else:
            out.print(f"concept {c.name!r} (id {c.id}): text={c.text!r}, {len(c.exemplars)} exemplar(s)")
            if not c.text and not c.exemplars:
                out.print("note: with neither --text nor --exemplar, the first `assay mine` round is a random batch "
                          "(or label some items first with `assay label`)")


@concept_app.command("list")
def concept_list(workspace: WorkspaceOpt = None, json_: JsonOpt = False) -> None:
    """List concepts with their label counts."""
    with errors_to_exit():
        ws = open_workspace(workspace)
        rows = []
        for c in ws.catalog.concepts():
            ids, vals = ws.catalog.current_labels(c.id)
            rows.append({"id": c.id, "name": c.name, "text": c.text, "exemplars": c.exemplars,
                         "labels": int(len(ids)), "positives": int((vals == 1).sum()),
                         "rounds": len(ws.catalog.rounds(c.id))})
        if json_:
            print_json({"concepts": rows})
            return
        for r in rows:
            out.print(f"{r['name']}: {r['labels']} labels ({r['positives']} positive), {r['rounds']} rounds; text={r['text']!r}")


def mine(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    workspace: WorkspaceOpt = None,
    strategy: Annotated[str, typer.Option("--strategy", help="e.g. seals:entropy, most-likely-positive, k-center, value.")] = "seals:entropy",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Items to propose.")] = 50,
    proxy: Annotated[str, typer.Option("--proxy", help="logistic | mlp | ensemble | svm")] = "logistic",
    seals_k: Annotated[int, typer.Option("--seals-k", min=1, help="Neighbours per labelled item in a SEALS pool.")] = 100,
    seals_k_positive: Annotated[Optional[int], typer.Option("--seals-k-positive", min=1, help="Neighbours per labelled positive in a SEALS pool (default: 4 x --seals-k; equal to it: the paper's pool).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="A parameter of the strategy, KEY=VALUE (repeatable): e.g. --strategy value --param a=1 --param b=0.5 --param c=2 weighs relevance, uncertainty and novelty.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder")] = None,
    keep_duplicates: Annotated[bool, typer.Option("--keep-duplicates")] = False,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Also write the batch as CSV (id, uri, score, prelabel) to label.")] = None,
    regions: Annotated[
        bool, typer.Option("--regions", help="Score each image by its best region (needs `assay embed --regions`); the batch gives the box.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Run one round: train the proxy, build the pool, score, select, and record the proposed batch."""
    from ..errors import InputError
    from ..loop import Miner

    with errors_to_exit():
        _check_out(out_file, (".csv",))
        ws = open_workspace(workspace)
        ws.catalog.concept(name)  # an unknown concept fails before --out's folder is made
        _make_out_folder(out_file)
        miner_cls = Miner
        if regions:
            from ..regions import RegionMiner

            miner_cls = RegionMiner
        from ..simulate import split_spec

        base, own_proxy = split_spec(strategy)  # "seals:entropy@mlp": the strategy names its own proxy
        if own_proxy is not None:
            if proxy not in ("logistic", own_proxy):
                raise InputError(f"--strategy {strategy} names the proxy {own_proxy!r} and --proxy says {proxy!r}; give one")
            strategy, proxy = base, own_proxy
        miner = miner_cls(ws, name, encoder=encoder)
        labelled_now, _ = ws.catalog.current_labels(miner.concept.id)
        unanswered = len(miner._pending(miner.concept.id, labelled_now))
        row, outcome = miner.propose(
            strategy=strategy, batch=batch, seed=seed, proxy=proxy, seals_k=seals_k, seals_k_positive=seals_k_positive,
            keep_duplicates=keep_duplicates, strategy_params=_strategy_params(param or []),
        )
        if unanswered and not json_:
            from ._common import console

            console.print(f"note: {unanswered} items proposed in the last 3 rounds are not labelled yet and were left "
                          "out of this pool (label them with `assay label`; they return after 3 rounds)")
        uris, texts = ws.catalog.uris(outcome.ids), ws.catalog.texts(outcome.ids)
        items = [
            {"id": int(i), "uri": uris.get(int(i), ""), **({"text": texts.get(int(i))} if texts else {}),
             "score": float(s),
             "prelabel": None if outcome.prelabels is None else float(outcome.prelabels[k]), "reason": outcome.reasons[k]}
            for k, (i, s) in enumerate(zip(outcome.ids, outcome.scores))
        ]
        if regions:
            from ..regions import region_proposals

            boxes = region_proposals(ws, row.id)
            for it in items:
                r = boxes.get(it["id"])
                it["box"] = None if r is None else r["box"]
        if out_file is not None:
            try:
                _write_batch_csv(out_file, items, regions=regions, concept=name, round_no=row.number)
            except OSError as exc:
                from ..errors import AssayError

                raise AssayError(
                    f"round {row.number} of {name!r} was recorded, but its batch file {out_file} could not be written "
                    f"({exc.strerror or exc}); once that is fixed, write it with "
                    f"`assay rounds {name} --round {row.number} --out {out_file}`") from None
        result = {"round": row.number, "round_id": row.id, "strategy": row.strategy, "cold_start": outcome.cold_start,
                  "pool_size": row.pool_size, "scanned_fraction": row.scanned_fraction, "proxy": row.proxy,
                  "seconds": row.seconds, "items": items}
        if json_:
            print_json(result)
            return
        out.print(
            f"round {row.number} of {name!r}: {len(items)} items by {row.strategy} from a pool of {row.pool_size} "
            f"({100 * (row.scanned_fraction or 0):.2f} % of the corpus scanned) in {row.seconds.get('total', 0):.2f} s"
        )
        for it in items[:20]:
            pre = "" if it["prelabel"] is None else f"  p={it['prelabel']:.3f}"
            out.print(f"{it['id']}  {it['uri']}{pre}  ({it['reason']})")
        if len(items) > 20:
            out.print(f"... {len(items) - 20} more" + (f"; all in {out_file}" if out_file else "; use --out FILE or --json"))
        if out_file is not None and items:
            out.print(f"next: fill the label column of {out_file} (1/0), then `assay label {name} --file {out_file}`")


def label(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    file: Annotated[Path, typer.Option("--file", help="CSV/JSONL/Parquet with id or uri, and label (1/0, yes/no, ...).")],
    workspace: WorkspaceOpt = None,
    annotator: Annotated[Optional[str], typer.Option("--annotator", help="Who gave these answers.")] = None,
    source: Annotated[str, typer.Option("--source", help="human | oracle | import")] = "human",
    json_: JsonOpt = False,
) -> None:
    """Record answers for a concept: every row checked first, then all written in one go."""
    from ..errors import InputError
    from ..loop import Miner, read_label_file

    with errors_to_exit("interrupted; a label file is recorded in one transaction: all of its labels were written or none (`assay concept list` shows the counts)"):
        if source not in ("human", "oracle", "import"):
            raise InputError(f"--source must be human, oracle or import, got {source!r}")
        ws = open_workspace(workspace)
        miner = Miner(ws, name)
        _ = miner.concept  # a missing concept fails before the file is read
        ids, vals = read_label_file(ws, file, miner.concept.name)
        n = miner.record_labels(ids, vals, source=source, annotator=annotator, skip_unchanged=True)
        lab, v = ws.catalog.current_labels(miner.concept.id)
        unchanged = len(set(int(i) for i in ids)) - n
        res = {"recorded": n, "unchanged": unchanged, "labels": int(len(lab)), "positives": int((v == 1).sum())}
        if json_:
            print_json(res)
        else:
            out.print(f"recorded {n} label{'' if n == 1 else 's'} for {name!r}"
                      + (f" ({unchanged} answers were already recorded as they are, and not written again)" if unchanged else "")
                      + f"; it now has {res['labels']} labelled items, {res['positives']} positive")


def harvest(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    workspace: WorkspaceOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many items to harvest.")] = 1000,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the mined set here (.csv or .parquet).")] = None,
    proxy: Annotated[str, typer.Option("--proxy")] = "logistic",
    min_score: Annotated[Optional[float], typer.Option("--min-score", min=0.0, max=1.0, help="Leave out items the model scores below this probability.")] = None,
    include_negatives: Annotated[bool, typer.Option("--include-negatives", help="Keep items labelled negative (left out by default: a person said no).")] = False,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Encoder whose embeddings to use (default: the workspace's).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Score the corpus with the final model (a maximum-inner-product search on the index) and write the mined set."""
    from ..loop import Miner

    with errors_to_exit():
        _check_out(out_file, (".csv", ".parquet", ""))
        ws = open_workspace(workspace)
        rows = Miner(ws, name, encoder=encoder).harvest(top=top, proxy=proxy, min_score=min_score, include_negatives=include_negatives)
        if out_file is not None:
            _make_out_folder(out_file)
            _write_rows(rows, out_file)
        if json_:
            print_json({"items": rows})
            return
        out.print(f"harvested {len(rows)} items for {name!r}" + (f" into {out_file}" if out_file else ""))
        for r in rows[:10]:
            out.print(f"{r['score']:.4f}  {r['id']}  {r['uri']}" + ("" if r["label"] is None else f"  (labelled {r['label']})"))
        if len(rows) > 10:
            out.print(f"... and {len(rows) - 10} more" + ("" if out_file else " (--out FILE or --json for all of them)"))


def _write_batch_csv(path: Path, items: list[dict], *, regions: bool, concept: str, round_no: int) -> None:
    """A proposed batch as the CSV to label: id, uri, score (the strategy's own, e.g. entropy), prelabel (the
    proxy's P(positive)), with ``regions`` the box that triggered the proposal, an empty ``label`` column to
    fill with 1/0 and give to `assay label`, and the ``concept`` and ``round`` it was proposed for (`assay
    label` refuses the file for another concept). Written to a temporary file and renamed: never half a file."""
    from .._atomic import atomic_output

    box_cols = ["x0", "y0", "x1", "y1"] if regions else []
    text_col = ["text"] if any("text" in it for it in items) else []  # text items: what to read and label
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "uri", *text_col, "score", "prelabel", *box_cols, "label", "concept",
                                          "round"])
        w.writeheader()
        for it in items:
            rec = {"id": it["id"], "uri": it["uri"], "score": it["score"], "prelabel": it["prelabel"], "label": "",
                   "concept": concept, "round": round_no}
            if text_col:
                rec["text"] = it.get("text") or ""
            if regions:
                rec.update(zip(box_cols, it.get("box") or [None] * 4))
            w.writerow(rec)


def rounds(
    name: Annotated[str, typer.Argument(help="Concept name.")],
    workspace: WorkspaceOpt = None,
    round_no: Annotated[Optional[int], typer.Option("--round", min=1, help="With --out or --json: this round (default: the latest).")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the round's batch as the CSV `assay mine --out` writes (e.g. again, after an interrupted `mine`).")] = None,
    json_: JsonOpt = False,
) -> None:
    """List a concept's rounds with their provenance and answers, or write one round's batch again."""
    from ..catalog import iso_utc
    from ..errors import NotFoundError

    with errors_to_exit():
        _check_out(out_file, (".csv",))
        ws = open_workspace(workspace)
        cat = ws.catalog
        concept = cat.concept(name)
        _make_out_folder(out_file)
        rows = cat.rounds(concept.id)
        label_ids, label_vals = cat.current_labels(concept.id)
        answer = dict(zip(label_ids.tolist(), label_vals.tolist()))
        if round_no is not None:
            chosen = [r for r in rows if r.number == round_no]
            if not chosen:
                have = f"rounds 1-{rows[-1].number}" if rows else "no rounds yet (run `assay mine`)"
                raise NotFoundError(f"concept {name!r} has no round {round_no}; it has {have}")
        elif out_file is not None:
            if not rows:
                raise NotFoundError(f"concept {name!r} has no rounds yet; run `assay mine {name}` first")
            chosen = rows[-1:]
        else:
            chosen = rows

        def summary(r) -> dict:
            props = cat.proposals(r.id)
            answered = [answer[p["item_id"]] for p in props if p["item_id"] in answer]
            return {"round": r.number, "round_id": r.id, "created_at": iso_utc(r.created_at), "strategy": r.strategy,
                    "batch": len(props), "answered": len(answered), "positives": int(sum(answered)),
                    "pool_size": r.pool_size, "scanned_fraction": r.scanned_fraction, "encoder": r.encoder,
                    "encoder_version": r.encoder_version, "proxy": r.proxy, "params": r.params,
                    "seconds": r.seconds}

        def batch_items(r) -> list[dict]:
            props = cat.proposals(r.id)
            uris, texts = cat.uris([p["item_id"] for p in props]), cat.texts([p["item_id"] for p in props])
            items = [{"id": int(p["item_id"]), "uri": uris.get(int(p["item_id"]), ""),
                      **({"text": texts.get(int(p["item_id"]))} if texts else {}), "score": p["score"],
                      "prelabel": p["prelabel"], "reason": p["reason"], "label": answer.get(int(p["item_id"]))}
                     for p in props]
            if (r.params or {}).get("regions"):
                from ..regions import region_proposals

                boxes = region_proposals(ws, r.id)
                for it in items:
                    b = boxes.get(it["id"])
                    it["box"] = None if b is None else b["box"]
            return items

        if out_file is not None:
            r = chosen[-1]
            items = batch_items(r)
            _write_batch_csv(out_file, items, regions=bool((r.params or {}).get("regions")), concept=concept.name,
                             round_no=r.number)
        if json_:
            if round_no is not None or out_file is not None:
                print_json({**summary(chosen[-1]), "items": batch_items(chosen[-1])})
            else:
                print_json({"concept": name, "rounds": [summary(r) for r in chosen]})
            return
        if out_file is not None:
            out.print(f"wrote round {chosen[-1].number} of {name!r} ({len(items)} items) to {out_file}")
            return
        if not chosen:
            out.print(f"concept {name!r} has no rounds yet; run `assay mine {name}`")
            return
        for r in chosen:
            d = summary(r)
            scanned = "" if d["scanned_fraction"] is None else f", {100 * d['scanned_fraction']:.2f} % scanned"
            out.print(f"round {d['round']}  {d['created_at'][:19]}  {d['strategy']}: {d['batch']} proposed, "
                      f"{d['answered']} answered ({d['positives']} positive), pool {d['pool_size']}{scanned}")


def _strategy_params(pairs: list[str]) -> dict[str, object] | None:
    """``["a=1", "form=multiplicative"]`` -> ``{"a": 1.0, "form": "multiplicative"}`` (numbers as numbers)."""
    from ..errors import InputError

    out: dict[str, object] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier() or not value:
            raise InputError(f"--param takes KEY=VALUE (e.g. a=0.5), got {p!r}")
        if key in out:
            raise InputError(f"--param {key} is given twice")
        try:
            out[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out or None


def _check_out(path: Path | None, suffixes: tuple[str, ...]) -> None:
    """Check ``--out`` before any work is done (a round is recorded before its file is written): the right
    suffix, not a folder, no file on the way to it. Its missing folders are made by :func:`_make_out_folder`
    once the rest of the command has been checked."""
    from ..errors import InputError, check_folder

    if path is None:
        return
    named = " or ".join(s for s in suffixes if s) or "a suffix"
    if path.is_dir():
        raise InputError(f"--out {path} is a folder; give a file name ending in {named}")
    if path.suffix.lower() not in suffixes:
        raise InputError(f"--out must end in {named}, got {path.name}")
    check_folder(path.absolute().parent, f"--out {path}")


def _make_out_folder(path: Path | None) -> None:
    """Make ``--out``'s missing folders, after the command's input was checked and before its work is
    recorded (so that writing the file cannot fail for a folder after a round was recorded)."""
    from ..errors import check_folder

    if path is not None:
        check_folder(path.absolute().parent, f"--out {path}", create=True)


def _write_rows(rows: list[dict], path: Path) -> None:
    from .._atomic import atomic_output
    from ..errors import InputError

    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_output(path) as tmp:
            if rows:
                pq.write_table(pa.Table.from_pylist(rows), tmp)
            else:  # no rows: still the columns, typed
                pq.write_table(pa.table({"id": pa.array([], pa.int64()), "uri": pa.array([], pa.string()),
                                         "concept": pa.array([], pa.string()), "score": pa.array([], pa.float64()),
                                         "label": pa.array([], pa.int8()), "method": pa.array([], pa.string())}), tmp)
    elif path.suffix.lower() in (".csv", ""):
        with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id", "uri", "concept", "score", "label", "method"])
            w.writeheader()
            w.writerows(rows)
    else:
        raise InputError(f"--out must end in .csv or .parquet, got {path.name}")


def register(app: typer.Typer) -> None:
    app.add_typer(concept_app, name="concept")
    app.command("mine")(mine)
    app.command("rounds")(rounds)
    app.command("label")(label)
    app.command("harvest")(harvest)
