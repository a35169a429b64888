"""`assay init`, `assay ingest`, `assay embed`, `assay status`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import JsonOpt, WorkspaceOpt, console, errors_to_exit, open_workspace, out, print_json, printable, progress_bar


def init(
    directory: Annotated[Optional[str], typer.Argument(help="Folder for the new workspace (created if missing); or give it as `assay -w DIR init`.", show_default=False)] = None,
    catalog: Annotated[
        Optional[str], typer.Option("--catalog", help="Catalog database URL, e.g. postgresql://user@host/db (default: SQLite in the workspace).")
    ] = None,
    encoder: Annotated[str, typer.Option("--encoder", help="Default encoder of the workspace.")] = "efficientnet-lite0",
) -> None:
    """Create a workspace: config, catalog, embedding store."""
    from ..workspace import Workspace

    from ._common import State

    with errors_to_exit():
        if directory is None:  # `assay -w DIR init`, as every other command takes its workspace
            if State.workspace is None:
                from ..errors import InputError

                raise InputError("give the folder of the new workspace: `assay init DIR` (or `assay -w DIR init`)")
            directory = str(State.workspace)
        elif State.workspace is not None and Path(directory).resolve() != Path(State.workspace).resolve():
            from ..errors import InputError

            raise InputError(f"two folders for the new workspace: -w {State.workspace} and {directory}; give one")
        if not directory.strip():  # Path("") is the current folder: an empty argument is a mistake, not "here"
            from ..errors import InputError

            raise InputError("the workspace folder must be a path, got an empty value (use . for this folder)")
        ws = Workspace.init(Path(directory), catalog=catalog, default_encoder=encoder)
        out.print(f"created workspace {ws.root} (catalog: {ws.status()['catalog']}, default encoder: {encoder})")


def ingest(
    sources: Annotated[list[str], typer.Argument(help="Folders, manifests (.csv/.tsv/.jsonl/.parquet with a uri or text column) or fsspec URLs.")],
    workspace: WorkspaceOpt = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Reader threads.")] = None,
    no_retry: Annotated[bool, typer.Option("--no-retry", help="Do not probe again the items that failed before (faster re-ingest of a source with many missing files).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read and hash again every file already in the catalog (finds same-size edits and changed remote objects; slower).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Add the items of SOURCES to the catalog (hash, size, image header); re-ingesting adds nothing new,
    probes again the items that had failed (a file put back or fixed is revived), marks files that are gone,
    and takes in files whose size changed (their embeddings are dropped, `assay embed` makes new ones)."""
    from ..ingest import ingest as run_ingest

    with errors_to_exit():
        ws = open_workspace(workspace)
        with progress_bar("ingest", enabled=not json_) as (_start, advance):
            report = run_ingest(ws, sources, workers=workers, progress=advance, retry_errors=not no_retry,
                                verify=verify)
        if json_:
            print_json(report.to_dict())
            return
        out.print(
            f"ingested {report.seen} items from {len(report.sources)} source(s): {report.new} new, "
            f"{report.already_present} already present, {report.errors} new with errors "
            f"({report.items_per_s:,.0f} items/s); exact duplicates in the catalog: {report.exact_duplicates}"
        )
        if report.repeated_rows:
            out.print(f"{report.repeated_rows} rows named a uri an earlier row had named (the first row is the item)")
        if report.revived:
            out.print(f"{report.revived} items that had failed are fine now (status ok again; `assay embed` takes them)")
        if report.still_failing:
            out.print(f"{report.still_failing} items that had failed still fail (`assay status` lists the reasons)")
        if report.missing:
            console.print(f"[yellow]warning:[/] {report.missing} files are gone since they were ingested: their "
                          "items are now status error (\"missing file\") and left out of search, mining and "
                          "export; put the files back and ingest again to revive them", markup=True)
        if report.changed:
            console.print(f"[yellow]warning:[/] {report.changed} files changed since they were ingested: their "
                          f"items have the new hash and size, {report.embeddings_dropped} stale embeddings were "
                          "dropped; run `assay embed` (with `--regions SPEC` if you embed regions) and `assay "
                          "index`", markup=True)
            for concept, n in report.changed_in_concepts.items():
                console.print(f"[yellow]warning:[/] {n} of them carry labels or are exemplars of concept "
                              f"{concept!r}: the labels were given to the old files; check them", markup=True)
        if report.differing:
            hint = (" (text rows without an `id` column are keyed by row number: give the manifest an `id` "
                    "column so that rows may move)") if report.differing_by_row else ""
            console.print(f"[yellow]warning:[/] {report.differing} rows hold other text or metadata than the "
                          f"catalog has for their item; the catalog keeps what it had{hint}", markup=True)
            for line in report.differing_samples[:5]:
                out.print(f"  {line}")
        if report.skipped_files:
            out.print(f"skipped {report.skipped_files} files that are hidden, have no image extension, or are not regular files")
        for line in report.skipped_rows[:10]:
            out.print(f"skipped: {line}")
        if len(report.skipped_rows) > 10:
            out.print(f"... and {len(report.skipped_rows) - 10} more skipped (`--json` lists 10 of them too)")
        for uri, reason in report.error_samples[:10]:
            out.print(f"error: {uri}: {reason}")
        if report.errors > 10:
            out.print(f"... and {report.errors - 10} more errors (`assay status --errors` lists them all)")
        if report.seen == 0 and len(sources) > 1:  # (one empty source was named in its own warning above)
            console.print("[yellow]warning:[/] none of the sources holds an item", markup=True)
        if report.new or report.revived:
            out.print("next: `assay embed`, then `assay index`")


