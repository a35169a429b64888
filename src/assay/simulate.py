"""A simulated annotator: many mining rounds against ground truth, for several strategies and seeds.

Protocol (Coleman et al., AAAI 2022, "Similarity Search for Efficient Active Learning and Search of Rare
Concepts", section 5):

1. **Held-out test split.** Items of the test split are never labelled, proposed or indexed; they only
   measure the average precision (AP) of the proxy each round (every test item is scored; positives are the
   concept's test items).
2. **A rare concept.** In the pool (every other item), the concept's positives are subsampled, with the
   run's seed, so that they make up ``prevalence`` of the pool (``round(p * n_neg / (1 - p))`` positives
   are kept; all of them when the concept is rarer than that already). The dropped positives are removed
   from the simulated corpus entirely: they are never scored, proposed, returned as neighbours or counted.
3. **A seed.** ``seed_positives`` positives and ``seed_negatives`` negatives (5 + 95 by default), drawn at
   random with the run's seed. **The budget counts the seed**: a budget of 1,000 labels is the seed of 100
   plus 9 batches of 100.
4. **Rounds.** Each round calls :func:`assay.loop.select_round` (the same code as ``assay mine``): fit
   the proxy on the labels so far, build the pool (the corpus for full-scan strategies; the SEALS pool,
   grown from newly labelled items through a FAISS index over the pool that filters the dropped positives
   out, for ``seals:``),
   score, select a batch. The oracle answers from ground truth; only answered items ever become labels.
   The same strategy instance is reused across the rounds of one run (a SEALS pool grows incrementally).
5. **Seeds.** The corpus subsample and the seed set depend on the seed only, so every strategy of one seed
   mines the same corpus from the same start (a paired comparison). Every random choice is seeded.

Per strategy, seed and round it records: labels spent, positives found (and recall of the concept's pool
positives, the seed's positives included), AP of the proxy trained on the labels so far, the batch's
mining precision, AP gained per 1,000 labels since the previous round, the pool size and the fraction of
the corpus scored this round (and the cumulative fraction: distinct items scored in any round so far),
seconds per round (proxy training, pool and selection: the work of ``assay mine``), coverage and the
novelty hit rate (see :mod:`assay.evaluate`):

* **coverage**: the concept's positives in the simulated corpus are clustered with k-means (seeded,
  ``n_clusters``, 10 by default); coverage counts the clusters that hold at least one found positive.
* **novelty hit rate**: the share of a round's new positives whose cosine similarity to every positive
  found before that round is below ``novelty_threshold``. By default the threshold is the median, over the
  concept's positives in the simulated corpus, of the similarity to the nearest other positive: a new
  positive is a novelty hit when it is farther from everything found so far than a typical positive is
  from its nearest fellow positive.

The functional core (:func:`simulate`) works on a :class:`GroundTruth` of arrays; the shell
(:func:`load_ground_truth`, :func:`simulate_workspace`) reads a workspace's vectors and the ``label`` /
``split`` metadata that its items carry from their manifest (or a truth file).
"""

from __future__ import annotations

import csv
import itertools
import numbers
import json
import logging
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import evaluate as E
from .errors import EmptyPoolError, InputError, NotFoundError, RowProblems, UnknownNameError, as_item_id, check_workspace

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STRATEGIES",
    "GroundTruth",
    "SimCorpus",
    "SimulationConfig",
    "SimulationResult",
    "build_corpus",
    "build_pool_index",
    "load_ground_truth",
    "make_strategy",
    "read_truth_file",
    "simulate",
    "simulate_workspace",
    "split_spec",
    "summarize",
]

