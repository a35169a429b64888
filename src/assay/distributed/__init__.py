"""Scale-out paths: embedding on a Ray cluster and a sharded IVF-PQ index.

* :func:`embed_with_ray` (:mod:`assay.distributed.ray_embed`): the unembedded items of a workspace split
  into tasks, embedded by encoder actors (one GPU each where the cluster has GPUs) with the same decode and
  inference code as :func:`assay.embed.embed`, and committed a task at a time into the workspace's vector
  store by the driver. Needs the ``ray`` extra.
* :func:`build_sharded_index` / :func:`build_workspace_sharded_index` / :class:`ShardedIndex`
  (:mod:`assay.distributed.shards`): one IVF-PQ codebook trained once, ``n_shards`` shards filled in
  parallel (Ray tasks or local threads), saved beside each other, memory-mapped on load and searched
  together with global int64 ids.

Nothing here imports Ray or FAISS at import time.
"""

from __future__ import annotations

from .ray_embed import embed_with_ray
from .shards import ShardedIndex, build_sharded_index, build_workspace_sharded_index, train_codebook

__all__ = ["ShardedIndex", "build_sharded_index", "build_workspace_sharded_index", "embed_with_ray", "train_codebook"]
