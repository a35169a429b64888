"""``assay dedup --report DIR``: HTML pages to look at duplicate groups and choose a threshold by eye.

Writes, into ``DIR``:

* ``index.html``: the recorded duplicate groups (largest first), each as a row of thumbnails with the
  representative first and marked, every member with its id, size and (embedding methods) its cosine to the
  representative;
* ``pairs.html``: example pairs of items in similarity bands, e.g. cosine in [0.99, 1], [0.97, 0.99),
  [0.95, 0.97) ... (or Hamming distance 0, 1-2, 3-4 ... for pHash), drawn at random from the neighbours
  of a sample of the corpus: the pairs each threshold would add, so that a person can see where true
  duplicates stop;
* ``thumbs/<id>.jpg``: thumbnails made with Pillow, linked relatively, so the folder can be moved or
  served as it is.

Nothing here changes the catalog.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .dedup import (
    METHODS,
    check_radius,
    check_threshold,
    embedding_pairs,
    hamming_pairs,
    phash_pairs_to_keep,
    workspace_phashes,
)
from .errors import DecodeError, InputError, UnknownNameError, check_folder

if TYPE_CHECKING:  # pragma: no cover
    from .workspace import Workspace

__all__ = ["REPORT_THRESHOLDS", "REPORT_RADII", "ReportFiles", "write_report", "similarity_bands"]

#: Cosine thresholds shown on the pairs page (each band is [t, previous t)).
REPORT_THRESHOLDS = (0.99, 0.97, 0.95, 0.93, 0.90, 0.85, 0.80)
#: Hamming radii shown on the pairs page (each band is (previous r, r]).
REPORT_RADII = (0, 2, 4, 6, 8, 10, 12, 16)


@dataclass
class ReportFiles:
    """Where the report went and what it shows."""

    directory: Path
    index_html: Path
    pairs_html: Path
    thumbnails: int = 0
    groups_shown: int = 0
    groups_total: int = 0
    bands: list[dict[str, Any]] = field(default_factory=list)
    thumbnail_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "index_html": str(self.index_html),
            "pairs_html": str(self.pairs_html),
            "thumbnails": self.thumbnails,
            "thumbnail_errors": self.thumbnail_errors,
            "groups_shown": self.groups_shown,
            "groups_total": self.groups_total,
            "bands": self.bands,
        }


def similarity_bands(
    i_ids: np.ndarray,
    j_ids: np.ndarray,
    scores: np.ndarray,
    edges: Sequence[float],
    *,
    descending: bool,
    examples: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Split scored pairs into bands and draw up to ``examples`` random pairs from each.

    ``descending=True`` (cosines): band ``b`` holds ``edges[b] <= s < edges[b-1]`` (the first band
    ``s >= edges[0]``). ``descending=False`` (distances): band ``b`` holds ``edges[b-1] < s <= edges[b]``
    (the first ``s <= edges[0]``). Returns ``[{"low", "high", "count", "pairs": [(i, j, s), ...]}]``,
    pairs sorted best first.
    """
    out = []
    for b, edge in enumerate(edges):
        if descending:
            hi = np.inf if b == 0 else edges[b - 1]
            sel = (scores >= edge) & (scores < hi)
            low, high = float(edge), (1.0 if b == 0 else float(edges[b - 1]))
        else:
            lo = -np.inf if b == 0 else edges[b - 1]
            sel = (scores <= edge) & (scores > lo)
            low, high = (0.0 if b == 0 else float(edges[b - 1]) + 1), float(edge)
        idx = np.flatnonzero(sel)  # [count]
        pick = np.sort(rng.choice(idx, size=min(examples, len(idx)), replace=False)) if len(idx) else idx
        pick = pick[np.argsort(-scores[pick] if descending else scores[pick], kind="stable")]
        out.append(
            {
                "low": low,
                "high": high,
                "count": int(len(idx)),
                "pairs": [(int(i_ids[p]), int(j_ids[p]), float(scores[p])) for p in pick],
            }
        )
    return out