INDEX_KINDS = ("auto", "flat", "hnsw")
DEFAULT_STRATEGIES = ("random", "entropy", "seals:entropy", "most-likely-positive", "seals:most-likely-positive")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """Everything a simulation knows, as arrays aligned by row.

    Attributes
    ----------
    ids : ndarray [N] int64
        Global item ids, ascending, unique.
    vectors : ndarray [N, dim] float32
        L2-normalised embeddings.
    labels : ndarray [N] str
        Each item's class.
    is_test : ndarray [N] bool
        True for items of the held-out test split.
    uris : dict id -> uri, optional
        For the report's image grid.
    """

    ids: np.ndarray
    vectors: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray
    uris: dict[int, str] | None = None
    texts: dict[int, str] | None = None  # the words of text items (for the report)

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64)
        if ids.ndim != 1:
            raise InputError(f"ids must be 1-D, got shape {ids.shape}")
        n = ids.shape[0]
        vec = np.asarray(self.vectors, dtype=np.float32)
        if vec.ndim != 2 or vec.shape[0] != n:
            raise InputError(f"vectors must be [n_items={n}, dim], got shape {vec.shape}")
        labels = np.asarray(self.labels).astype(str)
        is_test = np.asarray(self.is_test, dtype=bool)
        if labels.shape != (n,) or is_test.shape != (n,):
            raise InputError(f"labels and is_test must have one entry per id ({n}), got {labels.shape}, {is_test.shape}")
        if n and np.any(np.diff(ids) <= 0):
            order = np.argsort(ids, kind="stable")
            ids, vec, labels, is_test = ids[order], vec[order], labels[order], is_test[order]
            if np.any(np.diff(ids) == 0):
                raise InputError("ids must be unique")
        if not np.all(np.isfinite(vec)):
            raise InputError("vectors contain NaN or infinite values")
        set_ = object.__setattr__
        set_(self, "ids", ids)
        set_(self, "vectors", np.ascontiguousarray(vec))
        set_(self, "labels", labels)
        set_(self, "is_test", is_test)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels.tolist()))


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """The protocol's parameters (see the module docstring).

    Parameters
    ----------
    positive : str
        The concept: the class whose items are positive.
    prevalence : float in (0, 1)
        Share of positives kept in the pool.
    budget : int
        Labels in all, the seed included.
    batch : int
        Items proposed per round.
    seeds : int or sequence of int
        ``3`` means seeds 0, 1, 2.
    strategies : sequence of str
        Strategy names (:func:`make_strategy`), each optionally with its own proxy after ``@``:
        ``most-likely-positive@mlp``.
    proxy : "logistic" | "mlp" | "ensemble"
        The proxy of strategies that do not name one.
    seals_k : int
        Neighbours per labelled item in a SEALS pool.
    seals_k_positive : int or None
        Neighbours per labelled positive in a SEALS pool (None: 4 x ``seals_k``; ``seals_k``: the paper's pool).
    seed_positives, seed_negatives : int
    n_clusters : int
        k-means clusters of the concept's positives, for coverage.
    novelty_threshold : float or None
        Cosine threshold of the novelty hit rate; None: the data-driven default.
    index_kind : "auto" | "flat" | "hnsw"
        The FAISS index over the pool for SEALS neighbours (see :func:`build_pool_index`).
    """

    positive: str
    prevalence: float = 0.005
    budget: int = 1000
    batch: int = 100
    seeds: int | Sequence[int] = 3
    strategies: Sequence[str] = DEFAULT_STRATEGIES
    proxy: str = "logistic"
    seals_k: int = 100
    seals_k_positive: int | None = None
    seed_positives: int = 5
    seed_negatives: int = 95
    n_clusters: int = 10
    novelty_threshold: float | None = None
    index_kind: str = "auto"

    @property
    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, (int, np.integer)) and not isinstance(self.seeds, bool):
            return list(range(int(self.seeds)))
        return [int(s) for s in self.seeds]  # type: ignore[union-attr]

    def validate(self) -> None:
        """Check every parameter; raise :class:`InputError` naming the first bad one."""
        from .loop import PROXIES

        def pos_int(v: Any, name: str, minimum: int = 1) -> None:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")

        if not isinstance(self.positive, str) or not self.positive:
            raise InputError(f"positive must be a class name, got {self.positive!r}")
        if isinstance(self.prevalence, bool) or not isinstance(self.prevalence, numbers.Real) \
                or not 0.0 < float(self.prevalence) < 1.0:
            raise InputError(f"prevalence must be a number in (0, 1), got {self.prevalence!r}")
        pos_int(self.budget, "budget")
        pos_int(self.batch, "batch")
        pos_int(self.seals_k, "seals_k")
        if self.seals_k_positive is not None:
            pos_int(self.seals_k_positive, "seals_k_positive")
            if self.seals_k_positive < self.seals_k:
                raise InputError(f"seals_k_positive must be at least seals_k ({self.seals_k}), got {self.seals_k_positive}")
        pos_int(self.seed_positives, "seed_positives")
        pos_int(self.seed_negatives, "seed_negatives")
        pos_int(self.n_clusters, "n_clusters")
        if isinstance(self.seeds, (int, np.integer)) and not isinstance(self.seeds, bool):
            pos_int(self.seeds, "seeds")
        else:
            seeds = list(self.seeds)  # type: ignore[arg-type]
            if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**32
                                for s in seeds):
                raise InputError(f"seeds must be a positive count or a list of non-negative integers, got {self.seeds!r}")
            if len(set(seeds)) != len(seeds):
                raise InputError(f"seeds must be distinct, got {seeds}")
        seed_size = self.seed_positives + self.seed_negatives
        if self.budget < seed_size:
            raise InputError(
                f"budget ({self.budget}) is smaller than the seed ({seed_size} labels: {self.seed_positives} positive "
                f"+ {self.seed_negatives} negative); the budget counts the seed"
            )
        if self.proxy not in PROXIES:
            raise UnknownNameError("proxy", self.proxy, PROXIES)
        if self.index_kind not in INDEX_KINDS:
            raise UnknownNameError("index kind", self.index_kind, INDEX_KINDS)
        if self.novelty_threshold is not None and (
            isinstance(self.novelty_threshold, bool) or not isinstance(self.novelty_threshold, numbers.Real)
            or not -1.0 <= float(self.novelty_threshold) <= 1.0
        ):
            raise InputError(f"novelty_threshold must be a cosine in [-1, 1], got {self.novelty_threshold!r}")
        if isinstance(self.strategies, (str, bytes)):
            raise InputError(f"strategies must be a list of names, got the string {self.strategies!r}")
        names = list(self.strategies)
        if not names:
            raise InputError("strategies must name at least one strategy")
        if len(set(names)) != len(names):
            raise InputError(f"strategies must be distinct, got {names}")
        for name in names:
            base, proxy = split_spec(name)
            make_strategy(base, seals_k=self.seals_k, seals_k_positive=self.seals_k_positive)
            if proxy is not None and proxy not in PROXIES:
                raise UnknownNameError("proxy", proxy, PROXIES)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"seals:entropy@mlp"`` -> ``("seals:entropy", "mlp")``: a strategy with its own proxy (else None)."""
    if not isinstance(spec, str):
        raise InputError(f"strategy name must be a string, got {type(spec).__name__}")
    name, sep, proxy = spec.partition("@")
    if sep and not proxy.strip():
        raise InputError(f"strategy {spec!r}: expected a proxy name after '@' (e.g. most-likely-positive@mlp)")
    return name.strip(), (proxy.strip() if sep else None)


def make_strategy(name: str, *, seals_k: int = 100, seals_k_positive: int | None = None):
    """A fresh strategy instance by name (one per simulated run: a SEALS pool keeps state).

    Names are those of :func:`assay.select.strategies.get_strategy`, with ``seals:`` pools of ``seals_k``
    neighbours per labelled item (``seals_k_positive`` per labelled positive, default 4 x ``seals_k``), plus the strategies of :mod:`assay.select.mixed` (bare or under
    ``seals:``) when that module does not register them itself.
    """
    from .select.strategies import get_strategy

    if not isinstance(name, str):
        raise InputError(f"strategy name must be a string, got {type(name).__name__}")
    prefix = name.strip().lower().rpartition(":")[0]
    try:
        pool = {"k": seals_k, "k_positive": seals_k_positive}  # None: the strategy's default
        return get_strategy(name, pool_params=pool if prefix == "seals" else None)
    except UnknownNameError as exc:
        from .select import mixed

        strat = mixed.make(name, seals_k=seals_k, seals_k_positive=seals_k_positive)
        if strat is None:
            raise UnknownNameError("strategy", name, list(exc.valid) + mixed.names()) from None
        return strat


# --------------------------------------------------------------------------------------------
# the simulated corpus of one seed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimCorpus:
    """One seed's simulated corpus: the pool with its positives subsampled, and the seed labels.

    Attributes
    ----------
    ids : ndarray [n] int64, ascending
    vectors : ndarray [n, dim] float32
    positive : ndarray [n] bool
    seed_ids : ndarray [seed_positives + seed_negatives] int64
    dropped_ids : ndarray int64
        The pool's positives left out of this corpus.
    """

    ids: np.ndarray
    vectors: np.ndarray
    positive: np.ndarray
    seed_ids: np.ndarray
    dropped_ids: np.ndarray

    @property
    def n_positive(self) -> int:
        return int(self.positive.sum())

    @property
    def prevalence(self) -> float:
        return self.n_positive / max(len(self.ids), 1)

    def truth(self, ids: np.ndarray) -> np.ndarray:
        """The oracle: ``[m]`` bool, True for positives (every id must be in the corpus)."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        if ids.size and (np.any(pos >= self.ids.size) or np.any(self.ids[np.minimum(pos, self.ids.size - 1)] != ids)):
            raise NotFoundError("the oracle was asked about ids outside the simulated corpus")
        return self.positive[pos]


