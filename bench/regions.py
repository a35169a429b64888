"""Benchmark: whole-image vs region search for small objects pasted into real photos; cost by configuration.

Test set: backgrounds are ImageNet-sample photos whose class is neither an animal (ImageNet classes 0-397)
nor a vehicle, boat or aircraft, so that no background already shows a CIFAR-10 concept. Into each corpus
image one CIFAR-10 *train* photo of a random class is pasted at a random place, its side scaled to 10 % (half
the corpus) or 20 % (the other half) of the background's shorter side. Every image carries exactly one
pasted object, so pasting itself is no cue. For each of the 10 classes, the positives are the images that
carry an object of that class.

Queries: by exemplar (``--exemplars`` unpasted CIFAR-10 *test* photos per class, one query each, the photo's
whole-image embedding) and by text (``a photo of a <class>`` through the ConSE bridge of efficientnet-lite0
with MiniLM). recall@k = share of a class's positives (of one object size) in the top k images.

``--objects imagenet`` pastes, instead of CIFAR-10 photos, centre square crops of ImageNet-sample photos
(sharp, full-resolution photos, where CIFAR-10's are 32 px) of 8 animal concepts, each a group of ImageNet
classes (``IMAGENET_CONCEPTS``: dog, bird, insect, monkey, snake, fish, cat, lizard; all animal classes, so no
background shows one). The sample has one photo per class: ``--exemplars`` photos of each concept are held
out, never pasted, and are its exemplar queries (whole photos); the others are pasted, several times each
where the corpus needs more. Text queries are ``a photo of a <concept>``.

Whole-image search ranks images by their own vector; region search by the max over the image and its
regions. The corpus is embedded once with the largest spec (``--spec``, default ``grid:2,3,4``); smaller grids
are its slot subsets (the tiles of grid:2 are the same pixels whichever spec they come from), scored exactly
in numpy; the full spec's figures are cross-checked against :class:`assay.search.Searcher` on the flat region
index. ``--overlap-spec`` (e.g. ``grid:3:overlap=0.5``) embeds one more configuration with overlapping tiles.

Cost: seconds per image of ``assay embed`` (whole) and of the region pass, per configuration, measured on
``--cost-n`` images, and bytes per image of the stores (fp16 vectors + ImageNet logits) and of a flat index.

    python bench/regions.py --n 200            # quick
    python bench/regions.py --n 500            # the reported run (about 12 min on 2 cores)
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

# ImageNet-1k vehicle / boat / aircraft / wheel classes (by index): never used as backgrounds.
_VEHICLES = {
    403, 404, 405, 407, 408, 436, 444, 466, 468, 472, 479, 484, 510, 511, 554, 555, 569, 573, 575, 576, 581, 586,
    595, 603, 609, 612, 625, 627, 628, 654, 656, 661, 665, 670, 671, 675, 693, 694, 705, 717, 724, 734, 751, 757,
    779, 780, 803, 814, 817, 833, 847, 864, 867, 870, 871, 874, 880, 895, 908, 913, 914,
}


# Concepts for ``--objects imagenet``: groups of ImageNet-1k animal classes (by index; all < 398, so never a
# background) and the word a text query names them by. One sample photo per class, so a group of n classes has
# n photos: some are held out as exemplar queries, the rest are pasted (more than once where the corpus needs it).
IMAGENET_CONCEPTS = {
    "dog": list(range(151, 269)),
    "bird": list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147)),
    "insect": list(range(300, 327)),
    "monkey": list(range(365, 385)),
    "snake": list(range(52, 69)),
    "fish": list(range(0, 7)) + list(range(389, 398)),
    "cat": list(range(281, 294)),
    "lizard": list(range(38, 49)),
}


OBJECTS_TEXT = {
    "cifar": "CIFAR-10 train photos; exemplar queries: CIFAR-10 test photos",
    "imagenet": "centre square crops of ImageNet-sample photos of each concept's classes; exemplar queries: "
                "held-out sample photos of the concept (never pasted), whole",
}


def _sample_photos(tar_path: Path):
    """Every photo of the ImageNet sample, in class order: [(file name, JPEG bytes)]."""
    import tarfile

    with tarfile.open(tar_path) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(".jpeg")),
                         key=lambda m: Path(m.name).name)
        return [(Path(m.name).name, tf.extractfile(m).read()) for m in members]


def _backgrounds(tar_path: Path):
    return [(name, b) for idx, (name, b) in enumerate(_sample_photos(tar_path))
            if idx >= 398 and idx not in _VEHICLES]


def _cifar(npz: Path):
    z = np.load(npz, allow_pickle=False)
    return z["jpeg"], z["offsets"], z["label"], z["split"], [str(c) for c in z["classes"]]


def _decode(b: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(b)).convert("RGB")


def _centre_square(img):
    s = min(img.size)
    x0, y0 = (img.size[0] - s) // 2, (img.size[1] - s) // 2
    return img.crop((x0, y0, x0 + s, y0 + s))


def _object_sources(data: Path, objects: str, exemplars: int, rng: np.random.Generator):
    """(classes, pick(c) -> a PIL photo to paste, queries() -> {class: [exemplar query photos]}).

    cifar: CIFAR-10 *train* photos are pasted, *test* photos are the queries. imagenet: the ImageNet-sample
    photos of each concept's classes, centre square crops pasted; ``exemplars`` photos per concept are held
    out (never pasted) and used whole as the queries.
    """
    if objects == "cifar":
        jpeg, off, label, split, classes = _cifar(data / "cifar10" / "cifar10_jpeg_bytes.npz")
        train = np.nonzero(split == 0)[0]
        test = np.nonzero(split == 1)[0]

        def pick(c):
            j = int(rng.choice(train[label[train] == c]))
            return _decode(jpeg[off[j] : off[j + 1]].tobytes())

        def queries():  # drawn after the pasting, as the reported runs did (same seed, same corpus)
            out = {}
            for c in range(len(classes)):
                chosen = rng.choice(test[label[test] == c], size=exemplars, replace=False)
                out[c] = [_decode(jpeg[off[j] : off[j + 1]].tobytes()) for j in chosen]
            return out

        return classes, pick, queries
    if objects != "imagenet":
        raise SystemExit(f"--objects: expected cifar or imagenet, got {objects!r}")
    photos = _sample_photos(data / "imagenet-sample" / "imagenet-sample.tar")
    classes = list(IMAGENET_CONCEPTS)
    pasted, queries = {}, {}
    for c, name in enumerate(classes):
        idx = rng.permutation(IMAGENET_CONCEPTS[name])
        if len(idx) <= exemplars:
            raise SystemExit(f"concept {name} has {len(idx)} photos: fewer than --exemplars {exemplars} + 1")
        queries[c] = [_decode(photos[i][1]) for i in idx[:exemplars]]
        pasted[c] = [int(i) for i in idx[exemplars:]]

    def pick(c):
        return _centre_square(_decode(photos[int(rng.choice(pasted[c]))][1]))

    return classes, pick, lambda: queries


def _make_corpus(data: Path, out: Path, n: int, exemplars: int, rng: np.random.Generator, objects: str = "cifar"):
    """Write n pasted images; return (rows [(file, class, frac, box)], query photos {class: [PIL]}, classes)."""
    from PIL import Image

    classes, pick, queries = _object_sources(data, objects, exemplars, rng)
    bgs = _backgrounds(data / "imagenet-sample" / "imagenet-sample.tar")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    order = rng.permutation(len(bgs))
    for i in range(n):
        name, b = bgs[order[i % len(bgs)]]
        bg = _decode(b)
        if (i // len(bgs)) % 2 == 1:
            bg = bg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # a background used twice is mirrored
        c = int(rng.integers(0, len(classes)))
        obj = pick(c)
        frac = 0.1 if i % 2 == 0 else 0.2
        side = max(8, int(round(frac * min(bg.size))))
        obj = obj.resize((side, side), Image.Resampling.BICUBIC)
        x = int(rng.integers(0, bg.size[0] - side + 1))
        y = int(rng.integers(0, bg.size[1] - side + 1))
        bg.paste(obj, (x, y))
        fname = f"img_{i:05d}.jpg"
        bg.save(out / fname, quality=90)
        rows.append((fname, c, frac, (x, y, x + side, y + side)))
    return rows, queries(), classes


def _recall(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, kind="stable")[:k]  # [k] row positions
    return float(positives[top].sum() / max(positives.sum(), 1))


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=500, help="corpus images (half with 10 %% objects, half with 20 %%)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--exemplars", type=int, default=5, help="exemplar queries per class")
    ap.add_argument("--spec", default="grid:2,3,4", help="the region spec embedded for the corpus")
    ap.add_argument("--subsets", default="grid:2;grid:3;grid:2,3;grid:4;grid:3,4",
                    help="';'-separated sub-grids of --spec scored from its slots")
    ap.add_argument("--overlap-spec", default="grid:3:overlap=0.5", help="one more spec with overlapping tiles ('' = none)")
    ap.add_argument("--cost-n", type=int, default=30, help="images for the per-configuration timing")
    ap.add_argument("--cost-specs", default="grid:2;grid:2,3;grid:2,3,4", help="';'-separated specs timed on --cost-n images")
    ap.add_argument("--objects", choices=("cifar", "imagenet"), default="cifar",
                    help="what is pasted: CIFAR-10 photos (10 classes) or centre crops of ImageNet-sample photos "
                         "(8 animal concepts: dog, bird, insect, monkey, snake, fish, cat, lizard)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="keep the workspace in this folder")
    args = ap.parse_args()
    data = shared_data(args.data)
    if data is None:
        emit({"benchmark": "regions", "skipped": "shared data not found (set ASSAY_SHARED_DATA)"})
        return
    from assay import Workspace, embed, ingest
    from assay.embed import load_encoder
    from assay.regions import embed_regions, parse_region_spec, region_ids, region_store
    from assay.search import Searcher, _class_text_embeddings, build_index
    from assay.zeroshot import conse_image_vectors

    rng = np.random.default_rng(args.seed)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="assay-bench-regions-"))
    try:
        t0 = time.perf_counter()
        rows, queries, classes = _make_corpus(data, tmp / "imgs", args.n, args.exemplars, rng, args.objects)
        t_make = time.perf_counter() - t0
        ws = Workspace.init(tmp / "ws")
        ingest(ws.catalog, [tmp / "imgs"])
        t0 = time.perf_counter()
        erep = embed(ws, batch_size=32)
        t_whole = time.perf_counter() - t0
        spec = parse_region_spec(args.spec)
        t0 = time.perf_counter()
        rrep = embed_regions(ws, spec=spec, batch_size=32)
        t_regions = time.perf_counter() - t0
        t0 = time.perf_counter()
        brep = build_index(ws, kind="flat")
        t_index = time.perf_counter() - t0

        enc = load_encoder(ws.default_encoder)
        uri_row = {str(tmp / "imgs" / r[0]): k for k, r in enumerate(rows)}
        ids = ws.catalog.ids()
        uris = ws.catalog.uris(ids)
        pos_of_id = {int(i): uri_row[uris[int(i)]] for i in ids}
        store, rstore = ws.vectors(), region_store(ws)
        item_ids = np.asarray(sorted(pos_of_id), dtype=np.int64)
        cls = np.asarray([rows[pos_of_id[int(i)]][1] for i in item_ids])  # [N]
        frac = np.asarray([rows[pos_of_id[int(i)]][2] for i in item_ids])  # [N]
        R = spec.n_regions
        V = store.get(item_ids)  # [N, d]
        rid = region_ids(item_ids[:, None], np.arange(R)[None, :])  # [N, R]
        RV = rstore.get(rid.ravel()).reshape(len(item_ids), R, -1)  # [N, R, d]
        L = store.get(item_ids, extra="imagenet_logits", dtype=np.float16)
        RL = rstore.get(rid.ravel(), extra="imagenet_logits", dtype=np.float16)
        class_emb, _ = _class_text_embeddings(ws)
        CV = conse_image_vectors(L, class_emb)  # [N, 384]
        RCV = conse_image_vectors(RL, class_emb).reshape(len(item_ids), R, -1)  # [N, R, 384]

        # slot ranges of each scale inside --spec
        slot_of_scale, start = {}, 0
        for s in spec.scales:
            slot_of_scale[s] = np.arange(start, start + s * s)
            start += s * s
        configs = {"whole": np.zeros(0, np.int64)}
        for sub in [x for x in args.subsets.split(";") if x.strip()] + [spec.key]:
            ss = parse_region_spec(sub)
            if set(ss.scales) <= set(spec.scales) and ss.overlap == spec.overlap and ss.square == spec.square:
                configs[ss.key] = np.concatenate([slot_of_scale[s] for s in ss.scales])

        ex_q = {c: enc.embed_images(queries[c]) for c in range(len(classes))}  # [exemplars, d] per class
        searcher = Searcher(ws)
        text_q, _route = searcher.vectors_for_texts([f"a photo of a {c}" for c in classes])  # [10, 384]

        def evaluate(item_vecs, region_vecs, slots, qs_by_class, k):
            out = {0.1: [], 0.2: []}
            for c, qs in qs_by_class.items():
                for q in np.atleast_2d(qs):
                    s = item_vecs @ q  # [N]
                    if len(slots):
                        s = np.maximum(s, (region_vecs[:, slots, :] @ q).max(axis=1))  # [N]
                    for f in (0.1, 0.2):
                        out[f].append(_recall(s, (cls == c) & (frac == f), k))
            return {f"{int(f * 100)}%": round(float(np.mean(v)), 3) for f, v in out.items()}

        results = {}
        for name, slots in configs.items():
            results[name] = {
                "exemplar": evaluate(V, RV, slots, ex_q, args.k),
                "text": evaluate(CV, RCV, slots, {c: text_q[c] for c in range(len(classes))}, args.k),
            }
        # cross-check: the library's region search on the flat joint index gives the same ranking
        check = []
        for c in range(3):
            hits = searcher.search_regions_batch(ex_q[c][:1], k=args.k)[0]
            got = np.isin(item_ids, [h.id for h in hits])
            s = np.maximum(V @ ex_q[c][0], (RV @ ex_q[c][0]).max(axis=1))
            want = np.zeros(len(item_ids), bool)
            want[np.argsort(-s, kind="stable")[: args.k]] = True
            check.append(float((got & want).sum() / args.k))
        text_hits = searcher.search_regions_texts([f"a photo of a {classes[0]}"], k=args.k)[0]
        s = np.maximum(CV @ text_q[0], (RCV @ text_q[0]).max(axis=1))
        want = set(item_ids[np.argsort(-s, kind="stable")[: args.k]].tolist())
        check.append(len(want & {h.id for h in text_hits}) / args.k)
        # did the best region of a hit contain the object? (exemplar queries, full spec, 10 % objects)
        box_hits = []
        for c in range(len(classes)):
            for h in searcher.search_regions_batch(ex_q[c][:1], k=20)[0]:
                r = rows[pos_of_id[h.id]]
                if r[1] == c and h.box is not None:
                    ox0, oy0, ox1, oy1 = r[3]
                    bx0, by0, bx1, by1 = h.box
                    inter = max(0, min(ox1, bx1) - max(ox0, bx0)) * max(0, min(oy1, by1) - max(oy0, by0))
                    box_hits.append(inter / ((ox1 - ox0) * (oy1 - oy0)))

        # ------------------------------------------------------------------ cost by configuration
        cost = {}
        m = min(args.cost_n, args.n)
        cws = Workspace.init(tmp / "cost-ws")
        sub = tmp / "cost-imgs"
        sub.mkdir()
        for r in rows[:m]:
            shutil.copy(tmp / "imgs" / r[0], sub / r[0])
        ingest(cws.catalog, [sub])
        t0 = time.perf_counter()
        embed(cws, batch_size=32)
        whole_s = (time.perf_counter() - t0) / m
        d = int(store.dim)
        per_vec_store = d * 2 + 1000 * 2 + 8  # fp16 vector + fp16 ImageNet logits + int64 id
        per_vec_index = float(brep["regions"]["index"]["bytes_per_vector"])
        cost["whole"] = {"regions_per_image": 0, "embed_s_per_image": round(whole_s, 4),
                         "store_bytes_per_image": per_vec_store, "index_bytes_per_image": round(per_vec_index)}
        cost_specs = [x for x in args.cost_specs.split(";") if x.strip()] + ([args.overlap_spec] if args.overlap_spec else [])
        for key in cost_specs:
            cs = parse_region_spec(key)
            t0 = time.perf_counter()
            embed_regions(cws, spec=cs, batch_size=32, reset=True)
            rs = (time.perf_counter() - t0) / m
            cost[cs.key] = {
                "regions_per_image": cs.n_regions, "embed_s_per_image": round(whole_s + rs, 4),
                "region_pass_s_per_image": round(rs, 4),
                "store_bytes_per_image": per_vec_store * (1 + cs.n_regions),
                "index_bytes_per_image": round(per_vec_index * (1 + cs.n_regions)),
                "time_ratio_vs_whole": round((whole_s + rs) / whole_s, 2),
            }
        measured_store = _dir_bytes(rstore.root) / len(item_ids) + _dir_bytes(store.root) / len(item_ids)

        # ------------------------------------------------------------------ overlapping configuration on the corpus
        if args.overlap_spec:
            ospec = parse_region_spec(args.overlap_spec)
            t0 = time.perf_counter()
            embed_regions(ws, spec=ospec, batch_size=32, reset=True)
            t_over = time.perf_counter() - t0
            rstore = region_store(ws)  # a fresh store object: the old one's row locator predates the reset
            R2 = ospec.n_regions
            rid2 = region_ids(item_ids[:, None], np.arange(R2)[None, :])
            RV2 = rstore.get(rid2.ravel()).reshape(len(item_ids), R2, -1)
            RCV2 = conse_image_vectors(rstore.get(rid2.ravel(), extra="imagenet_logits", dtype=np.float16),
                                       class_emb).reshape(len(item_ids), R2, -1)
            allslots = np.arange(R2)
            results[ospec.key] = {
                "exemplar": evaluate(V, RV2, allslots, ex_q, args.k),
                "text": evaluate(CV, RCV2, allslots, {c: text_q[c] for c in range(len(classes))}, args.k),
                "embed_seconds_corpus": round(t_over, 1),
            }

        base = results["whole"]
        ratios = {
            name: {how: {f: (round(r[how][f] / base[how][f], 2) if base[how][f] > 0 else None) for f in ("10%", "20%")}
                   for how in ("exemplar", "text")}
            for name, r in results.items() if name != "whole"
        }
        best10 = max((ratios[nm]["exemplar"]["10%"] or 0, nm) for nm in ratios)
        emit({
            "benchmark": "regions",
            "setup": {"corpus_images": len(item_ids), "positives_per_class_and_size": round(len(item_ids) / (2 * len(classes)), 1),
                      "k": args.k, "random_recall_at_k": round(args.k / len(item_ids), 3),
                      "exemplar_queries": len(classes) * args.exemplars, "text_queries": len(classes), "embedded_spec": spec.key,
                      "encoder": enc.name, "text_route": "ConSE bridge (minilm)",
                      "object_side": "10 % or 20 % of the background's shorter side",
                      "backgrounds": "ImageNet sample, non-animal non-vehicle classes",
                      "objects": OBJECTS_TEXT[args.objects], "concepts": classes},
            "recall_at_k": results,
            "ratio_vs_whole": ratios,
            "target_region_recall_at_least_2x_whole_for_10pct_exemplar": {"best_config": best10[1], "ratio": best10[0],
                                                                          "met": bool(best10[0] >= 2.0)},
            "library_search_agrees_with_numpy": [round(x, 3) for x in check],
            "best_region_covers_object_fraction_mean": round(float(np.mean(box_hits)), 3) if box_hits else None,
            "cost": cost,
            "measured_store_bytes_per_image_full_spec": round(measured_store),
            "seconds": {"make_corpus": round(t_make, 1), "embed_whole": round(t_whole, 1),
                        "embed_regions": round(t_regions, 1), "index": round(t_index, 1)},
            "embed_report": {"whole_items_per_s": erep.to_dict()["items_per_s"], "regions": rrep.to_dict()["regions"]},
            "peak_rss_mb": round(peak_rss_mb(), 1), "machine": machine(),
        })
        ws.close()
        cws.close()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
