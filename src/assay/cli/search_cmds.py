"""`assay index` and `assay search`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ._common import JsonOpt, WorkspaceOpt, _escape, console, errors_to_exit, open_workspace, out, print_json, printable


def index(
    workspace: WorkspaceOpt = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Whose embeddings to index (default: the workspace's encoder).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="auto | flat | hnsw | ivf | ivf-pq")] = "auto",
    pca: Annotated[Optional[int], typer.Option("--pca", min=1, help="Reduce vectors to N dims with PCA fitted on a sample.")] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Build from scratch instead of updating.")] = False,
    knn: Annotated[Optional[int], typer.Option("--knn", min=1, help="Also build and store the kNN graph with K neighbours.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for training samples.")] = 0,
    sharded: Annotated[
        Optional[int], typer.Option("--sharded", min=1, help="Instead: build an IVF-PQ index in N memory-mapped shards (one trained codebook).")
    ] = None,
    ray: Annotated[bool, typer.Option("--ray", help="With --sharded: fill the shards as Ray tasks.")] = False,
    address: Annotated[Optional[str], typer.Option("--address", help="With --ray: the Ray cluster to join.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Build the FAISS index over stored embeddings, or add newly embedded items to it."""
    from ..errors import InputError
    from ..search import build_index, build_knn_graph

    with errors_to_exit():
        ws = open_workspace(workspace)
        counts = ws.catalog.count()
        if counts["ok"] == 0:
            raise InputError(_nothing_to_index(counts))
        if (ray or address) and sharded is None:
            raise InputError("--ray and --address are options of --sharded N")
        if sharded is not None:
            if kind not in ("auto", "ivf-pq") or pca or knn:
                raise InputError("--sharded builds an IVF-PQ index; it takes no --kind, --pca or --knn")
            from ..distributed import build_workspace_sharded_index

            sidx = build_workspace_sharded_index(ws, encoder, n_shards=sharded, rng=seed, use_ray=ray, address=address)
            info = sidx.info()
            if json_:
                print_json({"action": "built", "index": info})
                return
            out.print(
                f"built a sharded IVF-PQ index: {info['count']} vectors in {info['n_shards']} shards, "
                f"{info['bytes_per_vector']:.1f} bytes/vector, at {info['directory']}"
            )
            return
        rep = build_index(ws, encoder, kind=kind, pca=pca, rebuild=rebuild, rng=seed)
        if knn:
            g = build_knn_graph(ws, knn, encoder)
            rep["knn_graph"] = {"k": g.k, "n": g.n, **{k: v for k, v in dict(g.info).items() if k in ("seconds", "exact", "kind")}}
        if json_:
            print_json(rep)
            return
        info = rep["index"]
        out.print(
            f"{rep['action']} {info['kind']} index of {rep['encoder']}: {info['count']} vectors "
            f"(+{rep['added']} / -{rep['removed']}), dim {info['dim']}, {info['bytes_per_vector']:.0f} bytes/vector, "
            f"{rep['seconds']:.1f} s"
        )
        if "rebuilt_because" in rep:
            out.print(f"rebuilt because {rep['rebuilt_because']}")
        if rep.get("retrained"):
            out.print("the IVF index had outgrown its training sample and was retrained")
        if "text_bridge" in rep:
            tb = rep["text_bridge"]
            out.print(f"text bridge (ConSE): {tb.get('skipped') or str(tb['count']) + ' items'}")
        if "knn_graph" in rep:
            g = rep["knn_graph"]
            out.print(f"kNN graph: k={g['k']} over {g['n']} items"
                      + (f" (only {g['n'] - 1} other items: rows padded)" if g["n"] <= g["k"] else ""))
        regions = rep.get("regions")
        if isinstance(regions, dict):
            if "skipped" in regions:
                out.print(f"regions index: not built ({regions['skipped']})")
            elif "index" in regions:
                out.print(f"regions index (items and regions together, for search --regions and mine --regions): "
                          f"{regions.get('action', 'built')}, {regions['index']['count']} vectors "
                          f"({regions.get('items', 0)} items, {regions.get('regions', 0)} regions)")