def positives_to_keep(n_negative: int, prevalence: float) -> int:
    """``round(p * n_neg / (1 - p))``, at least 1: the positives that make up ``p`` of the pool."""
    return max(1, round(prevalence * n_negative / (1.0 - prevalence)))


def build_corpus(
    truth: GroundTruth, positive: str, *, prevalence: float, seed_positives: int, seed_negatives: int,
    rng: np.random.Generator,
) -> SimCorpus:
    """Subsample the pool's positives to ``prevalence`` and draw the seed labels (both with ``rng``)."""
    pool = ~truth.is_test  # [N]
    is_pos = truth.labels == positive  # [N]
    pos_rows = np.flatnonzero(pool & is_pos)
    neg_rows = np.flatnonzero(pool & ~is_pos)
    n_keep = min(positives_to_keep(neg_rows.size, prevalence), pos_rows.size)
    if n_keep <= seed_positives:
        raise InputError(
            f"class {positive!r} keeps {n_keep} positive(s) in the pool at prevalence {prevalence} "
            f"({pos_rows.size} available, {neg_rows.size} negatives); the seed takes {seed_positives}, "
            "so nothing would be left to find: raise the prevalence or lower the seed"
        )
    if neg_rows.size < seed_negatives:
        raise InputError(f"the pool holds {neg_rows.size} negatives of {positive!r}, fewer than the seed's {seed_negatives}")
    kept = np.sort(rng.choice(pos_rows, size=n_keep, replace=False))  # [n_keep] rows
    dropped = np.setdiff1d(pos_rows, kept)
    rows = np.union1d(neg_rows, kept)  # [n] ascending rows = ascending ids
    seed_pos = rng.choice(kept, size=seed_positives, replace=False)
    seed_neg = rng.choice(neg_rows, size=seed_negatives, replace=False)
    seed_rows = np.concatenate([seed_pos, seed_neg])
    return SimCorpus(
        ids=truth.ids[rows], vectors=truth.vectors[rows], positive=is_pos[rows],
        seed_ids=truth.ids[seed_rows], dropped_ids=truth.ids[dropped],
    )


#: Pools up to this size get an exact (flat) index with ``index_kind="auto"``; larger ones HNSW.
AUTO_FLAT_MAX = 20_000
#: HNSW search breadth of the simulation's index (recall@101 ~0.99 on CIFAR-10 efficientnet-lite0 vectors).
HNSW_EF_SEARCH = 128


def build_pool_index(truth: GroundTruth, kind: str = "auto") -> Any:
    """A FAISS index (:class:`assay.index.VectorIndex`) over every pool item (the non-test items) of ``truth``.

    One index serves every class and seed: each run leaves its dropped positives out of the search with an
    id filter, so the neighbours are those of an index over the run's simulated corpus. ``flat`` is exact;
    ``hnsw`` (M=32, efSearch=128) is approximate and much faster to search; ``auto`` is flat up to
    :data:`AUTO_FLAT_MAX` pool items, else HNSW.
    """
    from .index import VectorIndex, make_spec

    if kind not in INDEX_KINDS:
        raise UnknownNameError("index kind", kind, INDEX_KINDS)
    pool = ~truth.is_test
    n, dim = int(pool.sum()), truth.vectors.shape[1]
    if kind == "auto":
        kind = "flat" if n <= AUTO_FLAT_MAX else "hnsw"
    spec = make_spec(kind, n, dim, **({"ef_search": HNSW_EF_SEARCH} if kind == "hnsw" else {}))
    return VectorIndex(spec=spec, dim=dim).build(truth.ids[pool], truth.vectors[pool], rng=0)


