"""The simulation report: the per-round table (CSV), the curves (PNG) and one HTML page.

:func:`write_report` writes, into ``DIR``:

* ``rounds.csv`` — one row per strategy, seed and round (columns :data:`assay.simulate.ROW_COLUMNS`);
* ``summary.json`` — the JSON object ``assay simulate --json`` prints;
* ``recall.png``, ``ap.png``, ``precision.png``, ``scanned.png``, ``seconds.png``, ``coverage.png`` —
  per strategy, the mean over seeds against labels spent (the band is the min-max over seeds);
* ``index.html`` — the summary table, the curves, and per strategy a grid of the items it mined (first
  seed, in proposal order, positives first), linked relatively to ``thumbs/<id>.jpg``.

Everything is written into a temporary folder next to ``DIR`` first and moved in at the end, so a failure
leaves no half report. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._jsonutil import json_default as _default_json

if TYPE_CHECKING:  # pragma: no cover
    from .simulate import SimulationResult

__all__ = ["PLOTS", "ReportFiles", "plot_curves", "write_report"]

#: (file stem, curve key, y label, log scale)
PLOTS = (
    ("recall", "recall", "positives found (recall of the pool's positives)", False),
    ("ap", "ap", "AP of the proxy on the test split", False),
    ("precision", "precision", "mining precision (share of the batch positive)", False),
    ("scanned", "scanned_fraction", "fraction of the corpus scored per round", True),
    ("seconds", "seconds", "seconds per round (train + pool + select)", True),
    ("coverage", "coverage", "clusters of the concept hit", False),
)


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    directory: Path
    csv: Path
    summary: Path
    html: Path
    plots: list[Path] = field(default_factory=list)
    thumbnails: int = 0
    thumbnail_errors: int = 0


def plot_curves(curves: dict[str, list[dict[str, Any]]], directory: Path, *, title: str = "") -> list[Path]:
    """One PNG per metric of :data:`PLOTS`: mean over seeds per strategy against labels spent."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = []
    for stem, key, ylabel, log in PLOTS:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        drawn = False
        for name, curve in curves.items():
            pts = [(c["labels"], c[key]) for c in curve if c.get(key) is not None]
            if not pts:
                continue
            x, y = zip(*pts)
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=name)
            lo_key, hi_key = f"{key}_min", f"{key}_max"
            band = [(c["labels"], c[lo_key], c[hi_key]) for c in curve
                    if c.get(lo_key) is not None and c.get(hi_key) is not None]
            if len(band) > 1:
                bx, blo, bhi = zip(*band)
                ax.fill_between(bx, blo, bhi, color=line.get_color(), alpha=0.15, linewidth=0)
            drawn = True
        if log and drawn:
            ax.set_yscale("log")
        ax.set_xlabel("labels spent (seed included)")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return out


class _Thumbs:
    """Thumbnails made on first use with Pillow, saved as ``thumbs/<id>.jpg``."""

    def __init__(self, directory: Path, uris: dict[int, str] | None, size: int) -> None:
        self.dir = directory / "thumbs"
        self.uris = uris or {}
        self.size = size
        self.made = 0
        self.errors = 0

    def src(self, item_id: int) -> str | None:
        uri = self.uris.get(int(item_id))
        if not uri:
            return None
        name = f"{int(item_id)}.jpg"
        path = self.dir / name
        if not path.exists():
            from .errors import DecodeError
            from .media import decode_image, read_bytes

            try:
                im = decode_image(read_bytes(uri), draft_size=(self.size, self.size))
                im.thumbnail((self.size, self.size))
                self.dir.mkdir(parents=True, exist_ok=True)
                im.save(path, "JPEG", quality=85)
                self.made += 1
            except (DecodeError, OSError, ValueError):
                self.errors += 1
                return None
        return f"thumbs/{name}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em}
