"""Strategies for mining a rare concept that mix exploitation with a little exploration or diversity.

* ``mixed`` (:class:`MixedStrategy`): most of the batch by *most likely positive* (the greedy
  active-search policy), the rest by *uncertainty* (entropy) among the items not taken. Greedy search
  alone keeps harvesting the regions it already knows; the uncertain share probes the boundary, which
  improves the proxy and finds positives the greedy ranking has not reached yet (the "explore" step of
  an epsilon-greedy search; cf. Jiang et al. 2017, "Efficient nonmyopic active search", and the
  mixed strategies of Coleman et al. 2022).
* ``diverse-positive`` (:class:`DiversePositiveStrategy`): most likely positive, with redundancy
  removed from the batch: walking down the ranking, an item whose cosine similarity to an item already
  chosen in this batch is at least ``max_sim`` is skipped (near-duplicates and near-copies spend labels
  without teaching the proxy anything new).

Both are plain :class:`~assay.select.strategies.Strategy` subclasses (pure functions of the context: the
proxy's ``proba`` and, for ``diverse-positive``, ``vectors``), so they also run on a SEALS pool
(``seals:mixed``). :func:`make` builds them by name (bare or under ``seals:``) until they are registered
in :data:`assay.select.strategies.STRATEGIES`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from assay.errors import InputError
from assay.select import scores as S
from assay.select.strategies import SealsStrategy, Strategy

__all__ = ["MIXED_STRATEGIES", "DiversePositiveStrategy", "MixedStrategy", "make", "names"]


def _proba(ctx: Any, pool: np.ndarray, name: str) -> np.ndarray:
    fn = ctx.require("proba", name, "a function ids -> P(positive)")
    out = np.empty(pool.size, dtype=np.float64)  # [n_pool]
    for start in range(0, pool.size, ctx.block_size):
        blk = pool[start : start + ctx.block_size]
        vals = np.asarray(fn(blk), dtype=np.float64)
        if vals.shape != blk.shape:
            raise InputError(f"ctx.proba(ids) must return [m] for m={blk.size} ids, got {vals.shape}")
        out[start : start + blk.size] = vals
    n_nan = int(np.isnan(out).sum())
    if n_nan:
        raise InputError(f"strategy {name!r}: ctx.proba gave {n_nan} NaN value(s)")
    return out


def _ranking(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions by score descending, ties by smaller id (deterministic)."""
    return np.lexsort((ids, -scores))


class MixedStrategy(Strategy):
    """``round(n * (1 - explore))`` items by P(positive), then the rest by entropy among the others.

    Parameters
    ----------
    explore : float in [0, 1]
        Share of the batch chosen by uncertainty (default 0.2). 0 is ``most-likely-positive``,
        1 is ``entropy``.

    The split of a batch between exploitation and exploration follows Osugi, Kim & Scott (2005),
    "Balancing exploration and exploitation: a new algorithm for active machine learning" (ICDM); the
    greedy exploitation part is one-step active search (Garnett et al., ICML 2012).
    """

    name = "mixed"

    def __init__(self, *, explore: float = 0.2) -> None:
        if not isinstance(explore, (int, float)) or not 0.0 <= float(explore) <= 1.0:
            raise InputError(f"explore must be a number in [0, 1], got {explore!r}")
        self.explore = float(explore)

    def _select(self, ctx, pool, n, rng):
        p = _proba(ctx, pool, self.name)  # [n_pool]
        n_exploit = round(n * (1.0 - self.explore))
        first = _ranking(S.most_likely_positive(p), pool)[:n_exploit]  # [n_exploit] positions
        rest = np.ones(pool.size, dtype=bool)
        rest[first] = False
        cand = np.flatnonzero(rest)  # [n_pool - n_exploit]
        unc = S.entropy(p[cand])  # [n_pool - n_exploit]
        pick = _ranking(unc, pool[cand])[: n - n_exploit]
        pos = np.concatenate([first, cand[pick]])
        return pool[pos], np.concatenate([p[first], unc[pick]])


class DiversePositiveStrategy(Strategy):
    """Most likely positive, skipping items within cosine ``max_sim`` of an item already in the batch.

    Walks the ranking by P(positive) (ties by id) and accepts an item unless its similarity to an
    accepted one is ``>= max_sim``; when the ranking runs out first, the skipped items fill the batch in
    ranking order. Only the top ``n * oversample`` candidates are compared (``[n * oversample, dim]``
    vectors). Needs ``ctx.proba`` and ``ctx.vectors``. A hard-threshold form of maximal marginal
    relevance (Carbonell & Goldstein, SIGIR 1998) on active search's greedy ranking.
    """

    name = "diverse-positive"

    def __init__(self, *, max_sim: float = 0.9, oversample: int = 10) -> None:
        if not isinstance(max_sim, (int, float)) or not -1.0 <= float(max_sim) <= 1.0:
            raise InputError(f"max_sim must be a cosine in [-1, 1], got {max_sim!r}")
        if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 1:
            raise InputError(f"oversample must be a positive integer, got {oversample!r}")
        self.max_sim = float(max_sim)
        self.oversample = oversample

    def _select(self, ctx, pool, n, rng):
        p = _proba(ctx, pool, self.name)  # [n_pool]
        order = _ranking(p, pool)[: n * self.oversample]  # [m] candidate positions
        lookup = ctx.require("vectors", self.name, "a function ids -> [m, dim] embeddings")
        V = np.asarray(lookup(pool[order]), dtype=np.float32)  # [m, dim]
        chosen: list[int] = []
        skipped: list[int] = []
        for j in range(order.size):
            if len(chosen) == n:
                break
            if chosen and float((V[chosen] @ V[j]).max()) >= self.max_sim:
                skipped.append(j)
            else:
                chosen.append(j)
        chosen += skipped[: n - len(chosen)]
        pos = order[np.asarray(chosen, dtype=np.int64)]
        return pool[pos], p[pos]


#: Name -> class of the strategies in this module.
MIXED_STRATEGIES: dict[str, type[Strategy]] = {
    MixedStrategy.name: MixedStrategy,
    DiversePositiveStrategy.name: DiversePositiveStrategy,
}


def names() -> list[str]:
    """Every name :func:`make` accepts: the bare names, then ``seals:<name>``."""
    return list(MIXED_STRATEGIES) + [f"seals:{n}" for n in MIXED_STRATEGIES]


def make(name: str, *, seals_k: int = 100, seals_k_positive: int | None = None, **params: Any) -> Strategy | None:
    """A strategy of this module by name (``mixed``, ``seals:mixed``, ...); None for another name."""
    key = str(name).strip().lower().replace("_", "-")
    prefix, _, base = key.rpartition(":")
    if base not in MIXED_STRATEGIES or prefix not in ("", "seals"):
        return None
    strat = MIXED_STRATEGIES[base](**params)
    return SealsStrategy(strat, k=seals_k, k_positive=seals_k_positive) if prefix == "seals" else strat