def _neighbors_fn(index: Any, corpus: SimCorpus) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """``(ids, k) -> (sims [m, k], ids [m, k])`` over the simulated corpus: the pool index minus dropped positives.

    The query item itself may come back (SEALS drops self-matches); FAISS pads with id -1.
    """
    from .select.strategies import vectors_by_id

    lookup = vectors_by_id(corpus.vectors, corpus.ids)
    dropped = corpus.dropped_ids if corpus.dropped_ids.size else None

    def fn(ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        return index.search(lookup(ids), k, exclude_ids=dropped)

    return fn


# --------------------------------------------------------------------------------------------
# one run: one strategy, one seed
# --------------------------------------------------------------------------------------------


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


@dataclass
class _Run:
    rows: list[dict[str, Any]]
    mined: list[tuple[int, int, bool]]  # (id, round, positive) in proposal order
    n_truncated: int = 0


#: Strategies that score with the neighbours of the pool's items (ctx.neighbors), with or without SEALS.
_NEIGHBOR_STRATEGIES = ("information-density",)


def _uses_neighbors(strategy_name: str) -> bool:
    """Whether a strategy (its canonical name, ``Strategy.name``) needs the pool index's neighbours: a SEALS
    pool, or a base strategy that scores with them."""
    return strategy_name.startswith("seals:") or strategy_name.rpartition(":")[2] in _NEIGHBOR_STRATEGIES


def _run(
    corpus: SimCorpus, test_vectors: np.ndarray, test_y: np.ndarray, name: str, seed: int, cfg: SimulationConfig,
    neighbors: Callable | None, clusters: np.ndarray, threshold: float,
) -> _Run:
    from .loop import make_proxy, select_round
    from .select.strategies import PoolExhaustedWarning, vectors_by_id

    base_name, proxy_override = split_spec(name)
    proxy = proxy_override or cfg.proxy
    strat = make_strategy(base_name, seals_k=cfg.seals_k, seals_k_positive=cfg.seals_k_positive)
    is_seals = strat.name.startswith("seals:")
    uses_neighbors = _uses_neighbors(strat.name)
    rng = np.random.default_rng([seed, _name_key(name)])
    lookup = vectors_by_id(corpus.vectors, corpus.ids)
    N = corpus.ids.size
    n_pos_total = corpus.n_positive
    pos_rank = np.full(N, -1, dtype=np.int64)  # [N] cluster of each corpus positive, -1 for negatives
    pos_rank[np.flatnonzero(corpus.positive)] = clusters
    scored = np.zeros(N, dtype=bool)  # items scored in any round so far

    lab_ids = np.asarray(corpus.seed_ids, dtype=np.int64)
    lab_y = corpus.truth(lab_ids)
    found_rows = np.searchsorted(corpus.ids, lab_ids[lab_y])
    rows: list[dict[str, Any]] = []
    mined: list[tuple[int, int, bool]] = []
    n_clusters = int(clusters.max()) + 1 if clusters.size else 0

    def row(rnd: int, batch_ids: np.ndarray, batch_y: np.ndarray, out: Any, secs: float | None,
            novel: int | None) -> dict[str, Any]:
        found = int(lab_y.sum())
        cov = E.coverage(pos_rank[np.searchsorted(corpus.ids, lab_ids[lab_y])])
        return {
            "strategy": name, "seed": seed, "round": rnd, "labels": int(lab_ids.size),
            "batch": int(batch_ids.size), "batch_positives": int(batch_y.sum()),
            "positives_found": found, "pool_positives": n_pos_total, "recall": E.recall(found, n_pos_total),
            "precision": None if out is None else E.mining_precision(batch_y),
            "ap": None, "ap_gain_per_1000": None,
            "pool_size": None if out is None else int(out.pool_size),
            "scanned": None if out is None else int(out.scanned),
            "scanned_fraction": None if out is None else out.scanned / N,
            "scanned_fraction_cumulative": float(scored.mean()) if out is not None else 0.0,
            "seconds": secs,
            "seconds_train": None if out is None else float(out.seconds.get("train", 0.0)),
            "seconds_select": None if out is None else float(out.seconds.get("pool", 0.0) + out.seconds.get("select", 0.0)),
            "coverage": cov, "coverage_fraction": cov / n_clusters if n_clusters else None,
            "new_positives": int(batch_y.sum()) if out is not None else None,
            "novel_positives": novel,
            "novelty_hit_rate": None if (out is None or not batch_y.any()) else novel / int(batch_y.sum()),
        }

    def ap_of(model: Any) -> float:
        return E.average_precision(test_y, model.predict_proba(test_vectors))

    rows.append(row(0, lab_ids, lab_y, None, None, None))
    n_trunc = 0
    rnd = 0
    while lab_ids.size < cfg.budget:
        rnd += 1
        n = min(cfg.batch, cfg.budget - lab_ids.size)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PoolExhaustedWarning)
            try:
                out = select_round(
                    strategy=strat, n=n, rng=rng, corpus_ids=corpus.ids, vectors=lookup, labelled_ids=lab_ids,
                    labels=lab_y.astype(np.int8), neighbors=neighbors if uses_neighbors else None, proxy=proxy,
                    seed=seed * 1000 + rnd,
                )
            except EmptyPoolError:
                break
        secs = time.perf_counter() - t0
        n_trunc += sum(issubclass(w.category, PoolExhaustedWarning) for w in caught)
        if out.model is not None and rows[-1]["ap"] is None:
            rows[-1]["ap"] = ap_of(out.model)  # the proxy this round trained: AP at the previous row's labels
        if is_seals:
            scored[np.searchsorted(corpus.ids, strat.pool.ids)] = True
        else:
            scored[~np.isin(corpus.ids, lab_ids)] = True
        batch_ids = np.asarray(out.ids, dtype=np.int64)
        batch_y = corpus.truth(batch_ids)
        earlier = corpus.vectors[found_rows]  # [e, dim] positives found before this round
        new_vecs = corpus.vectors[np.searchsorted(corpus.ids, batch_ids[batch_y])]
        novel = int(E.novelty_hits(new_vecs, earlier, threshold).sum()) if batch_y.any() else 0
        mined.extend((int(i), rnd, bool(y)) for i, y in zip(batch_ids, batch_y))
        lab_ids = np.concatenate([lab_ids, batch_ids])
        lab_y = np.concatenate([lab_y, batch_y])
        found_rows = np.searchsorted(corpus.ids, lab_ids[lab_y])
        rows.append(row(rnd, batch_ids, batch_y, out, secs, novel))
    # The proxy on the final labels (the loop would train it at the start of the next round).
    final = make_proxy(proxy, seed=seed * 1000 + rnd + 1).fit(lookup(lab_ids), lab_y.astype(np.int8))
    rows[-1]["ap"] = ap_of(final)
    for prev, cur in itertools.pairwise(rows):
        cur["ap_gain_per_1000"] = (None if prev["ap"] is None or cur["ap"] is None else
                                   float(E.ap_gain_per_1000([prev["labels"], cur["labels"]], [prev["ap"], cur["ap"]])[0]))
    return _Run(rows=rows, mined=mined, n_truncated=n_trunc)