table{border-collapse:collapse;background:#fff;font-size:.85em}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:right}th{background:#f0f0f0}td:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:.8em}.plots img{width:480px;background:#fff;border:1px solid #ddd}
.items{display:flex;flex-wrap:wrap;gap:.4em;background:#fff;border:1px solid #ddd;padding:.5em;border-radius:6px}
figure{margin:0;width:%(w)dpx;font-size:.7em;text-align:center}
figure img{width:%(w)dpx;height:%(w)dpx;object-fit:contain;border:3px solid #ccc;border-radius:3px}
figure.pos img,figure.pos .missing,figure.pos .text{border-color:#2a7}figure.neg img,figure.neg .missing,figure.neg .text{border-color:#c44}
.text{width:%(w)dpx;height:%(w)dpx;overflow:auto;background:#fff;border:3px solid #ccc;font-size:1.2em;text-align:left;padding:3px;box-sizing:border-box}
.missing{width:%(w)dpx;height:%(w)dpx;background:#eee;display:flex;align-items:center;justify-content:center;border:3px solid #ccc}
.muted{color:#777}
"""

_SUMMARY_COLS = (
    ("ap", "AP", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("positives_found", "found", "{:.1f}"),
    ("labels", "labels", "{}"), ("mining_precision", "mining precision", "{:.3f}"),
    ("ap_gain_per_1000", "AP / 1k labels", "{:.3f}"), ("coverage", "clusters hit", "{:.1f}"),
    ("novelty_hit_rate", "novelty hit rate", "{:.3f}"), ("scanned_fraction", "scanned / round", "{:.4f}"),
    ("scanned_fraction_cumulative", "scanned, cumulative", "{:.4f}"), ("seconds_per_round", "s / round", "{:.3f}"),
)


def _fmt(v: Any, f: str) -> str:
    if v is None:
        return "&ndash;"
    try:
        return f.format(v)
    except (ValueError, TypeError):
        return html.escape(str(v))


def _html(result: SimulationResult, plots: Sequence[Path], thumbs: _Thumbs, per_strategy: int, size: int) -> str:
    p = result.protocol
    head = (
        f"<h1>Simulated mining of {html.escape(result.positive)!s}</h1>"
        f"<p>Pool positives {p['pool_positives']:.0f} of {p['corpus_size']:.0f} items "
        f"(prevalence {prevalence_text(p)}); seed {p['seed_positives']} + {p['seed_negatives']} labels, counted in the "
        f"budget of {p['budget']}; batches of {p['batch']}; seeds {p['seeds']}; proxy {html.escape(p['proxy'])}; "
        f"SEALS k = {p['seals_k']}. AP on the test split ({p['test_size']} items, {p['test_positives']} positive). "
        "Values are means over seeds.</p>"
    )
    rows = ["<tr><th>strategy</th>" + "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in _SUMMARY_COLS) + "</tr>"]
    for name, s in result.summary.items():
        rows.append(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(s.get(k), f)}</td>" for k, _, f in _SUMMARY_COLS) + "</tr>")
    table = "<table>" + "".join(rows) + "</table>"
    imgs = "".join(f'<img src="{html.escape(pl.name)}" alt="{html.escape(pl.stem)}">' for pl in plots)
    grids = []
    first_seed = p["seeds"][0]
    for name, all_items in result.mined.items():
        items = [m for m in all_items if m.get("seed", first_seed) == first_seed]
        pos = [m for m in items if m["positive"]]
        neg = [m for m in items if not m["positive"]]
        shown = (pos + neg)[:per_strategy]
        figs = []
        for m in shown:
            cls = "pos" if m["positive"] else "neg"
            text = (result.texts or {}).get(int(m["id"]))
            src = None if text is not None else thumbs.src(m["id"])  # a text item has no image to read
            if text is not None:
                img = f'<div class="text">{html.escape(text)}</div>'
            else:
                img = (f'<img src="{html.escape(src)}" alt="item {m["id"]}" loading="lazy">' if src
                       else f'<div class="missing">{m["id"]}</div>')
            uri = (result.uris or {}).get(int(m["id"]), "")
            figs.append(f'<figure class="{cls}" title="{html.escape(uri)}">{img}'
                        f'<figcaption>#{m["id"]} r{m["round"]}</figcaption></figure>')
        grids.append(
            f"<h3>{html.escape(name)}: {len(pos)} positives in {len(items)} proposals (seed {p['seeds'][0]})</h3>"
            f'<div class="items">{"".join(figs)}</div>'
        )
    legend = ('<p class="muted">Green border: positive, red: negative. Positives first, each group in proposal '
              "order; rN is the round that proposed it.</p>")
    body = head + "<h2>Summary</h2>" + table + "<h2>Curves</h2>" + f'<div class="plots">{imgs}</div>' + \
        "<h2>Mined items</h2>" + legend + "".join(grids)
    css = _CSS % {"w": size}
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>assay simulate: {html.escape(result.positive)}</title><style>{css}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_report(
    result: SimulationResult, directory: str | os.PathLike[str], *, per_strategy: int = 48, thumb_size: int = 64,
    json_default: Callable[[Any], Any] | None = None,
) -> ReportFiles:
    """Write the table, the summary, the plots and the HTML page into ``directory`` (see the module doc)."""
    from .simulate import write_rows_csv

    final = Path(directory)
    if final.exists() and not final.is_dir():
        from .errors import InputError

        raise InputError(f"--out must be a folder, got the file {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        csv_path = write_rows_csv(result.rows, tmp / "rounds.csv")
        summary_path = tmp / "summary.json"
        summary_path.write_text(json.dumps(result.to_json(), default=json_default or _default_json, indent=1) + "\n")
        plots = plot_curves(result.curves, tmp, title=result.positive)
        thumbs = _Thumbs(tmp, result.uris, thumb_size)
        page = _html(result, plots, thumbs, per_strategy, thumb_size)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        final.mkdir(exist_ok=True)
        for src in sorted(tmp.rglob("*")):
            if src.is_file():
                dst = final / src.relative_to(tmp)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportFiles(
        directory=final, csv=final / csv_path.name, summary=final / "summary.json", html=final / "index.html",
        plots=[final / pl.name for pl in plots], thumbnails=thumbs.made, thumbnail_errors=thumbs.errors,
    )


def prevalence_text(p: dict) -> str:
    """The prevalence simulated (positives / corpus), and the one asked for where the class was too rare."""
    eff = p["pool_positives"] / p["corpus_size"] if p.get("corpus_size") else float(p["prevalence"])
    asked = float(p["prevalence"])
    if abs(eff - asked) > 0.1 * asked:
        return f"{eff:.3g}; {asked:g} asked, but the class is rarer: all its positives kept"
    return f"{eff:.3g}"
