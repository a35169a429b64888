"""`assay dedup`: find exact and near-duplicate groups, record them, optionally write an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (
    JsonOpt,
    WorkspaceOpt,
    console,
    errors_to_exit,
    open_workspace,
    out,
    print_json,
    progress_bar,
)


def dedup(
    workspace: WorkspaceOpt = None,
    method: Annotated[
        str,
        typer.Option(
            "--method", help="embedding | phash | both (same-bytes duplicates are always included)."
        ),
    ] = "embedding",
    threshold: Annotated[
        Optional[float],
        typer.Option(
            "--threshold",
            help="Cosine similarity in (0, 1] at or above which embeddings are near duplicates (default: 0.90; 0.98 for text-only encoders such as minilm).",
            show_default=False,
        ),
    ] = None,
    radius: Annotated[
        Optional[int],
        typer.Option(
            "--radius",
            help="Hamming distance (of 64 bits) at or below which pHashes are duplicates (default: 8).",
            show_default=False,
        ),
    ] = None,
    encoder: Annotated[
        Optional[str], typer.Option("--encoder", help="Whose embeddings (default: the workspace's encoder).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Re-check every item instead of only the items not checked yet.")
    ] = False,
    report: Annotated[
        Optional[Path],
        typer.Option(
            "--report", help="Write an HTML report (groups, example pairs by similarity) into this folder."
        ),
    ] = None,
    k: Annotated[
        int, typer.Option("--k", min=1, help="Neighbours asked per item at first (widened automatically).")
    ] = 16,
    workers: Annotated[
        Optional[int], typer.Option("--workers", min=1, help="Decode threads for pHash.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Group exact and near duplicates and record them; search and selection then skip all but one per group.

    --json prints {"groups": [{"representative": id, "items": [{"id", "uri"}, ...]}, ...], "removed": N, ...}.
    """
    from ..dedup import DEFAULT_RADIUS, check_radius, check_threshold
    from ..dedup import dedup as run_dedup

    with errors_to_exit():
        # validate what was given before touching the workspace
        t = check_threshold(threshold) if threshold is not None else None  # None: the encoder's default
        r = check_radius(radius) if radius is not None else DEFAULT_RADIUS
        import logging

        dlog = logging.getLogger("assay.dedup")
        if threshold is not None and method == "phash":
            dlog.warning("--threshold is a cosine for --method embedding or both; --method phash uses --radius")
        if radius is not None and method == "embedding":
            dlog.warning("--radius is a pHash distance for --method phash or both; --method embedding uses --threshold")
        if t is not None and t < 0.75 and method != "phash":  # (phash ignores the threshold: said above)
            dlog.warning(
                "a threshold of %g groups items that are merely alike, not duplicates; on a corpus of tight "
                "clusters every item then has many neighbours above it, and the pair search grows with their "
                "square (minutes to hours at 100k+ items). Edited copies (resized, re-compressed, cropped, "
                "captioned) mostly sit at 0.8 and above; check a threshold with `--report DIR`.", t)
        if report is not None:  # before the run records any group: a bad path must leave nothing behind
            from ..errors import check_folder

            check_folder(report, f"--report {report}")
        ws = open_workspace(workspace)
        with progress_bar("dedup", enabled=not json_) as (start, advance):
            res = run_dedup(
                ws,
                method=method,
                threshold=t,
                radius=r,
                encoder=encoder,
                incremental=not full,
                k=k,
                workers=workers,
                progress=advance,
                on_start=start,
            )
        ids = sorted({i for m in res.groups.values() for i in m})
        obj = res.to_dict(ws.catalog.uris(ids))
        if report is not None:
            from ..dedup_report import write_report

            files = write_report(
                ws,
                report,
                method=res.method,
                encoder=res.encoder,
                groups=res.groups,
                threshold=res.threshold,
                radius=res.radius,
            )
            obj["report"] = files.to_dict()
        if json_:
            print_json(obj)
            return
        _print_summary(obj)


def _print_summary(obj: dict) -> None:
    settings = []
    if obj["threshold"] is not None:
        settings.append(f"cosine >= {obj['threshold']}")
    if obj["radius"] is not None:
        settings.append(f"pHash distance <= {obj['radius']}")
    enc = f" of {obj['encoder']}" if obj["encoder"] else ""
    out.print(
        f"{obj['mode']} dedup by {obj['method']}{enc} ({', '.join(settings)}): checked {obj['checked']} of "
        f"{obj['universe']} items in {obj['seconds']:.1f} s"
    )
    pairs = ", ".join(f"{k} {v}" for k, v in obj["pairs"].items()) or "none"
    out.print(f"pairs found: {pairs}")
    out.print(
        f"{len(obj['groups'])} duplicate groups; {obj['removed']} items set aside (search and selection skip them)"
    )
    if obj["skipped_decode"]:
        out.print(f"{obj['skipped_decode']} items could not be decoded and were skipped (marked as errors)")
        for e in obj["decode_errors"][:5]:
            out.print(f"  {e['id']}: {e['reason']}")
    if obj.get("index"):
        ix = obj["index"]
        out.print(f"index {ix.get('action', 'updated')}: {ix.get('count')} vectors ({ix.get('kind')})")
    for g in sorted(obj["groups"], key=lambda g: -len(g["items"]))[:10]:
        rep = g["representative"]
        rep_uri = next((it["uri"] for it in g["items"] if it["id"] == rep), "")
        out.print(f"  keep {rep} {rep_uri}  (+{len(g['items']) - 1})")
    if len(obj["groups"]) > 10:
        out.print(f"  ... {len(obj['groups']) - 10} more groups (--json lists all)")
    if "report" in obj:
        console.print(f"report: {obj['report']['index_html']}")


def register(app: typer.Typer) -> None:
    app.command("dedup")(dedup)