# --------------------------------------------------------------------------------------------
# the simulation
# --------------------------------------------------------------------------------------------


@dataclass
class SimulationResult:
    """Rows per strategy, seed and round; the summary per strategy; the protocol as run."""

    positive: str
    protocol: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]]
    mined: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # proposals: id, seed, round, positive
    uris: dict[int, str] | None = None
    texts: dict[int, str] | None = None  # the words of text items, shown in the report's grid
    seed_ids: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> the seed labels' ids
    dropped_ids: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> positives left out of the corpus
    corpus_ids: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> the simulated corpus

    def to_json(self) -> dict[str, Any]:
        """One JSON-ready object: ``{"positive", "protocol", "strategies": {...}, "curves", "rounds"}``."""
        return {
            "positive": self.positive,
            "protocol": self.protocol,
            "strategies": self.summary,
            "curves": self.curves,
            "rounds": self.rows,
        }


#: Columns of the per-round table, in order.
ROW_COLUMNS = (
    "strategy", "seed", "round", "labels", "batch", "batch_positives", "positives_found", "pool_positives",
    "recall", "precision", "ap", "ap_gain_per_1000", "pool_size", "scanned", "scanned_fraction",
    "scanned_fraction_cumulative", "seconds", "seconds_train", "seconds_select", "coverage", "coverage_fraction",
    "new_positives", "novel_positives", "novelty_hit_rate",
)


def _mean(values: Sequence[Any]) -> float | None:
    return E.mean_ignoring_none(values)


