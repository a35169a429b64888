"""Diagnosis for region search (issue 10): how much could tiles find, and what stops them?

On the pasted-object corpus of bench/regions.py (CIFAR-10 photos pasted at 10 % or 20 % of the side into
ImageNet-sample photos; exemplar queries are unpasted CIFAR-10 test photos), recall@k (k = N / 5) of:

* ``whole``: the whole-image embedding;
* ``oracle crop xS``: one crop per image, square, centred on the pasted object, S times its side (an
  upper bound for any tiling that happened to frame the object);
* for each grid spec: ``max`` over the whole image and the tiles (what assay does); ``oracle tile`` (only
  the tile whose centre is nearest the object's centre: perfect selection among the grid's tiles);
  ``csls`` (each tile's score minus beta x its mean similarity to its 10 nearest tiles of other images, a
  hubness correction); ``centred`` (tiles centred on their mean before the cosine).

Prints one JSON object. About 5 minutes for --n 300 and two grids on 2 cores.

    python bench/regions_oracle.py --n 300 --specs "grid:4;grid:6"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _util import emit, machine, shared_data
from regions import _make_corpus, _recall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--specs", default="grid:4;grid:6")
    ap.add_argument("--exemplars", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = shared_data(args.data)
    if data is None:
        emit({"benchmark": "regions_oracle", "skipped": "shared data not found (set ASSAY_SHARED_DATA)"})
        return
    import tempfile

    from PIL import Image

    from assay import get_encoder
    from assay.regions import parse_region_spec, tile_boxes

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="assay-regions-oracle-"))
    rows, queries, _classes = _make_corpus(data, tmp / "imgs", args.n, args.exemplars, rng)
    enc = get_encoder("efficientnet-lite0")
    enc.load()
    ims = [Image.open(tmp / "imgs" / r[0]).convert("RGB") for r in rows]
    cls = np.array([r[1] for r in rows])
    frac = np.array([r[2] for r in rows])

    def emb(crops):
        out = []
        for s in range(0, len(crops), 64):
            out.append(enc.embed_batch(np.stack([enc.preprocess(c) for c in crops[s : s + 64]])).embeddings)
        return np.concatenate(out)

    ex_q = {c: enc.embed_images(queries[c]) for c in range(len(_classes))}
    k = max(10, args.n // 5)

    def ev(score_fn):
        res = {0.1: [], 0.2: []}
        for c in range(len(_classes)):
            for q in ex_q[c]:
                s = score_fn(q)  # [N]
                for f in (0.1, 0.2):
                    res[f].append(_recall(s, (cls == c) & (frac == f), k))
        return {f"{int(f * 100)}%": round(float(np.mean(v)), 3) for f, v in res.items()}

    W = emb(ims)  # [N, d]
    results = {"whole": ev(lambda q: W @ q)}
    for scale in (1.0, 1.5, 2.5):
        crops = []
        for im, r in zip(ims, rows):
            x0, y0, x1, y1 = r[3]
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * scale / 2
            crops.append(im.crop((max(0, cx - half), max(0, cy - half), min(im.size[0], cx + half),
                                  min(im.size[1], cy + half))))
        O = emb(crops)
        results[f"oracle crop x{scale}"] = ev(lambda q, O=O: O @ q)
    centres = np.array([((r[3][0] + r[3][2]) / 2, (r[3][1] + r[3][3]) / 2) for r in rows])  # [N, 2]
    for key in [s for s in args.specs.split(";") if s.strip()]:
        spec = parse_region_spec(key)
        boxes = np.stack([tile_boxes(im.size[0], im.size[1], spec)[:, :4] for im in ims])  # [N, R, 4]
        T = emb([im.crop(tuple(int(v) for v in b)) for im, bb in zip(ims, boxes) for b in bb]).reshape(len(ims), -1, W.shape[1])
        flat = T.reshape(-1, T.shape[2])
        tc = np.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)  # [N, R, 2]
        best = np.argmin(((tc - centres[:, None, :]) ** 2).sum(-1), 1)  # [N]
        OT = T[np.arange(len(ims)), best]
        S = flat @ flat.T
        own = np.repeat(np.arange(len(ims)), T.shape[1])
        S[own[:, None] == own[None, :]] = -1
        hub = np.sort(S, axis=1)[:, -10:].mean(1).reshape(len(ims), -1)  # [N, R]
        del S
        C = T - flat.mean(0)
        C /= np.linalg.norm(C, axis=2, keepdims=True)
        results[key] = {
            "tiles": int(T.shape[1]),
            "max": ev(lambda q: np.maximum(W @ q, (T @ q).max(1))),
            "oracle tile": ev(lambda q: OT @ q),
            "csls beta 0.5": ev(lambda q: (T @ q - 0.5 * hub).max(1)),
            "csls beta 1.0": ev(lambda q: (T @ q - 1.0 * hub).max(1)),
            "centred": ev(lambda q: (C @ q).max(1)),
        }
    emit({"benchmark": "regions_oracle", "n": args.n, "k": k, "random_recall": round(k / args.n, 3),
          "exemplar_queries": len(_classes) * args.exemplars, "recall_at_k": results,
          "seconds": round(time.perf_counter() - t_start, 1), "machine": machine()})


if __name__ == "__main__":
    main()
