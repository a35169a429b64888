"""Benchmark: dense regions (windows pooled from one high-resolution feature map) against whole-image search.

The corpus and queries are those of bench/regions.py: ImageNet-sample backgrounds (non-animal, non-vehicle
classes), one CIFAR-10 *train* photo pasted into each at 10 % or 20 % of the shorter side; queries by exemplar
(unpasted CIFAR-10 *test* photos) and by text (``a photo of a <class>``: the WordNet bridge, the default, and
the ConSE bridge with MiniLM). Besides the best region ("max"), it scores images by ``score="contrast"``: the
best region minus the mean of the image's regions for exemplars (cosines), their log ratio for text (the
bridge's class-set probabilities).
``--objects imagenet`` pastes centre crops of ImageNet-sample photos of 8 animal concepts instead (see
bench/regions.py).

It runs the library's path end to end: ``embed`` (whole images), ``embed_regions(spec=dense:...)``,
``build_index(kind="flat")``; recall@k of each class's positives of one size is computed in numpy from the
stores (an image scores by the max over itself and its regions, regions of any number per image) and
cross-checked against :meth:`assay.search.Searcher.search_regions_batch` and ``search_regions_texts``.

Cost: seconds per image of the whole-image embedding and of the region pass, regions per image, bytes per
image of the region store (measured on disk) and of the flat joint index.

    python bench/regions_dense.py --n 200 --spec dense:1792:window=5:stride=2       # quicker (1.2 s / image)
    python bench/regions_dense.py --n 500 --k 100                                   # the reported run (2240 px)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import emit, machine, peak_rss_mb, shared_data
from regions import OBJECTS_TEXT, _dir_bytes, _make_corpus, _recall


def _prototype(vecs: np.ndarray) -> np.ndarray:
    """The normalised mean of unit vectors, as :meth:`assay.search.Searcher.exemplar_query` makes it."""
    v = np.asarray(vecs, dtype=np.float32)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    m = v.mean(axis=0)
    return m / np.linalg.norm(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=500, help="corpus images (half with 10 %% objects, half with 20 %%)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--exemplars", type=int, default=5, help="exemplar queries per class")
    ap.add_argument("--spec", default="dense:2240:window=6:stride=3", help="the dense region spec (default: the one docs/regions.md reports)")
    ap.add_argument("--objects", choices=("cifar", "imagenet"), default="cifar",
                    help="what is pasted: CIFAR-10 photos (10 classes) or centre crops of ImageNet-sample photos "
                         "(8 animal concepts: dog, bird, insect, monkey, snake, fish, cat, lizard)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the workspace in this folder")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: score the workspace a run with the same --n/--objects/--seed/--spec kept there "
                         "(no embedding; the cost figures come out null)")
    args = ap.parse_args()
    if args.reuse and not args.keep:
        ap.error("--reuse needs --keep DIR")
    data = shared_data(args.data)
    if data is None:
        emit({"benchmark": "regions_dense", "skipped": "shared data not found (set ASSAY_SHARED_DATA)"})
        return
    from assay import Workspace, embed, ingest
    from assay.embed import load_encoder
    from assay.regions import embed_regions, parent_ids, parse_region_spec, region_store
    from assay.search import Searcher, _class_text_embeddings, build_index
    from assay.zeroshot import class_set_scores, conse_image_vectors

    rng = np.random.default_rng(args.seed)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="assay-bench-dense-"))
    try:
        spec = parse_region_spec(args.spec)
        reuse = args.reuse and (tmp / "ws" / "assay.json").exists()
        rows, queries, classes = _make_corpus(data, tmp / ("imgs-check" if reuse else "imgs"), args.n, args.exemplars,
                                              rng, args.objects)
        if reuse:  # the kept corpus must be this run's: same files
            same = all((tmp / "imgs" / r[0]).read_bytes() == (tmp / "imgs-check" / r[0]).read_bytes() for r in rows)
            shutil.rmtree(tmp / "imgs-check")
            if not same:
                raise SystemExit(f"{tmp} holds another corpus than --n/--objects/--seed make")
            ws = Workspace.open(tmp / "ws")
            build_index(ws, kind="flat")  # up to date (a workspace kept by an older version gains the image means)
            t_whole = t_regions = t_index = None
            rrep = None
        else:
            ws = Workspace.init(tmp / "ws")
            ingest(ws.catalog, [tmp / "imgs"])
            t0 = time.perf_counter()
            embed(ws, batch_size=32)
            t_whole = time.perf_counter() - t0
            t0 = time.perf_counter()
            rrep = embed_regions(ws, spec=spec)
            t_regions = time.perf_counter() - t0
            t0 = time.perf_counter()
            build_index(ws, kind="flat")
            t_index = time.perf_counter() - t0

        enc = load_encoder(ws.default_encoder)
        uri_row = {str(tmp / "imgs" / r[0]): k for k, r in enumerate(rows)}
        ids = ws.catalog.ids()
        uris = ws.catalog.uris(ids)
        item_ids = np.asarray(sorted(int(i) for i in ids), dtype=np.int64)
        row_of = np.asarray([uri_row[uris[int(i)]] for i in item_ids])
        cls = np.asarray([rows[r][1] for r in row_of])  # [N]
        frac = np.asarray([rows[r][2] for r in row_of])  # [N]
        pos = {int(i): j for j, i in enumerate(item_ids)}
        store, rstore = ws.vectors(), region_store(ws)
        V = store.get(item_ids)  # [N, d]
        rids, RV = rstore.load()  # [M], [M, d]
        owner = np.asarray([pos[int(p)] for p in parent_ids(rids)])  # [M] row of the parent image
        per_image = np.bincount(owner, minlength=len(item_ids))
        class_emb, _ = _class_text_embeddings(ws)
        CV = conse_image_vectors(store.get(item_ids, extra="imagenet_logits", dtype=np.float16), class_emb)
        _, RL = rstore.load(extra="imagenet_logits", dtype=np.float16)
        RCV = conse_image_vectors(RL, class_emb)  # [M, 384]

        ex_q = {c: enc.embed_images(queries[c]) for c in range(len(classes))}  # [exemplars, d] per class
        searcher = Searcher(ws)
        texts = [f"a photo of a {c}" for c in classes]
        text_q, _route = searcher.vectors_for_texts(texts)  # [10, 384]
        # the WordNet bridge (the default text route): P(classes under the matched node), from the logits
        class_w, matched = searcher.class_weights(texts)  # [10, 1000]
        WP = class_set_scores(store.get(item_ids, extra="imagenet_logits", dtype=np.float16), class_w)  # [N, 10]
        _, RL = rstore.load(extra="imagenet_logits", dtype=np.float16)
        RWP = class_set_scores(RL, class_w)  # [M, 10]

        n_regions = np.bincount(owner, minlength=len(item_ids))  # [N]

        def image_scores(item_vecs, region_vecs, q, regions: bool | str, probabilities: bool = False):
            s = item_vecs @ q  # [N]
            if regions == "contrast":  # how far the best region stands out from the image's regions (0 without)
                r = region_vecs @ q  # [M]
                best = np.full(len(s), -np.inf, np.float32)
                np.maximum.at(best, owner, r)
                mean = np.bincount(owner, weights=r, minlength=len(s)) / np.maximum(n_regions, 1)
                if probabilities:  # class-set probabilities: the lift log(best / mean), as the library
                    return np.where(n_regions > 0, np.log(np.maximum(best, 0) + 1e-3) - np.log(np.maximum(mean, 0) + 1e-3), 0.0)
                return np.where(n_regions > 0, best - mean, 0.0)
            if regions:
                np.maximum.at(s, owner, region_vecs @ q)
            return s

        def evaluate(item_vecs, region_vecs, qs_by_class, regions, probabilities=False):
            out = {0.1: [], 0.2: []}
            for c, qs in qs_by_class.items():
                for q in np.atleast_2d(qs):
                    s = image_scores(item_vecs, region_vecs, q, regions, probabilities)
                    for f in (0.1, 0.2):
                        out[f].append(_recall(s, (cls == c) & (frac == f), args.k))
            return {f"{int(f * 100)}%": round(float(np.mean(v)), 3) for f, v in out.items()}

        del RL
        # a concept's exemplars together as one query: their prototype (Searcher.exemplar_query's mean vector)
        ex_set = {c: _prototype(ex_q[c]) for c in range(len(classes))}
        text_by_class = {c: text_q[c] for c in range(len(classes))}
        onehot = {c: np.eye(len(classes), dtype=np.float32)[c] for c in range(len(classes))}  # picks a column
        results = {
            "whole": {"exemplar": evaluate(V, RV, ex_q, False), "exemplar_set": evaluate(V, RV, ex_set, False),
                      "text": evaluate(WP, RWP, onehot, False), "text_conse": evaluate(CV, RCV, text_by_class, False)},
            spec.key: {"exemplar": evaluate(V, RV, ex_q, True), "exemplar_set": evaluate(V, RV, ex_set, True),
                       "text": evaluate(WP, RWP, onehot, True), "text_conse": evaluate(CV, RCV, text_by_class, True)},
            spec.key + " score=contrast": {"exemplar": evaluate(V, RV, ex_q, "contrast"),
                                           "exemplar_set": evaluate(V, RV, ex_set, "contrast"),
                                           "text": evaluate(WP, RWP, onehot, "contrast", probabilities=True)},
        }
        # the library's region search on the flat joint index agrees with the numpy ranking
        check = []
        t0 = time.perf_counter()
        lib_hits = searcher.search_regions_batch(np.stack([ex_q[c][0] for c in range(len(classes))]), k=args.k)
        t_search = (time.perf_counter() - t0) / len(classes)
        for c in range(len(classes)):
            s = image_scores(V, RV, ex_q[c][0], True)
            want = set(item_ids[np.argsort(-s, kind="stable")[: args.k]].tolist())
            check.append(len(want & {h.id for h in lib_hits[c]}) / args.k)
        t0 = time.perf_counter()
        wn_hits = searcher.search_regions_texts(texts, k=args.k)
        t_text = (time.perf_counter() - t0) / len(texts)
        for c, hits in enumerate(wn_hits):  # the WordNet bridge
            s = image_scores(WP, RWP, onehot[c], True)
            want = set(item_ids[np.argsort(-s, kind="stable")[: args.k]].tolist())
            check.append(len(want & {h.id for h in hits}) / args.k)
        # ... and with contrast scoring (exemplars of the first class, and every text)
        con = spec.key + " score=contrast"
        t0 = time.perf_counter()
        con_hits = searcher.search_regions_batch(ex_q[0], k=args.k, score="contrast")
        t_contrast = (time.perf_counter() - t0) / len(ex_q[0])
        for q, hits in zip(ex_q[0], con_hits):
            s = image_scores(V, RV, q, "contrast")
            want = set(item_ids[np.argsort(-s, kind="stable")[: args.k]].tolist())
            check.append(len(want & {h.id for h in hits}) / args.k)
        for c, hits in enumerate(searcher.search_regions_texts(texts, k=args.k, score="contrast")):
            s = image_scores(WP, RWP, onehot[c], "contrast", probabilities=True)
            want = set(item_ids[np.argsort(-s, kind="stable")[: args.k]].tolist())
            check.append(len(want & {h.id for h in hits}) / args.k)
        # ... and a concept's exemplar photos given together, as files (max and contrast)
        for sc in ("max", "contrast"):
            for c in range(len(classes)):
                paths = []
                for j, im in enumerate(queries[c]):
                    paths.append(tmp / f"exemplar-{c}-{j}.png")
                    im.save(paths[-1])
                hits = searcher.search_regions(image=[str(p) for p in paths], k=args.k, score=sc)
                s = image_scores(V, RV, ex_set[c], sc if sc == "contrast" else True)
                want = set(item_ids[np.argsort(-s, kind="stable")[: args.k]].tolist())
                check.append(len(want & {h.id for h in hits}) / args.k)
        conse = Searcher(ws, text_bridge="conse")
        text_hits = conse.search_regions_texts([texts[0]], k=args.k)[0]
        s = image_scores(CV, RCV, text_q[0], True)
        want = set(item_ids[np.argsort(-s, kind="stable")[: args.k]].tolist())
        check.append(len(want & {h.id for h in text_hits}) / args.k)
        # how much of the object the box of a correct hit covers (first exemplar of each class, top 20)
        cover = []
        for c in range(len(classes)):
            for h in lib_hits[c][:20]:
                r = rows[row_of[pos[h.id]]]
                if r[1] == c and h.box is not None:
                    ox0, oy0, ox1, oy1 = r[3]
                    bx0, by0, bx1, by1 = h.box
                    inter = max(0, min(ox1, bx1) - max(ox0, bx0)) * max(0, min(oy1, by1) - max(oy0, by0))
                    cover.append(inter / ((ox1 - ox0) * (oy1 - oy0)))

        base = results["whole"]
        ratio = {how: {f: (round(results[spec.key][how][f] / base[how][f], 2) if base[how][f] > 0 else None)
                       for f in ("10%", "20%")} for how in ("exemplar", "exemplar_set", "text", "text_conse")}
        ratio_contrast = {how: {f: (round(results[con][how][f] / base[how][f], 2) if base[how][f] > 0 else None)
                                for f in ("10%", "20%")} for how in ("exemplar", "exemplar_set", "text")}
        n_img = len(item_ids)
        emit({
            "benchmark": "regions_dense",
            "setup": {"corpus_images": n_img, "k": args.k, "random_recall_at_k": round(args.k / n_img, 3),
                      "exemplar_queries": len(classes) * args.exemplars, "text_queries": len(classes), "spec": spec.key,
                      "exemplar_set": f"each concept's {args.exemplars} exemplars as one query: the normalised mean of "
                                      "their vectors (search --image A --image B ...)",
                      "encoder": enc.name, "text_route": "text: the WordNet bridge (default; P(classes under the node the text names)); "
                                    "text_conse: the ConSE bridge (minilm)", "text_matched": dict(zip(classes, matched)),
                      "object_side": "10 % or 20 % of the background's shorter side",
                      "backgrounds": "ImageNet sample, non-animal non-vehicle classes",
                      "objects": OBJECTS_TEXT[args.objects], "concepts": classes},
            "recall_at_k": results,
            "ratio_vs_whole": ratio,
            "ratio_vs_whole_contrast": ratio_contrast,
            "ratio_text_vs_whole_conse": {f: round(results[spec.key]["text"][f] / base["text_conse"][f], 2)
                                          for f in ("10%", "20%")},
            "target_2x_for_10pct": {"exemplar": ratio["exemplar"]["10%"], "text": ratio["text"]["10%"],
                                    "exemplar_contrast": ratio_contrast["exemplar"]["10%"],
                                    "text_contrast": ratio_contrast["text"]["10%"],
                                    "met_by_exemplar": bool((ratio["exemplar"]["10%"] or 0) >= 2.0),
                                    "met_by_text": bool((ratio["text"]["10%"] or 0) >= 2.0),
                                    "met_by_exemplar_contrast": bool((ratio_contrast["exemplar"]["10%"] or 0) >= 2.0),
                                    "met_by_text_contrast": bool((ratio_contrast["text"]["10%"] or 0) >= 2.0),
                                    "exemplar_set": ratio["exemplar_set"]["10%"],
                                    "exemplar_set_contrast": ratio_contrast["exemplar_set"]["10%"],
                                    "met_by_exemplar_set": bool((ratio["exemplar_set"]["10%"] or 0) >= 2.0),
                                    "met_by_exemplar_set_contrast": bool((ratio_contrast["exemplar_set"]["10%"] or 0) >= 2.0)},
            "library_search_agrees_with_numpy": [round(x, 3) for x in check],
            "box_covers_object_fraction_mean": round(float(np.mean(cover)), 3) if cover else None,
            "cost": {
                "whole_embed_s_per_image": None if t_whole is None else round(t_whole / n_img, 4),
                "region_pass_s_per_image": None if t_regions is None else round(t_regions / n_img, 4),
                "time_ratio_vs_whole": None if t_whole is None else round((t_whole + t_regions) / t_whole, 1),
                "regions_per_image": {"mean": round(float(per_image.mean()), 1), "min": int(per_image.min()),
                                      "max": int(per_image.max())},
                "region_store_bytes_per_image": round(_dir_bytes(rstore.root) / n_img),
                "item_store_bytes_per_image": round(_dir_bytes(store.root) / n_img),
                "joint_index_bytes_per_image": round(float(searcher.region_index().info()["bytes_per_vector"])
                                                     * (1 + per_image.mean())),
                "region_search_s_per_query": round(t_search, 4),
                "region_text_search_wordnet_s_per_query": round(t_text, 4),
                "region_search_contrast_s_per_query": round(t_contrast, 4),
            },
            "seconds": {"embed_whole": None if t_whole is None else round(t_whole, 1),
                        "embed_regions": None if t_regions is None else round(t_regions, 1),
                        "index": None if t_index is None else round(t_index, 1)},
            "embed_report": None if rrep is None else rrep.to_dict() | {"error_samples": rrep.to_dict()["error_samples"][:3]},
            "peak_rss_mb": round(peak_rss_mb(), 1), "machine": machine(),
        })
        ws.close()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
