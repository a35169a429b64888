"""The mining loop: one round = train the proxy, build the pool, score, select, record.

Two layers:

* :func:`select_round` is the core of a round, on arrays and functions of ids (no catalog, no files): it
  fits the proxy on the labels, builds a :class:`~assay.select.strategies.SelectionContext` and runs the
  strategy, or, on a cold start (a class missing from the labels), seeds the batch from query hits (text,
  exemplars, known positives) mixed with random items. The simulator (:mod:`assay.simulate`) calls it
  directly on in-memory arrays.
* :class:`Miner` is the shell over a workspace: it reads the concept's labels from the catalog, wires the
  vector store and the FAISS index in, calls :func:`select_round`, and records the round and its proposed
  batch with provenance (strategy and parameters, encoder and version, proxy metrics, pool size, fraction of
  the corpus scanned, seconds per stage).

Labels come back through :func:`read_label_file` / :meth:`Miner.record_labels` (durable rows with source,
annotator, round and time; relabelling appends, so history is kept). :meth:`Miner.harvest` scores the whole
corpus with the final model through a maximum-inner-product search on the index.
"""

from __future__ import annotations

import logging
import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    EmptyPoolError, InputError, NotFoundError, RowProblems, UnknownNameError, as_item_id, check_encoder_name,
    check_one_label_each, check_workspace,
)
from .index import _in_sorted
from .workspace import Workspace

__all__ = [
    "RoundOutcome",
    "select_round",
    "make_proxy",
    "Miner",
    "parse_label_value",
    "read_label_file",
    "PROXIES",
]

log = logging.getLogger(__name__)

PROXIES = ("logistic", "mlp", "ensemble", "svm")
_POSITIVE = {"1", "1.0", "yes", "y", "true", "t", "pos", "positive", "+"}
_NEGATIVE = {"0", "0.0", "no", "n", "false", "f", "neg", "negative", "-"}


@dataclass
class RoundOutcome:
    """What one round proposed, and how."""

    ids: np.ndarray  # [n] int64, in proposal order
    scores: np.ndarray  # [n] float64, the strategy's score (query similarity on a cold start)
    prelabels: np.ndarray | None  # [n] P(positive) from the proxy, None on a cold start
    reasons: list[str]  # per item: "strategy", "seed-query", "seed-random"
    strategy: str
    cold_start: bool
    pool_size: int
    scanned: int
    corpus_size: int
    proxy: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    model: Any = None  # the fitted proxy, when there was one

    @property
    def scanned_fraction(self) -> float:
        return self.scanned / self.corpus_size if self.corpus_size else 0.0


def make_proxy(kind: str = "logistic", *, seed: int = 0, **params: Any):
    """A proxy model on embeddings by name: ``logistic`` (class-weighted, calibrated), ``mlp``, ``ensemble``, ``svm`` (RBF kernel)."""
    from . import learn

    if kind == "logistic":
        return learn.LogisticProxy(random_state=seed, **params)
    if kind == "mlp":
        return learn.MLPProxy(random_state=seed, **params)
    if kind == "ensemble":
        return learn.BootstrapEnsemble(random_state=seed, **params)
    if kind == "svm":
        from .kernel import KernelSVMProxy

        return KernelSVMProxy(random_state=seed, **params)
    from .errors import UnknownNameError

    raise UnknownNameError("proxy", kind, PROXIES)


