"""`assay simulate`: many mining rounds against ground truth, for several strategies and seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import JsonOpt, WorkspaceOpt, console, errors_to_exit, open_workspace, out, print_json


def simulate(
    positive: Annotated[str, typer.Option("--positive", help="The concept: the class whose items are positive.")],
    workspace: WorkspaceOpt = None,
    label_column: Annotated[str, typer.Option("--label-column", help="Item metadata column holding the class.")] = "label",
    split_column: Annotated[str, typer.Option("--split-column", help="Item metadata column holding the split.")] = "split",
    test_split: Annotated[str, typer.Option("--test-split", help="Split value of the held-out items (AP only, never labelled).")] = "test",
    test_fraction: Annotated[float | None, typer.Option("--test-fraction", help="For a corpus without a split: hold out this random share of the items as the test split (split columns are then ignored).")] = None,
    prevalence: Annotated[float, typer.Option("--prevalence", help="Share of positives kept in the pool.")] = 0.005,
    budget: Annotated[int, typer.Option("--budget", help="Labels in all, the seed included.")] = 1000,
    batch: Annotated[int, typer.Option("--batch", help="Items proposed per round.")] = 100,
    seeds: Annotated[int, typer.Option("--seeds", help="Random seeds (0 .. N-1); values are means over seeds.")] = 3,
    strategies: Annotated[str, typer.Option("--strategies", help="Comma-separated strategy names.")] = (
        "random,entropy,seals:entropy,most-likely-positive,seals:most-likely-positive"
    ),
    proxy: Annotated[str, typer.Option("--proxy", help="logistic | mlp | ensemble | svm")] = "logistic",
    seals_k: Annotated[int, typer.Option("--seals-k", help="Neighbours per labelled item in a SEALS pool.")] = 100,
    seals_k_positive: Annotated[int | None, typer.Option("--seals-k-positive", help="Neighbours per labelled positive in a SEALS pool (default: 4 x --seals-k; equal to it: the paper's pool).")] = None,
    seed_positives: Annotated[int, typer.Option("--seed-positives", help="Positives in the seed.")] = 5,
    seed_negatives: Annotated[int, typer.Option("--seed-negatives", help="Negatives in the seed.")] = 95,
    novelty_threshold: Annotated[float | None, typer.Option("--novelty-threshold", help="Cosine below which a new positive counts as novel (default: the median nearest-positive cosine).")] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", help="Encoder whose embeddings to use.")] = None,
    truth: Annotated[Path | None, typer.Option("--truth", help="Ground truth CSV (id or uri, label[, split]) instead of the item metadata.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write rounds.csv, summary.json, PNG curves and index.html here.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Simulate mining a rare concept with an oracle, following the SEALS paper's protocol."""
    from ..errors import InputError
    from ..report import prevalence_text
    from ..simulate import SimulationConfig, simulate_workspace

    with errors_to_exit():
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        cfg = SimulationConfig(
            positive=positive, prevalence=prevalence, budget=budget, batch=batch, seeds=seeds, strategies=tuple(names),
            proxy=proxy, seals_k=seals_k, seals_k_positive=seals_k_positive, seed_positives=seed_positives, seed_negatives=seed_negatives,
            novelty_threshold=novelty_threshold,
        )
        try:
            cfg.validate()
        except InputError as exc:  # name the options as typed, not the config's fields
            raise InputError(_as_options(str(exc))) from None
        if test_fraction is not None and not (isinstance(test_fraction, float) and 0.0 < test_fraction < 1.0):
            raise InputError(f"--test-fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
        if out_dir is not None:
            from ..errors import check_folder

            check_folder(out_dir, f"--out {out_dir}")  # checked now, not after the whole simulation
        ws = open_workspace(workspace)
        progress = (lambda msg: console.print(msg, highlight=False, markup=False)) if not json_ else None
        result = simulate_workspace(
            ws, cfg, label_column=label_column, split_column=split_column, test_split=test_split, encoder=encoder,
            truth=truth, out=out_dir, progress=progress, test_fraction=test_fraction,
        )
        if json_:
            print_json(result.to_json())
            return
        p = result.protocol
        out.print(
            f"{positive!r}: {p['pool_positives']:.0f} positives in a corpus of {p['corpus_size']:.0f} "
            f"(prevalence {prevalence_text(p)}), budget {p['budget']} labels (seed {p['seed_positives']}+{p['seed_negatives']} "
            f"included), batches of {p['batch']}, {len(p['seeds'])} seed(s); AP on {p['test_size']} test items"
        )
        out.print(f"{'strategy':<32} {'AP':>6} {'recall':>7} {'found':>7} {'labels':>6} {'scanned':>8} {'s/round':>8}")
        for name, s in result.summary.items():
            out.print(
                f"{name:<32} {_f(s['ap'], 6, 3)} {_f(s['recall'], 7, 3)} {_f(s['positives_found'], 7, 1)} {s['labels']:>6d} "
                f"{_f(s['scanned_fraction'], 8, 4)} {_f(s['seconds_per_round'], 8, 3)}"
            )
        if out_dir is not None:
            out.print(f"report: {out_dir / 'index.html'}")


def _f(v: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


_OPTION_NAMES = ("seals_k_positive", "seals_k", "seed_positives", "seed_negatives", "novelty_threshold", "prevalence", "budget", "batch",
                 "seeds", "positive", "proxy")


def _as_options(message: str) -> str:
    """``seals_k must be ...`` -> ``--seals-k must be ...``: a message about a config field, in option names."""
    import re

    for name in _OPTION_NAMES:
        message = re.sub(rf"(?<![\w-]){name}(?= must| \()", "--" + name.replace("_", "-"), message)
    return message
