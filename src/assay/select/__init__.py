"""The selection engine: scores, diverse batches, candidate pools and strategies by name.

Pure functions on arrays with global int64 item ids (see ``docs``/DESIGN): the mining loop composes
them. Submodules:

* :mod:`assay.select.scores` — uncertainty, disagreement, relevance, novelty, combined value.
* :mod:`assay.select.diversity` — top-n, greedy k-center, cluster-then-sample, MMR.
* :mod:`assay.select.pools` — full pool, SEALS pool (incremental), random subsample.
* :mod:`assay.select.strategies` — ``SelectionContext``, ``Selection``, the registry ``get_strategy``.
"""

from assay.select.diversity import cluster_sample, k_center_greedy, mmr, top_n
from assay.select.pools import (
    CachedNeighbors,
    PoolStats,
    SealsPool,
    exact_neighbors,
    full_pool,
    seals_pool,
    subsample_pool,
)
from assay.select.scores import (
    bald,
    combine,
    combine_multiplicative,
    density,
    disagreement,
    distance_to_labelled,
    entropy,
    exemplar_similarity,
    least_confidence,
    margin,
    most_likely_positive,
    normalize,
    query_similarity,
    uncertainty,
    uniqueness,
    value,
    vote_entropy,
)
from assay.select.strategies import (
    CachedVectors,
    PoolExhaustedWarning,
    Selection,
    SelectionContext,
    Strategy,
    available_strategies,
    get_strategy,
    vectors_by_id,
    vectors_by_row,
)

from assay.select.mixed import MIXED_STRATEGIES  # noqa: E402  (needs the strategies module first)
from assay.select.strategies import STRATEGIES as _STRATEGIES

_STRATEGIES.update(MIXED_STRATEGIES)

__all__ = [
    "MIXED_STRATEGIES",
    # scores
    "least_confidence",
    "margin",
    "entropy",
    "uncertainty",
    "vote_entropy",
    "bald",
    "disagreement",
    "most_likely_positive",
    "query_similarity",
    "exemplar_similarity",
    "distance_to_labelled",
    "density",
    "uniqueness",
    "normalize",
    "combine",
    "combine_multiplicative",
    "value",
    # diversity
    "top_n",
    "k_center_greedy",
    "cluster_sample",
    "mmr",
    # pools
    "full_pool",
    "seals_pool",
    "subsample_pool",
    "SealsPool",
    "PoolStats",
    "exact_neighbors",
    "CachedNeighbors",
    # strategies
    "SelectionContext",
    "Selection",
    "Strategy",
    "PoolExhaustedWarning",
    "get_strategy",
    "available_strategies",
    "vectors_by_row",
    "vectors_by_id",
    "CachedVectors",
]