def embed(
    workspace: WorkspaceOpt = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Encoder name (default: the workspace's). 'precomputed' imports --from PATH.")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="With --encoder precomputed[:NAME]: embeddings to import (.npy+ids, clip-retrieval folder, .parquet).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    shard_size: Annotated[Optional[int], typer.Option("--shard-size", min=1, help="Rows per committed shard (default 4096; with --engine ray, items per task and shard, default 1024, so that a corpus is spread over the actors).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Decode threads.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=0, help="Embed at most N items.")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Drop this encoder's stored embeddings first (and its regions, with --regions).")] = False,
    reset_regions: Annotated[bool, typer.Option("--reset-regions", help="With --regions: drop only the stored regions first (e.g. to change the spec); whole-image embeddings are kept.")] = False,
    regions: Annotated[
        Optional[str],
        typer.Option("--regions", help="Also embed regions: 'grid:2,3' = the whole image + 2x2 and 3x3 tiles (options ':overlap=0.5', ':square'); 'dense:1792' = windows pooled from one feature map of the image at 1792 px (small objects; efficientnet encoders) (default: off)."),
    ] = None,
    region_overlap: Annotated[
        Optional[float], typer.Option("--region-overlap", min=0.0, max=0.9, help="Fraction of a tile shared with its neighbour (with --regions).")
    ] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (threads in this process) | ray (encoder actors on a Ray cluster).")] = "local",
    address: Annotated[
        Optional[str], typer.Option("--address", help="With --engine ray: the cluster to join (e.g. ray://head:10001, 'auto'); default: start a local one.")
    ] = None,
    repair: Annotated[bool, typer.Option("--repair", help="First read every stored shard of this encoder (and its regions) and drop the damaged ones (truncated, garbled or missing files); their items are embedded again.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Embed every ok item not yet embedded by the encoder (resumable: run it again after a crash)."""
    from ..embed import embed as run_embed
    from ..errors import InputError
    from ..precomputed import PRECOMPUTED, import_embeddings

    with errors_to_exit():
        ws = open_workspace(workspace)
        name = encoder or ws.default_encoder
        if engine not in ("local", "ray"):
            raise InputError(f"--engine must be 'local' or 'ray', got {engine!r}")
        if address is not None and engine != "ray":
            raise InputError("--address is only for --engine ray")
        if reset_regions and regions is None:
            raise InputError("--reset-regions needs --regions SPEC (the regions to embed afresh)")
        if region_overlap is not None and regions is None:
            raise InputError("--region-overlap needs --regions SPEC (e.g. --regions grid:2,3)")
        region_spec = None
        if regions is not None:
            from ..regions import parse_region_spec

            region_spec = parse_region_spec(regions, overlap=region_overlap)  # validate before any work
        repaired: list[dict[str, object]] = []
        if repair and not reset:
            repaired = _repair_stores(ws, name)
            if not json_:
                for r in repaired:
                    out.print(f"repair: dropped damaged shard {r['shard']} of {r['store']} ({r['reason']})")
                if not repaired:
                    out.print("repair: every stored shard reads back whole")
        if region_spec is not None and name.split(":", 1)[0] != PRECOMPUTED:
            from ..regions import check_regions_can_embed

            check_regions_can_embed(ws, name, region_spec, reset=reset or reset_regions)  # before the image pass
        if name.split(":", 1)[0] == PRECOMPUTED:
            if region_spec is not None:
                raise InputError("--regions needs an image encoder; precomputed embeddings have no images to crop")
            if engine == "ray":
                raise InputError("--engine ray embeds with an encoder; precomputed embeddings are imported locally")
            if not from_:
                raise InputError("--encoder precomputed needs --from PATH (the embeddings to import)")
            if limit is not None:
                raise InputError("--limit is for encoders; an import of precomputed embeddings takes every row")
            report = import_embeddings(ws, from_, name=name, reset=reset)
        else:
            if from_:
                raise InputError("--from is only for --encoder precomputed")
            if engine == "ray":
                from ..distributed import embed_with_ray
                from ..embed import check_encoder_fits

                check_encoder_fits(ws, name)

                with progress_bar(f"embed {name} on Ray", enabled=not json_) as (start, advance):
                    report = embed_with_ray(
                        ws, name, address=address, batch_size=batch_size, task_size=shard_size or 1024,
                        decode_threads=workers or 4, limit=limit, reset=reset, progress=advance, on_start=start,
                    )
            else:
                with progress_bar(f"embed {name}", enabled=not json_) as (start, advance):
                    report = run_embed(
                        ws, name, batch_size=batch_size, shard_size=shard_size or 4096, workers=workers, limit=limit,
                        reset=reset, progress=advance, on_start=start,
                    )
        region_report = None
        if region_spec is not None:
            from ..regions import embed_regions

            with progress_bar(f"regions {region_spec.key}", enabled=not json_) as (start, advance):
                region_report = embed_regions(
                    ws, name, spec=region_spec, batch_size=batch_size, shard_size=shard_size or 4096, workers=workers,
                    limit=limit, reset=reset or reset_regions, progress=advance, on_start=start,
                )
        if json_:
            d = report.to_dict()
            if region_report is not None:
                d["regions"] = region_report.to_dict()
            if repair:
                d["repaired"] = repaired
            print_json(d)
            return
        if region_report is not None:
            rr = region_report
            out.print(
                f"regions {rr.spec}: {rr.regions} regions ({rr.regions_per_image:g} per image) of {rr.images} of "
                f"{rr.pending} pending images, {rr.errors} failed ({rr.seconds:.1f} s); {rr.total_regions} regions stored in all"
            )
        out.print(
            f"{report.encoder}: embedded {report.embedded} of {report.pending} pending items, {report.errors} failed "
            f"({report.items_per_s:,.1f} items/s, {report.seconds:.1f} s); {report.total_embedded} stored in all"
        )
        if report.pending == 0 and report.total_embedded == 0:
            n = ws.catalog.count()
            out.print("nothing to embed: the workspace has no items yet; run `assay ingest SOURCE...` first"
                      if n["total"] == 0 else
                      f"nothing to embed: none of the {n['total']} items could be read at ingest "
                      "(`assay status --errors` says why)")
        for item_id, reason in report.error_samples[:10]:
            out.print(f"error: item {item_id}: {reason}")
        if report.errors > 10:
            out.print(f"... and {report.errors - 10} more (`assay status --errors` lists them all)")
        if limit is not None:
            left = ws.status()["pending"].get(report.encoder, 0)
            if left:
                out.print(f"--limit {limit}: {left} items are still pending; run `assay embed` again for them")
        if report.embedded:
            out.print("next: `assay index` (search, mining and harvest see the indexed items)")


def _repair_stores(ws: object, name: str) -> list[dict[str, object]]:
    """Drop the damaged shards of ``name``'s store and of its region store; what was dropped, as dicts."""
    from ..regions import region_store

    dropped: list[dict[str, object]] = []
    for store in (ws.vectors(name), region_store(ws, name)):  # type: ignore[attr-defined]
        for pr in store.repair():
            dropped.append({"store": store.root.name, "shard": pr.seq, "reason": pr.reason})
    return dropped


def status(
    workspace: WorkspaceOpt = None,
    errors: Annotated[bool, typer.Option("--errors", help="List every item with status error and its reason.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Say what the workspace holds."""
    with errors_to_exit():
        ws = open_workspace(workspace)
        if errors:
            rows = ws.catalog.error_reasons(None)
            if json_:
                print_json({"errors": [{"id": i, "uri": u, "reason": r} for i, u, r in rows]})
            else:
                for item_id, uri, reason in rows:
                    out.print(f"{item_id}\t{printable(uri)}\t{printable(reason)}")  # a tab in a name cannot split it
                if not rows:
                    out.print("no items with status error")
            return
        st = ws.status()
        if json_:
            print_json(st)
            return
        it = st["items"]
        out.print(f"workspace  {st['workspace']}")
        out.print(f"catalog    {st['catalog']}")
        out.print(f"items      {it['total']} ({it['ok']} ok, {it['error']} error; {it['image']} images, {it['text']} texts)")
        out.print(f"exact duplicates  {st['exact_duplicates']}")
        if st["embeddings"]:
            for name, n in st["embeddings"].items():
                out.print(f"embeddings {name}: {n}")
            for name, why in st.get("damaged", {}).items():
                out.print(f"damaged    {name}: {why}")
        else:
            out.print("embeddings none yet (run `assay embed`)")
        for name, n in st["pending"].items():
            if n:
                out.print(f"pending    {name}: {n} ok items not embedded yet (run `assay embed --encoder {name}`)")
        for name, ix in st["indexes"].items():
            state = "up to date" if ix["up_to_date"] else (ix.get("problem") or "out of date (run `assay index`)")
            out.print(f"index      {name}: {ix['vectors']} vectors, {state}")
        if st["embeddings"] and not st["indexes"]:
            out.print("index      none yet (run `assay index`: search, mining and harvest need it)")
        concepts = ws.catalog.concepts()
        if concepts:
            shown = []
            for c in concepts[:5]:
                _ids, vals = ws.catalog.current_labels(c.id)
                shown.append(f"{c.name} ({len(vals)} labels, {int((vals == 1).sum())} positive)")
            more = f" and {len(concepts) - 5} more" if len(concepts) > 5 else ""
            out.print(f"concepts   {', '.join(shown)}{more} (`assay concept list`)")
        for name, ix in st.get("region_indexes", {}).items():
            state = "up to date" if ix["up_to_date"] else (ix.get("problem") or "out of date (run `assay index`)")
            out.print(f"regions    {name}: {ix['spec'] or '?'}, {ix['vectors']} item and region vectors indexed, {state}")
        if it["error"]:
            for item_id, uri, reason in ws.catalog.error_reasons(5):
                out.print(f"  error {item_id} {uri}: {reason}")
            if it["error"] > 5:
                out.print(f"  ... and {it['error'] - 5} more (`assay status --errors` lists them all)")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("ingest")(ingest)
    app.command("embed")(embed)
    app.command("status")(status)