def search(
    workspace: WorkspaceOpt = None,
    item: Annotated[Optional[list[int]], typer.Option("--item", min=0, max=2**63 - 1, help="Find items like this item id. Give it several times for one query by several exemplars (their mean vector); they are left out of the results.")] = None,
    image: Annotated[Optional[list[Path]], typer.Option("--image", help="Find items like this image file. Give it several times for one query by several exemplars (their mean vector).")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="Find items matching this text.")] = None,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="JSONL file of queries, one per line: {\"item\": id} | {\"image\": path} | {\"text\": str}; a list of ids or paths is one query by those exemplars.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="How many results.")] = 10,
    encoder: Annotated[Optional[str], typer.Option("--encoder")] = None,
    keep_duplicates: Annotated[bool, typer.Option("--keep-duplicates", help="Also return non-representative duplicates.")] = False,
    regions: Annotated[bool, typer.Option("--regions", help="Score each image by its best region (needs `assay embed --regions`); results gain \"region\" and \"box\".")] = False,
    rerank: Annotated[int, typer.Option("--rerank", help="ivf-pq index only: re-score this many candidates per result with the stored vectors (0: off).")] = 50,
    score: Annotated[str, typer.Option("--score", help="max | contrast. With --regions: 'max' scores an image by its best region (or the whole image); 'contrast' by how far its best region stands out from all its regions (best minus mean for exemplars; log(best / mean) of the class probability for text through WordNet), an exact scan of the stored regions (small objects in busy scenes; an image the object fills ranks lower).")] = "max",
    bridge: Annotated[str, typer.Option("--bridge", help="wordnet | conse. Text with an ImageNet classifier (no text tower): 'wordnet' scores each image by the probability of the classes under the WordNet node the text names (exact scan of the stored logits); 'conse' searches the ConSE index (approximate, for corpora of many millions). No effect with a text tower.")] = "wordnet",
    json_: JsonOpt = False,
) -> None:
    """Search by item, image or text; --json prints {"results": [{"id", "score", "uri"}, ...]}, best first.

    Several --item or --image options make one query by several exemplars: the mean of their vectors.

    With --regions each result also has "region" (the region id that scored best, null for the whole image)
    and "box" (\\[x0, y0, x1, y1] in pixels, null for the whole image). A text query through the WordNet
    bridge also prints what it matched ("matched": "dog (118 classes)"); its scores are that probability."""
    from ..errors import InputError
    from ..search import Searcher

    with errors_to_exit():
        item = (item[0] if len(item) == 1 else list(item)) if item else None  # several: one query by exemplars
        image = (image[0] if len(image) == 1 else list(image)) if image else None
        given = sum(x is not None for x in (item, image, text, batch))
        if given != 1:
            raise InputError("give exactly one of --item ID, --image PATH, --text QUERY or --batch FILE")
        ws = open_workspace(workspace)
        if score != "max" and not regions:
            raise InputError(f"--score {score} ranks images by their regions; add --regions")
        from ..search import _check_region_score

        _check_region_score(score)
        s = Searcher(ws, encoder, rerank=rerank, text_bridge=bridge)
        if bridge != "wordnet" and s._text_route() == "tower":
            console.print(f"[yellow]warning:[/] --bridge {bridge} has no effect: encoder "
                          f"{_escape(repr(s.encoder_name))} reads text with its own text tower", markup=True)
        if batch is not None:
            results = _run_batch(s, batch, k, keep_duplicates, regions, score)
            texts = _texts_of(ws, [h["id"] for r in results for h in r["results"]])
            for r in results:
                for h in r["results"]:
                    if h["id"] in texts:
                        h["text"] = texts[h["id"]]
            if json_:
                print_json({"queries": results})
            else:
                for r in results:
                    out.print(f"# {json.dumps(r['query'])}" + (f"  (matched WordNet: {r['matched']})" if r.get("matched") else ""))
                    for h in r["results"]:
                        where = ""
                        if regions:
                            where = f"  box {list(h['box'])}" if h.get("box") is not None else "  whole image"
                        out.print(f"{h['score']:.4f}  {h['id']}  {printable(h['uri'])}{where}{_snippet(h.get('text'))}")
            return
        kw = {"score": score} if regions else {}
        fn = s.search_regions if regions else s.search
        img = None if image is None else ([str(p) for p in image] if isinstance(image, list) else str(image))
        hits = fn(item=item, image=img, text=text, k=k, keep_duplicates=keep_duplicates, **kw)
        texts = _texts_of(ws, [h.id for h in hits])
        matched = s.text_matches([text]) if text is not None else None
        if json_:
            print_json({**({"matched": matched[0]} if matched else {}),
                        "results": [{**h.to_dict(), **({"text": texts[h.id]} if h.id in texts else {})} for h in hits]})
            return
        if matched:
            what = ("log(best region's / mean region's probability of those classes): how far the best region stands out"
                    if regions and score == "contrast" else "the probability of those classes")
            out.print(f"# the text matched WordNet: {matched[0]}; scores are {what}")
        if regions and score == "contrast" and not json_:
            out.print("# contrast ranks small objects in busy scenes first; an image the object fills ranks low, and a "
                      "region the model misreads can stand out: use --score max for photos of the object itself")
        if not hits:
            out.print("no results: the index holds nothing searchable for this query (see `assay status`)")
        for h in hits:
            box = getattr(h, "box", None)
            where = f"  box {list(box)}" if regions and box is not None else ("  whole image" if regions else "")
            out.print(f"{h.score:.4f}  {h.id}  {printable(h.uri)}{where}{_snippet(texts.get(h.id))}")


def _texts_of(ws, ids: list[int]) -> dict[int, str]:
    """``{id: text}`` for the text items among ``ids`` (a text hit is read by its words, not its URI)."""
    if not ids:
        return {}
    return {it.id: it.text or "" for it in ws.catalog.get_many(sorted(set(ids))) if it.modality == "text"}