class _Thumbs:
    def __init__(self, ws: "Workspace", directory: Path, size: int) -> None:
        self.ws, self.dir, self.size = ws, directory / "thumbs", size
        self.dir.mkdir(parents=True, exist_ok=True)
        self.made = 0
        self.errors = 0
        self._rows: dict[int, Any] = {}

    def rows(self, ids: Sequence[int]) -> None:
        need = [int(i) for i in ids if int(i) not in self._rows]
        for r in self.ws.catalog.iter_items(need):
            self._rows[r.id] = r

    def row(self, item_id: int) -> Any:
        if item_id not in self._rows:
            self.rows([item_id])
        return self._rows.get(item_id)

    def src(self, item_id: int) -> str | None:
        """Relative path of the item's thumbnail (made on first use), or None when it cannot be made."""
        name = f"{int(item_id)}.jpg"
        path = self.dir / name
        if not path.exists():
            from .media import decode_image, read_bytes

            row = self.row(item_id)
            if row is None:
                return None
            try:
                im = decode_image(read_bytes(row.uri), draft_size=(self.size, self.size))
                im.thumbnail((self.size, self.size))
                tmp = path.with_name(name + ".tmp")
                im.save(tmp, "JPEG", quality=85)
                os.replace(tmp, path)
                self.made += 1
            except (DecodeError, OSError, ValueError):
                self.errors += 1
                return None
        return f"thumbs/{name}"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
