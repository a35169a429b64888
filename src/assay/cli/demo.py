"""`assay demo`: the main job on the embedded defaults, end to end, on real data that needs no download."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import errors_to_exit, out, print_json, progress_bar

_SEED, _BATCH = 100, 25  # the simulated annotator's seed (5 + 95 labels) and batch, as run_demo mines


def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo data and workspace.")] = Path("assay-demo"),
    data: Annotated[Optional[Path], typer.Option("--data", help="Folder with cifar10/ (the shared data); default: scikit-learn's bundled digits.")] = None,
    n: Annotated[int, typer.Option("--n", min=10, help="With --data: how many CIFAR-10 photos to use.")] = 2000,
    encoder: Annotated[str, typer.Option("--encoder")] = "efficientnet-lite0",
    positive: Annotated[Optional[str], typer.Option("--positive", help="The class to mine (default: digit-3, or truck with --data).")] = None,
    budget: Annotated[int, typer.Option("--budget", help="Labels the simulated annotator may give, seed included (at least 125: a seed of 100 and a round of 25).")] = 300,
    no_mining: Annotated[bool, typer.Option("--no-mining", help="Only ingest and embed.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Build a workspace from a real dataset, ingest and embed it, and show what the embeddings know."""
    from ..datasets import DIGIT_CLASSES, cifar10_classes, write_cifar10, write_digits
    from ..demo import run_demo
    from ..errors import InputError, NotFoundError, check_folder

    with errors_to_exit():
        t0 = time.perf_counter()
        from ..encoders.base import get_encoder

        get_encoder(encoder)  # an unknown name fails before any data is written
        check_folder(out_dir, f"--out {out_dir}")
        # everything the mining needs is checked before any data is written, embedded or indexed
        npz = Path(data) / "cifar10" / "cifar10_jpeg_bytes.npz" if data is not None else None
        if npz is not None and not npz.exists():
            raise NotFoundError(f"--data {data} holds no cifar10/cifar10_jpeg_bytes.npz")
        classes = cifar10_classes(npz) if npz is not None else list(DIGIT_CLASSES)
        if not no_mining:
            if positive is not None and positive not in classes:
                raise InputError(f"--positive {positive!r} is not a class of the dataset; expected one of: "
                                 f"{', '.join(classes)}")
            least = _SEED + _BATCH
            if budget < least:
                raise InputError(f"--budget {budget} is too few labels: the simulated annotator's seed takes {_SEED} "
                                 f"(5 positive, 95 negative) and a round {_BATCH}; give --budget {least} or more")
            if data is not None and budget > n // 2:
                # the simulated pool is about 3/4 of --n (a test split is held out and the concept made rare)
                raise InputError(f"--budget {budget} is too many labels for --n {n} photos: use --n {2 * budget} or "
                                 f"more, or --budget {max(least, n // 2)} or less")
        if npz is not None:
            manifest = write_cifar10(npz, out_dir / "data", n=n)
            dataset = f"CIFAR-10 ({n} photos)"
        else:
            manifest = write_digits(out_dir / "data")
            dataset = "scikit-learn digits (1,797 real scans)"
        with progress_bar("demo", enabled=not json_) as (start, advance):
            concept = None if no_mining else (positive or ("truck" if data is not None else "digit-3"))
            result = run_demo(
                out_dir / "workspace", manifest, encoder=encoder, progress=advance, on_start=start,
                positive=concept, budget=budget, report_dir=out_dir / "report",
            )
        result["dataset"] = dataset
        result["seconds_total"] = round(time.perf_counter() - t0, 2)
        if json_:
            print_json(result)
            return
        out.print(f"dataset      {dataset}")
        out.print(f"workspace    {result['workspace']}")
        ing = result["ingest"]
        out.print(f"ingest       {ing['new']} new items, {ing['errors']} errors, {ing['items_per_s']:.0f} items/s")
        emb = result["embed"]
        out.print(f"embed        {emb['embedded']} items with {emb['encoder']} (dim {emb['dim']}), {emb['items_per_s']:.1f} items/s")
        out.print(
            f"embeddings   nearest-neighbour label agreement {result['knn_label_agreement']:.3f} "
            f"(chance {result['chance_agreement']:.3f})"
        )
        if "mining" in result:
            m = result["mining"]
            p = m["protocol"]
            out.print(
                f"mining       concept {m['concept']!r} at {100 * p['prevalence']:.1f} % of the pool, a seed of "
                f"{p['seed_positives']}+{p['seed_negatives']} labels, {p['budget']} labels in all, batches of {p['batch']}:"
            )
            rnd = m["strategies"].get("random", {})
            for name, st in m["strategies"].items():
                gain = ""
                if name != "random" and rnd.get("positives_found"):
                    gain = f"  ({st['positives_found'] / rnd['positives_found']:.1f}x random)"
                out.print(
                    f"  {name:<28} found {st['positives_found']:>5.0f} positives (recall {st['recall']:.2f}), "
                    f"AP {st['ap']:.2f}, scanned {100 * st['scanned_fraction']:.1f} % per round{gain}"
                )
            if m.get("report"):
                out.print(f"report       {m['report']}")
        out.print(f"total        {result['seconds_total']:.1f} s; next: `assay -w {result['workspace']} status`")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
