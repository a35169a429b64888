"""The demo pipeline, callable from Python: workspace -> ingest -> embed -> a sanity measure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .embed import embed
from .ingest import ingest
from .workspace import CONFIG_NAME, Workspace

__all__ = ["run_demo", "knn_label_agreement"]


def knn_label_agreement(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose nearest other item (cosine) has the same label: a quick embedding sanity check."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)  # [n, d]
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nn = index.search(x, 2)  # [n, 2]; column 0 is usually the item itself
    self_first = nn[:, 0] == np.arange(len(x))
    other = np.where(self_first, nn[:, 1], nn[:, 0])  # [n]
    return float(np.mean(labels[other] == labels))


def run_demo(
    ws_dir: Path, manifest: Path, *, encoder: str = "efficientnet-lite0",
    progress: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
    positive: str | None = None, budget: int = 300, batch: int = 25, prevalence: float = 0.02,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """Ingest and embed ``manifest`` into a workspace; with ``positive``, also mine that class with the
    simulated annotator (random labelling against assay's strategies) and write the HTML report."""
    ws = Workspace.open(ws_dir) if (Path(ws_dir) / CONFIG_NAME).exists() else Workspace.init(ws_dir, default_encoder=encoder)
    ing = ingest(ws.catalog, [manifest])
    rep = embed(ws, encoder, progress=progress, on_start=on_start)
    ids, vecs = ws.vectors(encoder).load()
    rows = {r.id: r for r in ws.catalog.get_many(ids)}
    labels = np.asarray([str(rows[i].meta.get("label")) for i in ids])
    _, counts = np.unique(labels, return_counts=True)
    chance = float(((counts / counts.sum()) ** 2).sum())
    result: dict[str, Any] = {}
    if positive is not None:
        from .search import build_index
        from .simulate import SimulationConfig, simulate_workspace

        build_index(ws, encoder, bridge=False)
        # A small corpus (--n) at 2 % would leave fewer positives than the seed takes: keep at least 10 to
        # find beyond the seed's 5 (the prevalence used is reported with the results).
        pool = sum(1 for r in rows.values() if str(r.meta.get("split")) != "test") or len(rows)
        prevalence = min(0.5, max(prevalence, 15.0 / pool))
        config = SimulationConfig(
            positive=positive, prevalence=prevalence, budget=budget, batch=batch, seeds=1,
            strategies=("random", "most-likely-positive", "seals:most-likely-positive", "seals:entropy"),
        )
        sim = simulate_workspace(ws, config, encoder=encoder, out=report_dir)
        result["mining"] = {
            "concept": positive,
            "protocol": {k: sim.protocol.get(k) for k in ("prevalence", "budget", "batch", "seed_positives", "seed_negatives")},
            "strategies": {
                name: {k: s.get(k) for k in ("recall", "positives_found", "ap", "labels", "scanned_fraction", "seconds_per_round")}
                for name, s in sim.summary.items()
            },
            "report": None if report_dir is None else str(Path(report_dir) / "index.html"),
        }
    return {
        **result,
        "workspace": str(ws.root),
        "ingest": ing.to_dict(),
        "embed": rep.to_dict(),
        "status": ws.status(),
        "knn_label_agreement": knn_label_agreement(vecs, labels),
        "chance_agreement": chance,
    }