.group,.band{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.8em 0}
.items{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:%(w)dpx;font-size:.75em;text-align:center}
figure img{max-width:%(w)dpx;max-height:%(w)dpx;border:3px solid #ccc;border-radius:3px}
figure.rep img{border-color:#2a7}
.pair{display:flex;gap:.4em;align-items:center;border:1px solid #eee;border-radius:4px;padding:.3em}
.pairs{display:flex;flex-wrap:wrap;gap:.8em}
.score{font-weight:bold;font-size:1.1em;padding:0 .4em}
.muted{color:#777}figure .muted{display:block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.missing{width:%(w)dpx;height:%(h)dpx;background:#eee;display:flex;align-items:center;justify-content:center}
.text{width:%(w)dpx;max-height:%(h)dpx;overflow:auto;background:#f6f6f6;font-size:12px;padding:4px;white-space:pre-wrap}
"""


def _page(title: str, body: str, size: int) -> str:
    css = _CSS % {"w": size, "h": size // 2}
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{css}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _figure(thumbs: _Thumbs, item_id: int, caption: str, rep: bool = False) -> str:
    row = thumbs.row(item_id)
    uri = row.uri if row is not None else ""
    src = thumbs.src(item_id)
    text = getattr(row, "text", None) if row is not None and getattr(row, "modality", "") == "text" else None
    if src:
        img = f'<img src="{html.escape(src)}" alt="item {item_id}" loading="lazy">'
    elif text is not None:  # a text item: its words, escaped (at most 600 characters)
        shown = text if len(text) <= 600 else text[:600] + "…"
        img = f'<div class="text">{html.escape(shown)}</div>'
    else:
        img = '<div class="missing">no preview</div>'

    cls = ' class="rep"' if rep else ""
    return (
        f'<figure{cls} title="{html.escape(uri)}">{img}<figcaption>{caption}'
        f'<br><span class="muted">{html.escape(Path(uri).name)}</span></figcaption></figure>'
    )


def _size_text(row: Any) -> str:
    if row is None or not row.width or not row.height:
        return "size ?"
    return f"{row.width}&times;{row.height}"


def write_report(
    ws: "Workspace",
    directory: str | os.PathLike[str],
    *,
    method: str = "embedding",
    encoder: str | None = None,
    groups: dict[int, Sequence[int]] | None = None,
    threshold: float | None = None,
    radius: int | None = None,
    thresholds: Sequence[float] = REPORT_THRESHOLDS,
    radii: Sequence[int] = REPORT_RADII,
    max_groups: int = 100,
    max_members: int = 16,
    examples: int = 8,
    sample: int = 2000,
    k: int = 16,
    thumb_size: int = 160,
    rng: np.random.Generator | int = 0,
) -> ReportFiles:
    """Write the groups page and the example-pairs page for the workspace into ``directory``.

    Parameters
    ----------
    method : {"embedding", "phash", "both"}
        Which similarity the pairs page shows (both: two sections).
    groups : dict, optional
        ``{representative: members}``; default: the groups recorded in the catalog.
    threshold, radius : optional
        The settings in use, marked on the pairs page.
    thresholds, radii : sequences
        Band edges of the pairs page (cosines descending, radii ascending).
    sample : int
        Items whose neighbours are drawn for the pairs page (at random with ``rng``).
    """
    if method not in METHODS:
        raise UnknownNameError("dedup method", str(method), METHODS)
    thresholds = sorted({check_threshold(t) for t in thresholds}, reverse=True)
    radii = sorted({check_radius(r) for r in radii})
    for name, v in (
        ("max_groups", max_groups),
        ("max_members", max_members),
        ("examples", examples),
        ("sample", sample),
        ("k", k),
        ("thumb_size", thumb_size),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out = Path(directory)
    check_folder(out, f"report path {out}", create=True)  # a file on the way is an InputError, not an OSError
    thumbs = _Thumbs(ws, out, thumb_size)
    groups = ws.catalog.duplicate_groups() if groups is None else {int(r): list(m) for r, m in groups.items()}
    files = ReportFiles(
        directory=out, index_html=out / "index.html", pairs_html=out / "pairs.html", groups_total=len(groups)
    )

    # ---------------------------------------------------------------- the pairs page (computed first:
    # the groups page shows cosines to the representative when embeddings exist)
    use_emb = method in ("embedding", "both")
    use_ph = method in ("phash", "both")
    searcher = None
    sections = []
    if use_emb:
        from .search import Searcher

        searcher = Searcher(ws, encoder)
        index = searcher.index()
        ids_all = index.ids
        q = (
            np.sort(gen.choice(ids_all, size=min(sample, len(ids_all)), replace=False))
            if len(ids_all)
            else ids_all
        )
        from .dedup import _store_rows

        s_ids, rows = _store_rows(searcher.store)
        i, j, s = embedding_pairs(
            s_ids, rows, thresholds[-1], index=index, query_ids=q, k=k, reducer=searcher.reducer()
        )
        bands = similarity_bands(i, j, s, thresholds, descending=True, examples=examples, rng=gen)
        sections.append(
            _bands_html(
                thumbs, bands, "cosine", threshold, descending=True, sampled=len(q), total=len(ids_all)
            )
        )
        files.bands += [
            {"kind": "cosine", "low": b["low"], "high": b["high"], "count": b["count"]} for b in bands
        ]
    if use_ph:
        img_ids = ws.catalog.ids(status="ok", modality="image")
        ph_ids, codes, ph_rep = workspace_phashes(ws, img_ids, mark_errors=False)
        q = (
            np.sort(gen.choice(ph_ids, size=min(sample, len(ph_ids)), replace=False))
            if len(ph_ids)
            else ph_ids
        )
        i, j, d = hamming_pairs(ph_ids, codes, radii[-1], query_ids=q)
        keep = phash_pairs_to_keep(i, j, ph_ids, ph_rep.detail)  # as dedup counts them
        i, j, d = i[keep], j[keep], d[keep]
        bands = similarity_bands(
            i, j, d.astype(np.float64), radii, descending=False, examples=examples, rng=gen
        )
        sections.append(
            _bands_html(
                thumbs, bands, "Hamming distance", radius, descending=False, sampled=len(q), total=len(ph_ids)
            )
        )
        files.bands += [
            {"kind": "hamming", "low": b["low"], "high": b["high"], "count": b["count"]} for b in bands
        ]
    body = [
        "<h1>Example pairs by similarity</h1>",
        '<p><a href="index.html">&larr; duplicate groups</a></p>',
        "<p>Each band shows random pairs that a threshold at its lower edge would add. Choose the threshold "
        "where the pairs stop being copies of one image.</p>",
    ] + sections
    files.pairs_html.write_text(
        _page("assay dedup: example pairs", "\n".join(body), thumb_size), encoding="utf-8"
    )

    # ---------------------------------------------------------------- the groups page
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:max_groups]
    files.groups_shown = len(ordered)
    thumbs.rows([x for _, m in ordered for x in list(m)[:max_members]] + [r for r, _ in ordered])
    removed = sum(len(m) - 1 for m in groups.values())
    body = [
        f"<h1>Duplicate groups ({len(groups)} groups, {removed} items set aside)</h1>",
        '<p><a href="pairs.html">example pairs by similarity &rarr;</a></p>',
        "<p>The representative (green border) is kept: the largest image, then the earliest ingested.</p>",
    ]
    if len(groups) > len(ordered):
        body.append(f'<p class="muted">showing the {len(ordered)} largest of {len(groups)} groups</p>')
    if not groups:
        body.append(
            "<p>No duplicate groups are recorded. Run <code>assay dedup</code> first, or lower the threshold.</p>"
        )
    for rep, members in ordered:
        members = [int(m) for m in members]
        others = [m for m in members if m != rep][: max_members - 1]
        sims: dict[int, float] = {}
        if searcher is not None and searcher.store.exists():
            have = searcher.store.contains(np.asarray([rep] + others, dtype=np.int64))
            if have.all():
                v = searcher.store.get([rep] + others)  # [m, d]
                sims = {m: float(x) for m, x in zip(others, v[1:] @ v[0])}
        figs = [
            _figure(thumbs, rep, f"#{rep} &middot; {_size_text(thumbs.row(rep))} &middot; kept", rep=True)
        ]
        for m in others:
            extra = f" &middot; cos {sims[m]:.3f}" if m in sims else ""
            figs.append(_figure(thumbs, m, f"#{m} &middot; {_size_text(thumbs.row(m))}{extra}"))
        more = len(members) - 1 - len(others)
        tail = f'<p class="muted">and {more} more</p>' if more > 0 else ""
        body.append(
            f'<div class="group"><div class="muted">{len(members)} items</div>'
            f'<div class="items">{"".join(figs)}</div>{tail}</div>'
        )
    files.index_html.write_text(_page("assay dedup: groups", "\n".join(body), thumb_size), encoding="utf-8")
    files.thumbnails = thumbs.made
    files.thumbnail_errors = thumbs.errors
    return files


def _bands_html(
    thumbs: _Thumbs,
    bands: list[dict[str, Any]],
    what: str,
    current: float | None,
    *,
    descending: bool,
    sampled: int,
    total: int,
) -> str:
    parts = [
        f"<h2>{html.escape(what.capitalize())} bands</h2>",
        f'<p class="muted">pairs among the neighbours of {sampled} of {total} items</p>',
    ]
    thumbs.rows([x for b in bands for p in b["pairs"] for x in p[:2]])
    for b in bands:
        if descending:
            label = (
                f"{what} &ge; {b['low']:.2f}"
                if b["high"] >= 1.0 and b is bands[0]
                else f"{b['low']:.2f} &le; {what} &lt; {b['high']:.2f}"
            )
            marked = current is not None and abs(b["low"] - current) < 1e-9
        else:
            label = (
                f"{what} {int(b['low'])}&ndash;{int(b['high'])}"
                if b["low"] != b["high"]
                else f"{what} {int(b['high'])}"
            )
            marked = current is not None and int(b["high"]) == int(current)
        flag = " <strong>(current setting)</strong>" if marked else ""
        pairs = []
        for i, j, s in b["pairs"]:
            score = f"{s:.3f}" if descending else f"{int(s)}"
            pairs.append(
                f'<div class="pair">{_figure(thumbs, i, f"#{i}")}<span class="score">{score}</span>'
                f"{_figure(thumbs, j, f'#{j}')}</div>"
            )
        content = "".join(pairs) if pairs else '<p class="muted">no pairs in this band</p>'
        parts.append(
            f'<div class="band"><h2>{label}{flag} <span class="muted">({b["count"]} pairs found)</span></h2>'
            f'<div class="pairs">{content}</div></div>'
        )
    return "\n".join(parts)