def _check_batch(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise InputError(f"batch must be a positive integer, got {n!r}")
    return int(n)


def select_round(
    *,
    strategy: Any,
    n: int,
    rng: np.random.Generator,
    corpus_ids: np.ndarray,
    vectors: Callable[[np.ndarray], np.ndarray],
    labelled_ids: np.ndarray,
    labels: np.ndarray,
    neighbors: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None,
    excluded_ids: np.ndarray | None = None,
    query_vectors: np.ndarray | None = None,
    seed_hits: Sequence[np.ndarray] = (),
    proxy: str = "logistic",
    random_fraction: float = 0.2,
    seed: int = 0,
    model_scores: Callable[[np.ndarray], np.ndarray] | None = None,
    band_ids: np.ndarray | None = None,
) -> RoundOutcome:
    """Propose ``n`` items to label next.

    Parameters
    ----------
    strategy : Strategy or str
        A strategy from :func:`assay.select.strategies.get_strategy` (a SEALS strategy keeps its pool
        between calls and grows it from newly labelled items only), or its name.
    corpus_ids : int64 [N]
        Every candidate item (embedded, ok, not held out).
    vectors : ids [m] -> [m, dim]
        Embedding lookup.
    labelled_ids, labels : [L] int64, [L] in {0, 1}
        The current labels.
    neighbors : (ids, k) -> (sims, ids), optional
        Index search, needed by ``seals:`` strategies.
    excluded_ids : int64, optional
        Never proposed: non-representative duplicates, items pending in another batch, held-out items.
    query_vectors : [q, dim], optional
        Exemplar embeddings, for relevance-based strategies.
    seed_hits : sequence of int64 arrays
        Ranked candidate lists for a cold start (from text queries, exemplars, known positives).
    proxy : "logistic" | "mlp" | "ensemble" | "svm"
    random_fraction : float in [0, 1]
        Share of a cold-start batch drawn at random (exploration).
    model_scores : ids [m] -> [m], optional
        An external model's score per item in [0, 1], NaN where it gave none (a weak detector, imported
        scores, the ImageNet tagger): the ``value`` strategy's model term (when its ``d > 0``).
    band_ids : int64 [b], optional
        A candidate source: the items in that model's medium-confidence band, most central first
        (:func:`assay.interop.scores.band_candidates`). On a cold start they are one more ranked seed
        list (reason ``seed-model``); afterwards a ``seals:`` strategy adds them to its kNN pool (other
        strategies already see every unlabelled item). Proposed band items carry the reason
        ``strategy-band``.
    """
    from .select.strategies import SelectionContext, get_strategy

    n = _check_batch(n)
    if isinstance(random_fraction, bool) or not isinstance(random_fraction, numbers.Real) \
            or not 0.0 <= float(random_fraction) <= 1.0:
        raise InputError(f"random_fraction must be a number in [0, 1], got {random_fraction!r}")
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    corpus_ids = np.asarray(corpus_ids, dtype=np.int64)
    labelled_ids = np.asarray(labelled_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int8)
    if len(labelled_ids) != len(labels):
        raise InputError(f"{len(labelled_ids)} labelled ids but {len(labels)} labels")
    excluded = np.asarray(excluded_ids if excluded_ids is not None else [], dtype=np.int64)
    timings: dict[str, float] = {}
    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())

    band = None
    if band_ids is not None:
        band = np.asarray(band_ids, dtype=np.int64)
        band = band[np.isin(band, corpus_ids) & ~np.isin(band, labelled_ids) & ~np.isin(band, excluded)]
    if n_pos == 0 or n_neg == 0:
        t0 = time.perf_counter()
        hits = list(seed_hits)
        reasons = ["seed-query"] * len(hits)
        if band is not None and len(band):
            hits.append(band)
            reasons.append("seed-model")
        out = _cold_start(n, rng, corpus_ids, labelled_ids, excluded, hits, random_fraction, strat.name, reasons)
        out.seconds = {"select": time.perf_counter() - t0}
        out.proxy = {"kind": None, "n_positive": n_pos, "n_negative": n_neg,
                     "note": "cold start: the labels lack a class, so the batch is seeded from queries and random items"}
        return out

    t0 = time.perf_counter()
    X = np.asarray(vectors(labelled_ids), dtype=np.float32)  # [L, dim]
    model = make_proxy(proxy, seed=seed).fit(X, labels)
    from .learn import ensemble_proba_fn, proba_fn

    ensemble = None
    if strat.name.rpartition(":")[2] == "disagreement":
        from .learn import BootstrapEnsemble

        ensemble = model if isinstance(model, BootstrapEnsemble) else BootstrapEnsemble(random_state=seed).fit(X, labels)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    is_seals = strat.name.startswith("seals:")
    pool = None
    if not is_seals:
        pool = corpus_ids[~np.isin(corpus_ids, labelled_ids)]
        pool = pool[~np.isin(pool, excluded)]
        if len(pool) == 0:
            raise EmptyPoolError("every candidate item is labelled or excluded; there is nothing left to propose")
    ctx = SelectionContext(
        pool_ids=pool,
        vectors=vectors,
        proba=proba_fn(model, vectors),
        ensemble_proba=ensemble_proba_fn(ensemble, vectors) if ensemble is not None else None,
        labelled_ids=labelled_ids,
        labelled_labels=np.asarray(labels),
        labelled_vectors=X,
        query_vectors=query_vectors,
        neighbors=neighbors,
        non_representative=excluded if len(excluded) else None,
        model_scores=model_scores,
        extra_candidates=band if band is not None and len(band) else None,
        corpus_size=len(corpus_ids),
    )
    timings["pool"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sel = strat.select(ctx, n, rng)
    timings["select"] = time.perf_counter() - t0
    prelabels = model.predict_proba(np.asarray(vectors(sel.ids), dtype=np.float32)) if len(sel.ids) else np.zeros(0)
    in_band = np.isin(sel.ids, band) if band is not None else np.zeros(len(sel.ids), dtype=bool)
    return RoundOutcome(
        ids=sel.ids, scores=np.asarray(sel.scores, dtype=np.float64), prelabels=np.asarray(prelabels, dtype=np.float64),
        reasons=["strategy-band" if b else "strategy" for b in in_band.tolist()], strategy=strat.name, cold_start=False, pool_size=int(sel.pool_size),
        scanned=int(sel.scanned), corpus_size=len(corpus_ids),
        proxy={"kind": proxy, "n_positive": n_pos, "n_negative": n_neg,
               "calibration": getattr(model, "calibration_", None)},
        seconds=timings, model=model,
    )


def _cold_start(n, rng, corpus_ids, labelled_ids, excluded, seed_hits, random_fraction, name, hit_reasons=None) -> RoundOutcome:
    blocked = set(labelled_ids.tolist()) | set(excluded.tolist())
    allowed = set(corpus_ids.tolist())
    n_query = n if not seed_hits else int(round(n * (1.0 - random_fraction)))
    chosen: list[int] = []
    reasons: list[str] = []
    scores: list[float] = []
    # Round-robin over the ranked hit lists, so that every query contributes.
    hit_reasons = list(hit_reasons) if hit_reasons is not None else ["seed-query"] * len(seed_hits)
    list_reasons = [r for h, r in zip(seed_hits, hit_reasons) if len(h)]
    lists = [list(np.asarray(h, dtype=np.int64)) for h in seed_hits if len(h)]
    pos = [0] * len(lists)
    seen: set[int] = set()
    while lists and len(chosen) < n_query and any(p < len(lst) for p, lst in zip(pos, lists)):
        for j, lst in enumerate(lists):
            while pos[j] < len(lst):
                cand = int(lst[pos[j]])
                pos[j] += 1
                if cand in blocked or cand in seen or cand not in allowed:
                    continue
                seen.add(cand)
                chosen.append(cand)
                reasons.append(list_reasons[j])
                scores.append(1.0 - (pos[j] - 1) / max(len(lst), 1))
                break
            if len(chosen) >= n_query:
                break
    rest = corpus_ids[~np.isin(corpus_ids, np.asarray(sorted(blocked | seen), dtype=np.int64))]
    k = min(n - len(chosen), len(rest))
    if k > 0:
        extra = rng.choice(rest, size=k, replace=False)
        chosen.extend(int(i) for i in extra)
        reasons.extend(["seed-random"] * k)
        scores.extend([0.0] * k)
    if not chosen:
        raise EmptyPoolError("every candidate item is labelled or excluded; there is nothing left to propose")
    return RoundOutcome(
        ids=np.asarray(chosen, dtype=np.int64), scores=np.asarray(scores), prelabels=None, reasons=reasons,
        strategy=f"cold-start({name})", cold_start=True, pool_size=len(rest) + len(seen),
        scanned=len(seen), corpus_size=len(corpus_ids),
    )


# ---------------------------------------------------------------------------------------------- labels
def parse_label_value(value: Any) -> int:
    """Map a label cell to 1 (positive) or 0 (negative); anything else raises InputError."""
    if isinstance(value, float) and value in (0.0, 1.0):  # a numeric Parquet/JSON column: 1.0 / 0.0
        value = int(value)
    s = str(value).strip().lower()
    if s in _POSITIVE:
        return 1
    if s in _NEGATIVE:
        return 0
    raise InputError(f"label must be one of 1/0, yes/no, true/false, positive/negative; got {value!r}")


def read_label_file(ws: Workspace, path: str | Path, concept: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``id`` or ``uri`` + ``label`` rows (CSV, JSONL or Parquet); validate every row before returning.

    Unknown ids or uris and values outside the allowed set raise :class:`InputError` naming the row. With
    ``concept``, a ``concept`` column (as assay's own exports carry) must name that concept on every row that
    fills it: an answer sheet of another concept is refused, not recorded for this one.
    """
    from .interop.scores import column_hint, read_score_records

    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise InputError(f"a labels file must be a path, got {path!r}")
    p = Path(path)
    records = read_score_records(p, what="labels file")
    if not records:
        raise InputError(f"{p} holds no label rows")
    cols = set().union(*(r.keys() for r in records))  # every row's keys: JSONL rows need not all have each
    if "label" not in cols or not ({"id", "uri"} & cols):
        raise InputError(f"{p} has columns {sorted(cols)}; expected 'label' and 'id' or 'uri'"
                         + column_hint(cols, ("id", "uri", "label", "concept")))
    if {"x0", "y0", "x1", "y1"} <= cols:
        log.warning("%s: the labels are recorded for the images; the box columns (x0, y0, x1, y1) are not region "
                    "labels (answer a region with Y / N on the labelling page, or add_region_labels)", p)

    def blank(v: Any) -> bool:  # 0 and False are labels (negatives), not blanks
        return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())

    # Rows left blank (a batch file not fully labelled yet) are skipped, not errors.
    numbered = [(n, rec) for n, rec in enumerate(records, 1) if not blank(rec.get("label"))]
    if not numbered:
        raise InputError(f"{p}: every label cell is empty; fill the label column (1/0, yes/no) first")
    if len(numbered) < len(records):
        log.warning("%s: %d rows with an empty label skipped", p, len(records) - len(numbered))
    ids = np.empty(len(numbered), dtype=np.int64)
    vals = np.empty(len(numbered), dtype=np.int8)
    cat = ws.catalog
    from .interop.imports import _resolve_uris

    # Rows named by uri are looked up in one go, under every spelling of a local path (file://, relative).
    uri_ids = _resolve_uris(cat, [str(r["uri"]).strip() for _, r in numbered
                                  if r.get("uri") is not None and str(r["uri"]).strip()], base=p.parent)
    problems = RowProblems(str(p))  # every bad row is reported, not only the first
    parsed = np.zeros(len(numbered), dtype=bool)
    for k, (n, rec) in enumerate(numbered):
        with problems.row(f"row {n}"):
            other = rec.get("concept")
            if concept is not None and not blank(other) and str(other).strip() != concept:
                raise InputError(f"concept {str(other).strip()!r} differs from {concept!r}, the concept being "
                                 "labelled; label that concept instead, or drop the concept column")
            vals[k] = parse_label_value(rec.get("label"))
            raw_id = rec.get("id")
            if raw_id not in (None, ""):
                ids[k] = as_item_id(raw_id, "id")
                uri = rec.get("uri")
                if uri is not None and str(uri).strip() and uri_ids.get(str(uri).strip()) != ids[k]:
                    named = uri_ids.get(str(uri).strip())
                    raise InputError(f"id {int(ids[k])} and uri {uri!r} name different items (the uri is "
                                     + (f"item {named})" if named is not None else "not in the catalog)")
                                     + "; fix the row or drop one of the two columns")
            else:
                uri = rec.get("uri")
                if blank(uri):
                    raise InputError("neither id nor uri is given")
                item = uri_ids.get(str(uri).strip())
                if item is None:
                    raise InputError(f"uri {uri!r} is not in the catalog")
                ids[k] = item
            parsed[k] = True
    known = set(cat.get_ids_existing(ids[parsed].tolist()))
    for k, ((n, _), i) in enumerate(zip(numbered, ids.tolist())):
        if parsed[k] and i not in known:
            problems.add(f"row {n}: item id {i} is not in the catalog")
    first: dict[int, tuple[int, int]] = {}
    for k, ((n, _), i, v) in enumerate(zip(numbered, ids.tolist(), vals.tolist())):
        if not parsed[k] or i not in known:
            continue
        if i in first and first[i][1] != v:
            problems.add(f"rows {first[i][0]} and {n} give item {i} two different labels; keep one")
        first.setdefault(i, (n, v))
    problems.raise_if_any()
    if len(first) < len(ids):
        log.warning("%s: %d rows repeat an item with the same label; each item is recorded once", p, len(ids) - len(first))
        ids = np.fromiter(first, dtype=np.int64, count=len(first))
        vals = np.asarray([v for _, v in first.values()], dtype=np.int8)
    _warn_label_quirks(cat, p, ids, vals)
    return ids, vals


def _warn_label_quirks(cat: Any, p: Path, ids: np.ndarray, vals: np.ndarray) -> None:
    """Warn about labels that are allowed but likely mistakes: items whose file failed, and exact copies
    of one another given opposite labels."""
    rows = cat.get_many(ids)
    broken = [r.id for r in rows if r.status != "ok"]
    if broken:
        log.warning("%s: %d labelled items have status error (their files failed to read or decode), e.g. %s; "
                    "their labels are kept, but they cannot train the proxy or go into image exports", p,
                    len(broken), broken[:5])
    label_of = dict(zip(ids.tolist(), vals.tolist()))
    by_sha: dict[str, set[int]] = {}
    for r in rows:
        if r.sha256:
            by_sha.setdefault(r.sha256, set()).add(label_of[r.id])
    clashes = sum(len(v) > 1 for v in by_sha.values())
    if clashes:
        log.warning("%s: %d groups of byte-identical items are given both labels in this file", p, clashes)


def check_exemplars(ws: Workspace, ids: Sequence[int], encoder: str | None = None) -> list[int]:
    """The exemplar item ids, once each, checked: in the catalog, status ok, embedded by ``encoder``.
    Raises NotFoundError or InputError naming the ids that are not."""
    ids = list(dict.fromkeys(int(i) for i in ids))  # an exemplar given twice is one exemplar
    known = set(ws.catalog.get_ids_existing(ids))
    missing = [i for i in ids if i not in known]
    if missing:
        raise NotFoundError(f"exemplar item ids not in the catalog: {missing[:10]}")
    broken = [(r.id, r.error) for r in ws.catalog.get_many(ids) if r.status != "ok"]
    if broken:
        raise InputError(f"exemplar item(s) cannot be used, they failed to ingest or decode: {broken[:5]}")
    store = ws.vectors(encoder)
    unembedded = [i for i, ok in zip(ids, store.contains(ids) if store.exists() else [False] * len(ids)) if not ok]
    if unembedded:
        raise InputError(f"exemplar item(s) {unembedded[:10]} have no embedding from {encoder or ws.default_encoder!r} "
                         "yet; run `assay embed` first")
    return ids


# ---------------------------------------------------------------------------------------------- the shell
class Miner:
    """Mining rounds for one concept in a workspace."""

    def __init__(self, ws: Workspace, concept: str, *, encoder: str | None = None) -> None:
        check_workspace(ws, "Miner")
        check_encoder_name(encoder)
        self.ws = ws
        self.concept_name = concept
        self.encoder_name = encoder or ws.default_encoder
        ws.catalog.concept(concept)  # an unknown concept fails here (NotFoundError naming the ones there are)

    @property
    def concept(self):
        return self.ws.catalog.concept(self.concept_name)

    def _searcher(self):
        from .search import Searcher

        return Searcher(self.ws, self.encoder_name)

    def _corpus(self, searcher, stale: np.ndarray | None = None) -> np.ndarray:
        """The index's ids, sorted, less ``stale`` (default: ``searcher.stale_ids()``, the changed or failed
        files the index still holds until `assay index`)."""
        ids = self._index_ids(searcher)
        stale = searcher.stale_ids() if stale is None else stale
        return ids[~np.isin(ids, stale)] if len(stale) else ids

    def _index_ids(self, searcher) -> np.ndarray:
        """The index's ids, sorted (the server's miner reads them from its kept searcher)."""
        return np.sort(searcher.index().ids)

    @staticmethod
    def _capped(searcher, strategy: str, seals_k: Any, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """``seals_k`` and a strategy's own ``k`` (information density) capped at the index's size: more
        neighbours than items means all of them, not memory for billions of empty columns."""
        n_index = max(1, searcher.index().ntotal)
        if (strategy.strip().lower().startswith("seals:") and not isinstance(seals_k, bool)
                and isinstance(seals_k, (int, np.integer)) and seals_k > 0):
            seals_k = int(min(seals_k, n_index))
        k = params.get("k")
        if not isinstance(k, bool) and isinstance(k, (int, np.integer)) and k > n_index:
            params = {**params, "k": int(n_index)}
        return seals_k, params

    def _round_lock(self):
        """One round of a concept proposed at a time (CLI runs, the server): the second waits, then leaves out
        the first one's batch (unlabelled items of recent rounds are pending) instead of proposing it again."""
        import contextlib

        from .catalog import ROUND_LOCK
        from .workspace import exclusive_lock

        c = self.concept
        stack = contextlib.ExitStack()
        stack.enter_context(exclusive_lock(self.ws.root / "locks" / f"round-{c.id}.lock",
                                           f"another round of {c.name!r} is being proposed; waiting for it"))
        try:  # other workspaces on the same (PostgreSQL) catalog propose rounds of this concept too
            stack.enter_context(self.ws.catalog.advisory_lock(ROUND_LOCK, c.id))
        except BaseException:
            stack.close()
            raise
        return stack

    def _excluded(self, concept_id: int, labelled: np.ndarray, keep_duplicates: bool,
                  stale: np.ndarray | None = None) -> np.ndarray:
        """Ids a round never proposes: pending items of recent rounds, ``stale`` items (changed or failed since
        the index; SEALS neighbours come from the index), and (unless duplicates are kept)
        non-representative duplicates and the copies of labelled items (answered already)."""
        excluded = self._pending(concept_id, labelled)
        if stale is not None and len(stale):
            excluded = np.union1d(excluded, stale)
        if keep_duplicates:
            return excluded
        cat = self.ws.catalog
        return np.union1d(np.union1d(excluded, cat.non_representative_ids()), cat.group_mates(labelled))

    def _pending(self, concept_id: int, labelled: np.ndarray) -> np.ndarray:
        """Items proposed in this concept's rounds and not labelled yet (not proposed twice)."""
        pending: list[int] = []
        for r in self.ws.catalog.rounds(concept_id)[-3:]:
            pending.extend(int(p["item_id"]) for p in self.ws.catalog.proposals(r.id))
        arr = np.asarray(sorted(set(pending)), dtype=np.int64)
        return arr[~np.isin(arr, labelled)]

    def _model_score_use(self, model_scores: Any):
        from .interop.scores import ModelScoreUse, get_score_use

        if model_scores is False:
            return None
        if model_scores is None:
            return get_score_use(self.ws.catalog, self.concept_name)
        from .interop.scores import resolve_model

        if isinstance(model_scores, str):
            model_scores = ModelScoreUse(model=model_scores)
        if isinstance(model_scores, ModelScoreUse):
            resolve_model(self.ws.catalog, self.concept_name, model_scores.model)  # a name with no scores: an error
            return model_scores
        raise InputError(f"model_scores must be a model name, a ModelScoreUse, None or False; got {model_scores!r}")

    def propose(
        self, *, strategy: str = "seals:entropy", batch: int = 50, seed: int | None = None, proxy: str = "logistic",
        random_fraction: float = 0.2, seals_k: int = 100, seals_k_positive: int | None = None,
        keep_duplicates: bool = False,
        model_scores: Any = None, strategy_params: dict[str, Any] | None = None, include_pseudo: bool = False,
    ) -> tuple[Any, RoundOutcome]:
        """Run one round and record it; returns ``(round row, outcome)``.

        ``model_scores``: how external model scores take part (:mod:`assay.interop.scores`): ``None`` uses
        what ``assay scores use`` recorded for the concept (nothing if it recorded nothing), a model name
        or a :class:`~assay.interop.scores.ModelScoreUse` uses that, ``False`` turns them off. The model's
        medium-confidence band becomes a candidate source; with a ``value`` strategy its weight becomes
        the strategy's ``d`` (unless ``strategy_params`` sets ``d``). ``strategy_params`` go to the base
        strategy (e.g. ``{"a": 1, "b": 1, "c": 0.5}`` for ``value``). ``include_pseudo`` trains the proxy
        on pseudo-labels too (off by default: only human, oracle and imported labels count).
        """
        with self._round_lock():
            return self._propose(strategy=strategy, batch=batch, seed=seed, proxy=proxy,
                random_fraction=random_fraction, seals_k=seals_k, seals_k_positive=seals_k_positive,
                keep_duplicates=keep_duplicates,
                model_scores=model_scores, strategy_params=strategy_params, include_pseudo=include_pseudo)

    def _propose(
        self, *, strategy: str = "seals:entropy", batch: int = 50, seed: int | None = None, proxy: str = "logistic",
        random_fraction: float = 0.2, seals_k: int = 100, seals_k_positive: int | None = None,
        keep_duplicates: bool = False,
        model_scores: Any = None, strategy_params: dict[str, Any] | None = None, include_pseudo: bool = False,
    ) -> tuple[Any, RoundOutcome]:
        from .select.strategies import get_strategy

        t_all = time.perf_counter()
        batch = _check_batch(batch)
        if not isinstance(strategy, str):
            raise InputError(f"strategy must be a name such as 'seals:entropy', got {type(strategy).__name__}")
        if "@" in strategy:  # "seals:entropy@svm": the strategy names its own proxy (as on the command line)
            from .simulate import split_spec

            base, own = split_spec(strategy)
            if own is not None and proxy not in ("logistic", own):
                raise InputError(f"strategy {strategy!r} names the proxy {own!r} and proxy= says {proxy!r}; give one")
            strategy, proxy = base, own or proxy
        concept = self.concept
        cat = self.ws.catalog
        use = self._model_score_use(model_scores)
        if strategy_params is not None and not isinstance(strategy_params, dict):
            raise InputError(f"strategy_params must be a dict of parameter names to values, got {strategy_params!r}")
        params = dict(strategy_params or {})
        base_name = strategy.strip().lower().rpartition(":")[2]
        if use is not None and base_name == "value" and use.weight > 0 and "d" not in params:
            params.update(d=use.weight, model_term=use.term)
        if proxy not in PROXIES:  # checked now: a cold start does not train one, and would record the bad name
            raise UnknownNameError("proxy", proxy, PROXIES)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        seed = None if seed is None else int(seed)
        is_seals = strategy.strip().lower().startswith("seals:")
        searcher = self._searcher()
        seals_k, params = self._capped(searcher, strategy, seals_k, params)
        strat = get_strategy(strategy, pool_params={"k": seals_k, "k_positive": seals_k_positive} if is_seals else None,
                             **params)
        store = searcher.store
        t0 = time.perf_counter()
        stale = searcher.stale_ids()  # read once: left out of the corpus and never proposed
        corpus = self._corpus(searcher, stale)
        if (base_name == "information-density" and not is_seals and len(corpus) > 20_000
                and getattr(searcher, "knn_graph", lambda: None)() is None):
            log.warning("information-density looks up the neighbours of every pool item (%d) each round; "
                        "`assay index --knn 10` stores them once and makes these rounds fast", len(corpus))
        labelled, labels = cat.current_labels(concept.id, include_pseudo=include_pseudo)
        labelled_in = _in_sorted(corpus, labelled)  # corpus is sorted: O(L log N), not a sort of N
        excluded = self._excluded(concept.id, labelled, keep_duplicates, stale)
        round_no = len(cat.rounds(concept.id)) + 1
        rng = np.random.default_rng(seed if seed is not None else [concept.id, round_no])
        seed_hits = self._seed_hits(searcher, concept, labelled[labels == 1], batch) if (labels == 1).sum() == 0 or (labels == 0).sum() == 0 else []
        query_vectors = store.get(concept.exemplars) if concept.exemplars else None
        score_fn = band = None
        if use is not None:
            from .interop.scores import band_candidates, read_scores, score_lookup

            s_ids, s_vals = read_scores(cat, concept.name, use.model)
            score_fn = score_lookup(s_ids, s_vals)
            keep = np.isin(s_ids, corpus) & ~np.isin(s_ids, labelled) & ~np.isin(s_ids, excluded)
            band = band_candidates(s_ids[keep], s_vals[keep], low=use.band[0], high=use.band[1],
                                   limit=use.max_candidates)
        t_setup = time.perf_counter() - t0

        def vectors(ids: np.ndarray) -> np.ndarray:
            return store.get(ids, dtype=np.float32)

        if callable(getattr(store, "map_rows", None)) and callable(store):
            vectors = store  # noqa: F811 - a memo that scores its rows in place (the server's kept store)
        out = select_round(
            strategy=strat, n=batch, rng=rng, corpus_ids=corpus, vectors=vectors,
            labelled_ids=labelled[labelled_in], labels=labels[labelled_in], neighbors=searcher.neighbors,
            excluded_ids=excluded, query_vectors=query_vectors, seed_hits=seed_hits, proxy=proxy,
            random_fraction=random_fraction, seed=round_no, model_scores=score_fn, band_ids=band,
        )
        out.seconds["setup"] = t_setup
        proposals = [
            {"item_id": int(i), "rank": r, "score": float(s),
             "prelabel": None if out.prelabels is None else float(out.prelabels[r]), "reason": out.reasons[r]}
            for r, (i, s) in enumerate(zip(out.ids, out.scores))
        ]
        out.seconds["total"] = time.perf_counter() - t_all
        meta = store.meta()
        row = cat.add_round(
            concept.id, strategy=out.strategy,
            params={"batch": batch, "proxy": proxy, "seals_k": seals_k,
                    "seals_k_positive": getattr(strat, "k_positive", None), "random_fraction": random_fraction,
                    "seed": seed, "keep_duplicates": keep_duplicates, "strategy_params": params,
                    "include_pseudo": include_pseudo,
                    "model_scores": None if use is None else {**use.to_dict(), "band_candidates": int(len(band))}},
            encoder=self.encoder_name, encoder_version=meta["version"], proxy=out.proxy, pool_size=out.pool_size,
            scanned_fraction=out.scanned_fraction, seconds={k: round(v, 4) for k, v in out.seconds.items()},
            proposals=proposals,
        )
        return row, out

    def _seed_hits(self, searcher, concept, positives: np.ndarray, batch: int) -> list[np.ndarray]:
        k = max(batch * 4, 50)
        hits: list[np.ndarray] = []
        if concept.text:
            try:
                hits.extend(np.asarray([h.id for h in row], dtype=np.int64) for row in searcher.search_texts([concept.text], k=k))
            except InputError as exc:
                log.warning("text seeding skipped: %s", exc)
        seeds = list(dict.fromkeys(list(concept.exemplars) + [int(i) for i in positives]))
        if len(seeds) > 1:  # all of them together first: their prototype finds what they share
            try:
                hits.append(np.asarray([h.id for h in searcher.search(item=seeds, k=k)], dtype=np.int64))
            except InputError as exc:  # e.g. exemplars that cancel out: each still seeds on its own
                log.warning("seeding by the exemplars together skipped: %s", exc)
        if seeds:
            hits.extend(np.asarray([h.id for h in row], dtype=np.int64) for row in searcher.search_items(seeds, k=k))
        return hits

    def record_labels(
        self, ids: np.ndarray, values: np.ndarray, *, source: str = "human", annotator: str | None = None,
        skip_unchanged: bool = False,
    ) -> int:
        """Append labels (``values``: 1/0, True/False or yes/no, one per id); each is attached to the latest
        round of this concept that proposed its item. Everything is checked before anything is written.

        With ``skip_unchanged``, an answer equal to the latest one the same annotator (and source) gave for the
        item is not written again: importing the same file twice adds nothing, while a changed answer is a
        new row, so the history keeps every change. Returns the number of rows written."""
        concept = self.concept
        cat = self.ws.catalog
        round_of: dict[int, int] = {}
        for r in cat.rounds(concept.id):
            for p in cat.proposals(r.id):
                round_of[int(p["item_id"])] = r.id
        if isinstance(ids, (str, bytes)) or isinstance(values, (str, bytes)):
            raise InputError("ids and values must be sequences (one id and one label per answer), not strings")
        id_list = [as_item_id(i, "label item id") for i in np.asarray(ids, dtype=object).reshape(-1).tolist()]
        val_list = [parse_label_value(v) for v in np.asarray(values, dtype=object).reshape(-1).tolist()]
        if len(id_list) != len(val_list):
            raise InputError(f"got {len(id_list)} ids and {len(val_list)} label values; give one label per id")
        check_one_label_each(id_list, val_list)
        ids = np.asarray(id_list, dtype=np.int64)
        values = np.asarray(val_list, dtype=np.int8)
        n = 0
        groups: dict[int | None, list[int]] = {}
        for k, i in enumerate(ids.tolist()):
            groups.setdefault(round_of.get(i), []).append(k)
        # One transaction per round group keeps provenance; validation happens before any write.
        known = set(cat.get_ids_existing(ids.tolist()))
        unknown = [i for i in ids.tolist() if i not in known]
        if unknown:
            raise NotFoundError(f"{len(unknown)} item ids are not in the catalog, e.g. {unknown[:5]}")
        if skip_unchanged:
            latest = cat.latest_values(concept.id, source=source, annotator=annotator)
            keep = np.asarray([latest.get(int(i)) != int(v) for i, v in zip(ids, values)], dtype=bool)
            groups = {r: [k for k in idx if keep[k]] for r, idx in groups.items()}
            groups = {r: idx for r, idx in groups.items() if idx}
            if not groups:
                return 0
        n += cat.add_label_batches(  # one transaction: every answer of the file, or none
            [(concept.id, ids[idx], values[idx], source, annotator, round_id) for round_id, idx in groups.items()])
        return n

    def harvest(
        self, *, top: int = 1000, proxy: str = "logistic", keep_duplicates: bool = False, include_pseudo: bool = False,
        include_negatives: bool = False, min_score: float | None = None,
    ) -> list[dict[str, Any]]:
        """Score the corpus with a model trained on every label and return the ``top`` items, best first.

        Pseudo-labels take part in training only with ``include_pseudo``. Items whose current label is
        negative are left out of the mined set unless ``include_negatives`` (a person said no); with
        ``min_score``, so are items the model scores below it, unless a person labelled them positive. A copy
        (exact or near duplicate) of a labelled item carries its label in the output (and a "no" leaves it
        out too).

        For the linear proxy the ranking is a maximum-inner-product search on the FAISS index with the
        model's weight vector (the index holds unit vectors, and ``P = sigmoid(w.x + b)`` is monotone in
        ``w.x``), so nothing scans the corpus; the probabilities of the hits are then computed exactly.
        """
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top <= 0:
            raise InputError(f"top must be a positive integer, got {top!r}")
        top = int(top)
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, numbers.Real)
                                      or not 0.0 <= float(min_score) <= 1.0):
            raise InputError(f"min_score must be a probability in [0, 1], got {min_score!r}")
        concept = self.concept
        cat = self.ws.catalog
        labelled, labels = cat.current_labels(concept.id, include_pseudo=include_pseudo)
        if (labels == 1).sum() == 0 or (labels == 0).sum() == 0:
            raise InputError(
                f"concept {concept.name!r} needs at least one positive and one negative label to harvest "
                f"(has {(labels == 1).sum()} positive, {(labels == 0).sum()} negative)"
            )
        searcher = self._searcher()
        store = searcher.store
        store.meta()  # no embeddings for this encoder: say so, and which encoders have them
        has = store.contains(labelled)
        if not has.all():  # labels on items without an embedding (failed to decode, ingested after the last embed)
            log.warning("%d labelled items have no embedding and are left out of training (run `assay embed`)",
                        int((~has).sum()))
            labelled, labels = labelled[has], labels[has]
            if (labels == 1).sum() == 0 or (labels == 0).sum() == 0:
                raise InputError(f"concept {concept.name!r} needs at least one positive and one negative label on "
                                 "embedded items to harvest; run `assay embed`")
        model = make_proxy(proxy).fit(store.get(labelled), labels)
        label_of = dict(zip(labelled.tolist(), labels.tolist()))
        # A copy (exact or near duplicate) of a labelled item carries its label: an answer given once counts
        # for every copy (unless the copies were answered differently).
        via_copy: dict[int, set[int]] = {}
        for i, mates in cat.mates_of(labelled).items():
            for m in mates - set(label_of):
                via_copy.setdefault(m, set()).add(label_of[i])
        label_of.update({m: next(iter(v)) for m, v in via_copy.items() if len(v) == 1})
        negatives = set() if include_negatives else {i for i, v in label_of.items() if v == 0}
        fetch = top + len(negatives)  # the labelled negatives among the hits are dropped below
        if proxy == "logistic" and not searcher.index().metadata.get("pca"):
            w, _b = model.linear_weights()
            q = np.asarray(w, dtype=np.float32)
            q /= max(float(np.linalg.norm(q)), 1e-12)
            _, ids = searcher.search_vectors(q, fetch, keep_duplicates=keep_duplicates)
            ids = ids[0][ids[0] >= 0]
            method = "mips"
        else:  # a non-linear proxy (or PCA-reduced index): a blockwise scan of the store
            corpus = self._corpus(searcher)
            if not keep_duplicates:
                corpus = corpus[~np.isin(corpus, cat.non_representative_ids())]
            scores = np.concatenate([model.predict_proba(store.get(corpus[s : s + 65536])) for s in range(0, len(corpus), 65536)])
            ids = corpus[np.argsort(-scores, kind="stable")[:fetch]]
            method = "scan"
        if negatives:
            ids = ids[~np.isin(ids, np.fromiter(negatives, dtype=np.int64))]
        probs = model.predict_proba(store.get(ids)) if len(ids) else np.zeros(0)
        order = np.argsort(-probs, kind="stable")
        ids, probs = ids[order][:top], probs[order][:top]
        if min_score is not None:  # a person's yes outranks the model's score: labelled positives stay
            keep = (probs >= float(min_score)) | np.asarray([label_of.get(int(i)) == 1 for i in ids], dtype=bool)
            ids, probs = ids[keep], probs[keep]
        uris, texts = cat.uris(ids), cat.texts(ids)
        return [
            {"id": int(i), "uri": uris.get(int(i), ""), **({"text": texts.get(int(i))} if texts else {}),
             "concept": concept.name, "score": float(p), "label": label_of.get(int(i)), "method": method}
            for i, p in zip(ids.tolist(), probs.tolist())
        ]