def _snippet(text: str | None, width: int = 100) -> str:
    if text is None:
        return ""
    one = printable(" ".join(text.split()))
    return "  " + (one if len(one) <= width else one[: width - 1] + "…")


def _run_batch(s, path: Path, k: int, keep_duplicates: bool, regions: bool = False, score: str = "max") -> list[dict]:
    from ..errors import InputError, NotFoundError

    if not path.exists():
        raise NotFoundError(f"batch file not found: {path}")
    if path.is_dir():
        raise InputError(f"--batch {path} is a folder, not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"--batch {path} is not UTF-8 text ({exc}); save it as UTF-8 JSON lines") from None
    queries, line_of = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n}: not JSON: {exc}") from exc
        if not isinstance(q, dict) or len(q) != 1 or next(iter(q)) not in ("item", "image", "text"):
            raise InputError(f'{path} line {n}: expected {{"item": id}}, {{"image": path}} or {{"text": str}} (an '
                             f'"item" or "image" may be a list: one query by those exemplars), got {line.strip()}')
        kind, val = next(iter(q.items()))
        if isinstance(val, list) and kind in ("item", "image"):  # several exemplars: one query, checked here
            if not val or len(val) > 1000:
                raise InputError(f'{path} line {n}: a list of exemplars needs 1 to 1,000 entries, got {len(val)}')
            if kind == "image" and not all(isinstance(v, str) and v for v in val):
                raise InputError(f'{path} line {n}: "image" lists must hold file paths, got {line.strip()}')
        queries.append(q)
        line_of.append(n)
    if not queries:
        console.print(f"[yellow]warning:[/] {_escape(str(path))} holds no queries", markup=True)

    def near_file(p: Any) -> Any:  # a relative image path: beside the batch file first, as label files are read
        if isinstance(p, str) and p and not Path(p).is_absolute() and (path.parent / p).exists():
            return str(path.parent / p)
        return p

    def at_line(i: int, exc: Exception) -> Exception:  # the same kind of error (and exit code), with its line
        return (NotFoundError if isinstance(exc, NotFoundError) else InputError)(f"{path} line {line_of[i]}: {exc}")

    out_rows: list[dict] = [{}] * len(queries)
    extra: dict[int, dict] = {}
    kw = {"score": score} if regions else {}

    def run(kind: str, vals: list) -> list:
        if kind == "item":
            from ..errors import as_item_id

            vals = [as_item_id(v, '"item"') for v in vals]
            fn = s.search_regions_items if regions else s.search_items
            return fn(vals, k=k, keep_duplicates=keep_duplicates, **kw)
        if kind == "text":
            fn = s.search_regions_texts if regions else s.search_texts
            return fn(vals, k=k, keep_duplicates=keep_duplicates, **kw)
        import numpy as np

        fn = s.search_regions_batch if regions else s.search_batch
        return fn(np.stack([s.vector_for_image(near_file(v)) for v in vals]), k=k, keep_duplicates=keep_duplicates, **kw)

    for i, q in enumerate(queries):  # exemplar sets: a query each (their prototype)
        kind, val = next(iter(q.items()))
        if isinstance(val, list) and kind in ("item", "image"):
            fn = s.search_regions if regions else s.search
            try:
                h = fn(**{kind: val if kind == "item" else [near_file(v) for v in val]}, k=k,
                       keep_duplicates=keep_duplicates, **kw)
            except (InputError, NotFoundError) as exc:
                raise at_line(i, exc) from None
            out_rows[i] = {"query": q, "results": [x.to_dict() for x in h]}
    # Group the rest by kind so each kind is one batched search.
    for kind in ("item", "text", "image"):
        pos = [i for i, q in enumerate(queries) if kind in q and not (kind != "text" and isinstance(q[kind], list))]
        if not pos:
            continue
        vals = [queries[i][kind] for i in pos]
        try:
            hits = run(kind, vals)
        except (InputError, NotFoundError):  # which line: each of the group alone, the first that fails
            for i in pos:
                try:
                    run(kind, [queries[i][kind]])
                except (InputError, NotFoundError) as one:
                    raise at_line(i, one) from None
            raise
        if kind == "text":
            matched = s.text_matches(vals)
            if matched:
                for i, m in zip(pos, matched):
                    extra[i] = {"matched": m}
        for i, h in zip(pos, hits):
            out_rows[i] = {"query": queries[i], **extra.get(i, {}), "results": [x.to_dict() for x in h]}
    return out_rows


def _nothing_to_index(n: dict[str, int]) -> str:
    """What to do first, for a workspace whose catalog counts ``n`` hold no ok item."""
    if n["total"] == 0:
        return "the workspace has no items yet: run `assay ingest SOURCE...`, then `assay embed`, then `assay index`"
    return (f"none of the workspace's {n['total']} items could be read at ingest ({n['error']} failed): "
            "`assay status --errors` says why")


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("search")(search)
