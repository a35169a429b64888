"""Benchmark: precision@100 of text queries through the zero-shot bridges of efficientnet-lite0, side by side.

Each CIFAR-10 class name is a text query. Two routes score every embedded photo from its stored ImageNet logits:
* **wordnet** (the default route of `assay search --text`): the query names a WordNet node above the ImageNet
  classes (matched by MiniLM), and a photo scores by the probability of the classes under it;
* **conse**: the cosine between the query's MiniLM embedding and the photo's ConSE vector (its top ImageNet
  classes' name embeddings, weighted by the class probabilities).
Precision@100 = share of the 100 best-scored photos that belong to the class; random retrieval gives 0.1.
Prints one JSON object.

    python bench/zeroshot.py --workspace /path/to/cifar-workspace     # all photos already embedded
    python bench/zeroshot.py --n 3000                                 # builds a workspace of n photos
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import emit, machine, peak_rss_mb, shared_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--top-t", type=int, default=10)
    args = ap.parse_args()
    from assay import Workspace, embed, ingest
    from assay.datasets import write_cifar10
    from assay.embed import load_encoder
    from assay.search import Searcher, _class_text_embeddings
    from assay.zeroshot import class_set_scores, conse_scores

    with tempfile.TemporaryDirectory() as d:
        if args.workspace:
            ws = Workspace.open(args.workspace)
        else:
            data = shared_data(args.data)
            if data is None:
                emit({"benchmark": "zeroshot", "skipped": "shared data not found"})
                return
            manifest = write_cifar10(data / "cifar10" / "cifar10_jpeg_bytes.npz", Path(d) / "c", n=args.n)
            ws = Workspace.init(Path(d) / "ws")
            ingest(ws.catalog, [manifest])
            embed(ws)
        store = ws.vectors("efficientnet-lite0")
        ids, logits = store.load(extra="imagenet_logits", dtype=np.float16)
        labels = np.asarray([r.meta["label"] for r in ws.catalog.iter_items(ids)])
        class_emb, _ = _class_text_embeddings(ws)
        text = load_encoder("minilm")
        classes = sorted(set(labels.tolist()))
        searcher = Searcher(ws, "efficientnet-lite0")
        routes: dict[str, dict] = {}
        for route in ("wordnet", "conse"):
            t0 = time.perf_counter()
            per_template, matched = {}, {}
            for name, template in (("prompt", "a photo of a {}"), ("plain_name", "{}")):
                texts = [template.format(c) for c in classes]
                if route == "conse":
                    scores = conse_scores(text.embed_texts(texts), logits, class_emb, top_t=args.top_t)  # [10, n]
                else:
                    w, m = searcher.class_weights(texts)  # [10, 1000]
                    scores = class_set_scores(logits, w).T  # [10, n]
                    matched[name] = dict(zip(classes, m))
                out = {}
                for c, s in zip(classes, scores):
                    top = np.argsort(-s, kind="stable")[: args.k]
                    out[c] = round(float(np.mean(labels[top] == c)), 3)
                per_template[name] = {"precision_at_k": out, "mean_precision_at_k": round(float(np.mean(list(out.values()))), 3)}
            routes[route] = {**per_template, **({"matched": matched} if matched else {}),
                             "seconds_all_queries": round(time.perf_counter() - t0, 2)}
        prevalence = {c: float(np.mean(labels == c)) for c in classes}
        emit({
            "benchmark": "zeroshot",
            "method": {"wordnet": "P(ImageNet classes under the WordNet node the text names; MiniLM matches the node)",
                       "conse": "ConSE (efficientnet-lite0 ImageNet scores + all-MiniLM-L6-v2 class names)"},
            "items": int(len(ids)), "k": args.k, "top_t": args.top_t, "routes": routes,
            "ratio_wordnet_vs_conse": round(routes["wordnet"]["prompt"]["mean_precision_at_k"]
                                            / max(routes["conse"]["prompt"]["mean_precision_at_k"], 1e-9), 3),
            "random_baseline": round(float(np.mean(list(prevalence.values()))), 3),
            "peak_rss_mb": round(peak_rss_mb(), 1), "machine": machine(),
        })


if __name__ == "__main__":
    main()