def summarize(rows: Sequence[dict[str, Any]], strategies: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Final values per strategy (means over seeds) and mean curves per strategy and round.

    Final values: ``ap``, ``recall``, ``labels``, ``positives_found``, ``coverage`` and
    ``coverage_fraction`` at the last round; ``scanned_fraction`` and ``seconds_per_round`` are the mean
    over the selection rounds (round 0, the seed, selects nothing); ``scanned_fraction_cumulative`` is the
    share of the corpus scored in any round; ``mining_precision`` is the share of all proposed items
    that were positive; ``ap_gain_per_1000`` is ``1000 * (AP_last - AP_seed) / (labels_last - labels_seed)``;
    ``novelty_hit_rate`` is novel positives over new positives, over all rounds.
    """
    summary: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in strategies:
        mine = [r for r in rows if r["strategy"] == name]
        seeds = sorted({r["seed"] for r in mine})
        per_seed = []
        for s in seeds:
            rs = sorted((r for r in mine if r["seed"] == s), key=lambda r: r["round"])
            first, last, sel = rs[0], rs[-1], rs[1:]
            proposed = sum(r["batch"] for r in sel)
            new = sum(r["new_positives"] or 0 for r in sel)
            per_seed.append({
                "seed": s,
                "ap": last["ap"], "ap_seed": first["ap"], "recall": last["recall"], "labels": last["labels"],
                "positives_found": last["positives_found"], "pool_positives": last["pool_positives"],
                "coverage": last["coverage"], "coverage_fraction": last["coverage_fraction"],
                "scanned_fraction": _mean([r["scanned_fraction"] for r in sel]),
                "scanned_fraction_last": sel[-1]["scanned_fraction"] if sel else None,
                "scanned_fraction_cumulative": last["scanned_fraction_cumulative"],
                "seconds_per_round": _mean([r["seconds"] for r in sel]),
                "select_seconds_per_round": _mean([r["seconds_select"] for r in sel]),
                "train_seconds_per_round": _mean([r["seconds_train"] for r in sel]),
                "mining_precision": (sum(r["batch_positives"] for r in sel) / proposed) if proposed else None,
                "ap_gain_per_1000": (1000.0 * (last["ap"] - first["ap"]) / (last["labels"] - first["labels"]))
                if last["labels"] > first["labels"] and first["ap"] is not None else None,
                "novelty_hit_rate": (sum(r["novel_positives"] or 0 for r in sel) / new) if new else None,
                "rounds": len(sel),
            })
        keys = [k for k in per_seed[0] if k not in ("seed",)] if per_seed else []
        agg: dict[str, Any] = {k: _mean([p[k] for p in per_seed]) for k in keys}
        agg["labels"] = round(agg["labels"]) if agg.get("labels") is not None else 0
        agg["rounds"] = round(agg["rounds"]) if agg.get("rounds") is not None else 0
        agg["ap_std"] = float(np.std([p["ap"] for p in per_seed])) if per_seed else None
        agg["recall_std"] = float(np.std([p["recall"] for p in per_seed])) if per_seed else None
        agg["seeds"] = len(per_seed)
        agg["per_seed"] = per_seed
        summary[name] = agg
        curve = []
        for rnd in sorted({r["round"] for r in mine}):
            rs = [r for r in mine if r["round"] == rnd]
            curve.append({
                "round": rnd, "n_seeds": len(rs),
                **{k: _mean([r[k] for r in rs]) for k in (
                    "labels", "positives_found", "recall", "ap", "precision", "ap_gain_per_1000", "scanned_fraction",
                    "scanned_fraction_cumulative", "seconds", "coverage", "novelty_hit_rate")},
                "recall_min": min(r["recall"] for r in rs), "recall_max": max(r["recall"] for r in rs),
                "ap_min": _min([r["ap"] for r in rs]), "ap_max": _max([r["ap"] for r in rs]),
            })
        curves[name] = curve
    return summary, curves


def _min(v: Sequence[Any]) -> float | None:
    v = [x for x in v if x is not None]
    return min(v) if v else None


def _max(v: Sequence[Any]) -> float | None:
    v = [x for x in v if x is not None]
    return max(v) if v else None


def simulate(
    truth: GroundTruth, config: SimulationConfig, *, progress: Callable[[str], None] | None = None,
    index: Any | None = None,
) -> SimulationResult:
    """Run the protocol for every strategy and seed of ``config`` on ``truth`` (in memory).

    ``index`` is an optional prebuilt :func:`build_pool_index` of ``truth`` (reused across classes); by
    default one is built (kind ``config.index_kind``) when a ``seals:`` strategy is asked for.

    Raises
    ------
    UnknownNameError
        The class is not in ``truth`` (the message lists the classes), or an unknown strategy / proxy.
    InputError
        A bad parameter, a budget smaller than the seed, no test items or no test positives, too few
        positives in the pool.
    """
    config.validate()
    classes = truth.classes
    if config.positive not in classes:
        raise UnknownNameError("class", config.positive, classes)
    test_rows = np.flatnonzero(truth.is_test)
    if test_rows.size == 0:
        raise InputError("no item is in the test split; AP is measured on the held-out test split")
    test_y = truth.labels[test_rows] == config.positive  # [n_test]
    if not test_y.any():
        raise InputError(f"the test split holds no item of class {config.positive!r}, so AP is undefined")
    n_pool = int((~truth.is_test).sum())
    if config.budget > n_pool:
        raise InputError(f"budget ({config.budget}) exceeds the pool ({n_pool} items outside the test split)")
    test_vectors = truth.vectors[test_rows]  # [n_test, dim]
    say = progress or (lambda msg: None)
    needs_index = any(_uses_neighbors(make_strategy(split_spec(n)[0], seals_k=config.seals_k).name)
                      for n in config.strategies)
    index_seconds = 0.0
    if needs_index and index is None:
        t0 = time.perf_counter()
        index = build_pool_index(truth, config.index_kind)
        index_seconds = time.perf_counter() - t0
    elif needs_index:
        pool_ids = truth.ids[~truth.is_test]
        if len(index) != pool_ids.size or not np.all(index.contains(pool_ids)):
            raise InputError(f"index must hold exactly the {pool_ids.size} pool (non-test) items of the ground truth")

    rows: list[dict[str, Any]] = []
    mined: dict[str, list[dict[str, Any]]] = {}
    seeds_info = []
    seed_ids: dict[int, np.ndarray] = {}
    dropped_ids: dict[int, np.ndarray] = {}
    corpus_ids: dict[int, np.ndarray] = {}
    truncated: dict[str, int] = {}
    for s in config.seed_list:
        rng = np.random.default_rng([s, _name_key(config.positive), 0x5EED])
        corpus = build_corpus(
            truth, config.positive, prevalence=float(config.prevalence), seed_positives=config.seed_positives,
            seed_negatives=config.seed_negatives, rng=rng,
        )
        if config.budget > corpus.ids.size:
            raise InputError(f"budget ({config.budget}) exceeds the simulated corpus ({corpus.ids.size} items, after the "
                             "test split and the rare-concept subsampling): lower the budget or use more items")
        seed_ids[s], dropped_ids[s], corpus_ids[s] = corpus.seed_ids, corpus.dropped_ids, corpus.ids
        pos_vecs = corpus.vectors[corpus.positive]  # [n_pos, dim]
        clusters = E.cluster_positives(pos_vecs, config.n_clusters, seed=s)
        threshold = (float(config.novelty_threshold) if config.novelty_threshold is not None
                     else float(np.median(E.nearest_other_similarity(pos_vecs))))
        neighbors = _neighbors_fn(index, corpus) if needs_index else None
        seeds_info.append({
            "seed": s, "corpus_size": int(corpus.ids.size), "pool_positives": corpus.n_positive,
            "prevalence": corpus.prevalence, "dropped_positives": int(corpus.dropped_ids.size),
            "novelty_threshold": threshold, "clusters": int(clusters.max()) + 1,
        })
        for name in config.strategies:
            t0 = time.perf_counter()
            run = _run(corpus, test_vectors, test_y, name, s, config, neighbors, clusters, threshold)
            rows.extend(run.rows)
            truncated[name] = truncated.get(name, 0) + run.n_truncated
            mined.setdefault(name, []).extend({"id": i, "seed": s, "round": r, "positive": y} for i, r, y in run.mined)
            last = run.rows[-1]
            say(f"{config.positive} seed {s} {name}: recall {last['recall']:.3f}, AP {last['ap']:.3f}, "
                f"{last['labels']} labels, {time.perf_counter() - t0:.1f} s")
        del neighbors
    summary, curves = summarize(rows, list(config.strategies))
    for name, n in truncated.items():
        summary[name]["truncated_batches"] = n
    from .select.strategies import SealsStrategy

    protocol = {
        "positive": config.positive, "prevalence": float(config.prevalence), "budget": int(config.budget),
        "batch": int(config.batch), "seeds": config.seed_list, "proxy": config.proxy, "seals_k": int(config.seals_k),
        "seals_k_positive": int(config.seals_k_positive if config.seals_k_positive is not None
                                else SealsStrategy.POSITIVE_FACTOR * config.seals_k),
        "seed_positives": int(config.seed_positives), "seed_negatives": int(config.seed_negatives),
        "budget_counts_seed": True, "n_clusters": int(config.n_clusters), "index_kind": index.spec.kind if index is not None else None,
        "novelty_threshold": config.novelty_threshold if config.novelty_threshold is not None else "median nearest-positive cosine",
        "index_seconds": index_seconds, "test_size": int(test_rows.size), "test_positives": int(test_y.sum()), "pool_size": n_pool,
        "per_seed": seeds_info,
        "corpus_size": float(np.mean([x["corpus_size"] for x in seeds_info])),
        "pool_positives": float(np.mean([x["pool_positives"] for x in seeds_info])),
    }
    return SimulationResult(
        positive=config.positive, protocol=protocol, rows=rows, summary=summary, curves=curves, mined=mined,
        uris=truth.uris, texts=truth.texts, seed_ids=seed_ids, dropped_ids=dropped_ids, corpus_ids=corpus_ids,
    )


# --------------------------------------------------------------------------------------------
# the shell: ground truth from a workspace
# --------------------------------------------------------------------------------------------


def read_truth_file(path: str | Path, uri_to_id: dict[str, int], known_ids: set[int]) -> dict[int, tuple[str, str | None]]:
    """Read a truth file (CSV, JSONL or Parquet: ``id`` or ``uri``, ``label``, optional ``split``):
    ``{id: (label, split or None)}``; labels and splits are read as text.

    Every row is checked; unknown ids or uris, missing labels or repeated items raise one
    :class:`InputError` naming every bad row (the first ten, and how many more).
    """
    from .interop.scores import column_hint, read_score_records
    from .media import file_uri

    p = Path(path)
    # CSV, JSONL or Parquet; a missing file, a folder, non-UTF-8 text or a repeated column is refused here
    records = read_score_records(p, what="truth file")
    cols = set().union(*(r.keys() for r in records)) if records else set()
    if "label" not in cols or not ({"id", "uri"} & cols):
        raise InputError(f"{p} has columns {sorted(cols)}; expected 'label' and 'id' or 'uri'"
                         + column_hint(cols, ("id", "uri", "label", "split")))

    def text(v: Any) -> str:
        return "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()

    out: dict[int, tuple[str, str | None]] = {}
    problems = RowProblems(str(p))  # every bad row is reported, not only the first
    for n, rec in enumerate(records, 1):
        with problems.row(f"row {n}"):
            raw = rec.get("id")
            if text(raw):
                item = as_item_id(raw, "id")
                if item not in known_ids:
                    raise InputError(f"item id {item} is not an item of the catalog")
            else:
                uri = text(rec.get("uri"))
                item = uri_to_id.get(uri) if uri else None
                if item is None and uri and "://" not in uri:
                    # a relative path is relative to the truth file's folder, as in a manifest (else to here)
                    rel = Path(uri) if Path(uri).is_absolute() else p.parent / uri
                    item = uri_to_id.get(file_uri(rel), uri_to_id.get(file_uri(uri)))
                if item is None:
                    raise InputError(f"uri {uri!r} is not an item of the catalog" if uri else "no id and no uri")
            label = text(rec.get("label"))
            if not label:
                raise InputError("empty label")
            split = text(rec.get("split")) or None
            if item in out and out[item] != (label, split):  # the same row twice is harmless
                raise InputError(f"item {item} appears twice, with label/split {out[item]} and {(label, split)}")
            out[item] = (label, split)
    problems.raise_if_any()
    if not out:
        raise InputError(f"{p} holds no rows")
    return out


_TEST_SPLIT_SEED = 20220  # --test-fraction: which items are held out (fixed, so runs compare)


def load_ground_truth(
    ws: Any, *, label_column: str = "label", split_column: str = "split", test_split: str = "test",
    encoder: str | None = None, truth: str | Path | None = None, keep_duplicates: bool = False,
    test_fraction: float | None = None,
) -> GroundTruth:
    """Vectors, classes and splits of a workspace's embedded items.

    The corpus is every embedded item with status ok (non-representative duplicates left out unless
    ``keep_duplicates``). Classes come from the items' manifest metadata ``label_column``, or from a truth
    CSV (``id`` or ``uri``, ``label``, optional ``split``) that must cover every item of the corpus. The
    split comes from the truth file's ``split`` column where given, else from the metadata ``split_column``;
    with ``test_fraction`` (for corpora without a split) a seeded random share of the items is the test split
    instead, and split columns are ignored.

    Raises
    ------
    InputError
        No item carries the label column; some items lack a label (or are missing from the truth file);
        no item carries the split column.
    NoEmbeddingsError
        The workspace has no embeddings for the encoder.
    """
    store = ws.vectors(encoder)
    ids, vecs = store.load(dtype=np.float32)  # [n], [n, dim]
    ok = ws.catalog.ids(status="ok")
    keep = np.isin(ids, ok)
    if not keep_duplicates:
        keep &= ~np.isin(ids, ws.catalog.non_representative_ids())
    ids, vecs = ids[keep], vecs[keep]
    order = np.argsort(ids, kind="stable")
    ids, vecs = ids[order], vecs[order]
    if ids.size == 0:
        raise InputError("the workspace has no embedded items with status ok to simulate on")
    metas: dict[int, dict[str, Any]] = {}
    uris: dict[int, str] = {}
    texts: dict[int, str] = {}
    for r in ws.catalog.iter_items(ids):
        metas[r.id] = r.meta
        uris[r.id] = r.uri
        if r.modality == "text":
            texts[r.id] = (r.text or "")[:600]
    labels = np.empty(ids.size, dtype=object)
    splits = np.empty(ids.size, dtype=object)
    if truth is not None:
        # Rows may name any item of the catalog (a dataset's whole truth file): those outside the simulated
        # corpus (set aside as duplicates, failed, not embedded) are skipped, not refused.
        every = ws.catalog.ids(status=None)
        all_uris = ws.catalog.uris(every)
        table = read_truth_file(truth, {u: i for i, u in all_uris.items()}, set(int(i) for i in every))
        outside = len(set(table) - set(uris))
        if outside:
            log.info("the truth file %s has %d rows for items outside the simulated corpus (set aside as duplicates, "
                     "failed or not embedded): skipped", truth, outside)
        missing = [int(i) for i in ids if int(i) not in table]
        if missing:
            raise InputError(
                f"the truth file {truth} does not cover the corpus: {len(missing)} of the {ids.size} items in the "
                f"simulated corpus (embedded, ok{'' if keep_duplicates else ', not set aside as duplicates'}) have "
                f"no row, e.g. ids {missing[:5]}"
            )
        for k, i in enumerate(ids.tolist()):
            labels[k], splits[k] = table[i]
            if splits[k] is None:
                v = metas.get(i, {}).get(split_column)
                splits[k] = None if v is None else str(v)
    else:
        have = [i for i in ids.tolist() if metas.get(i, {}).get(label_column) not in (None, "")]
        if not have:
            raise InputError(
                f"no item of the workspace carries the {label_column!r} column in its metadata; ingest a manifest "
                f"with a {label_column!r} column, name another with --label-column, or give --truth FILE"
            )
        if len(have) < ids.size:
            lacking = [i for i in ids.tolist() if metas.get(i, {}).get(label_column) in (None, "")]
            raise InputError(
                f"{len(lacking)} of {ids.size} embedded items have no {label_column!r} value, e.g. ids {lacking[:5]}; "
                "the ground truth must cover the corpus (or give --truth FILE)"
            )
        for k, i in enumerate(ids.tolist()):
            labels[k] = str(metas[i][label_column])
            v = metas[i].get(split_column)
            splits[k] = None if v is None else str(v)
    if test_fraction is not None:
        if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
            raise InputError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
        if any(s is not None for s in splits):
            log.warning("--test-fraction %g holds out a random share of the corpus for AP; the items' %r column is "
                        "not used (leave --test-fraction out to use it)", test_fraction, split_column)
        # Seeded by the ids themselves, so the same corpus gets the same test split in every run.
        u = np.random.default_rng(_TEST_SPLIT_SEED).random(int(ids.max()) + 1)[ids] if ids.size else np.zeros(0)
        is_test = u < float(test_fraction)
        if not is_test.any() or is_test.all():
            raise InputError(f"a test fraction of {test_fraction} leaves no item on one side of {ids.size} items")
        return GroundTruth(ids=ids, vectors=vecs, labels=labels.astype(str), is_test=is_test, uris=uris, texts=texts or None)
    if all(s is None for s in splits):
        raise InputError(
            f"no item carries the split column {split_column!r}; the test split {test_split!r} holds the items AP is "
            "measured on (name the column with --split-column, add a 'split' column to the truth file, or hold out "
            "a random share of the corpus with --test-fraction 0.2)"
        )
    is_test = np.asarray([s == test_split for s in splits], dtype=bool)
    if not is_test.any():
        found = sorted({str(s) for s in splits if s is not None})
        raise InputError(f"no item is in the test split {test_split!r}; the {split_column!r} values are {found}")
    return GroundTruth(ids=ids, vectors=vecs, labels=labels.astype(str), is_test=is_test, uris=uris, texts=texts or None)


def simulate_workspace(
    ws: Any, config: SimulationConfig, *, label_column: str = "label", split_column: str = "split",
    test_split: str = "test", encoder: str | None = None, truth: str | Path | None = None,
    out: str | Path | None = None, progress: Callable[[str], None] | None = None,
    test_fraction: float | None = None,
) -> SimulationResult:
    """Load the ground truth of ``ws``, validate, simulate, and (with ``out``) write the report.

    Everything is checked before anything is written: bad input leaves ``out`` untouched.
    """
    if not isinstance(config, SimulationConfig):
        raise InputError(f"config must be a SimulationConfig, got {type(config).__name__}")
    check_workspace(ws, "simulate_workspace")
    config.validate()
    if out is not None:
        from .errors import check_folder

        check_folder(out, f"out {out}")  # a file on the way is found now, not after the whole simulation
    gt = load_ground_truth(ws, label_column=label_column, split_column=split_column, test_split=test_split,
                           encoder=encoder, truth=truth, test_fraction=test_fraction)
    if config.positive not in gt.classes:
        raise UnknownNameError("class", config.positive, gt.classes)
    result = simulate(gt, config, progress=progress)
    result.protocol.update({"label_column": label_column, "split_column": split_column, "test_split": test_split,
                            "test_fraction": test_fraction,
                            "encoder": encoder or ws.default_encoder, "truth": None if truth is None else str(truth)})
    if out is not None:
        from .report import write_report

        write_report(result, out)
    return result


def write_rows_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The per-round table as CSV (columns :data:`ROW_COLUMNS`; empty cells for undefined values)."""
    p = Path(path)
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in ROW_COLUMNS})
    return p


def config_dict(config: SimulationConfig) -> dict[str, Any]:
    d = asdict(config)
    d["strategies"] = list(config.strategies)
    d["seeds"] = config.seed_list
    return json.loads(json.dumps(d))
