"""Zero-shot text queries for classifier encoders: the ConSE bridge (Norouzi et al., ICLR 2014).

An ImageNet classifier (e.g. ``efficientnet-lite0``) has no text tower, but it does give each image a
score for each of its C classes, and a text encoder can embed the C class names. ConSE ("convex
combination of semantic embeddings") places an image in the text space as the probability-weighted
average of the embeddings of its T most likely class names:

    f(x) = 1/Z * sum_{t=1..T} p(y_t | x) * s(y_t),      Z = sum_{t=1..T} p(y_t | x)

where ``y_1..y_T`` are the T most probable classes and ``s(y)`` the L2-normalised text embedding of class
name ``y``. A text query ``q`` then scores an image by the cosine between ``s(q)`` and ``f(x)``. Here ``f(x)``
is L2-normalised (so ``Z`` cancels) and the probabilities are a softmax of the logits divided by a
temperature. Everything is pure numpy, processed in blocks of images so that memory stays
``O(block_size * (C + d))``.

The hierarchy route (:class:`ClassHierarchy`, :func:`hierarchy_weights`, :func:`class_set_scores`) reads a
text query as a node of the WordNet hierarchy above the classes instead: ImageNet-1k's classes are WordNet
noun synsets, so "a photo of a dog" matches the synset *dog*, and an image scores by the probability the
classifier gives to the 118 breeds under it, ``P(dog | x) = sum of p(y | x) over the classes y below dog``.
ConSE averages the text embeddings of the image's top classes instead, and breed names ("Sealyham terrier")
lie far from "dog" in a sentence encoder's space, so it finds the category poorly. A query matches the nodes
softly (a softmax over their cosines to the query, temperature 0.02), so a query between two nodes weighs
both; a specific query ("a golden retriever") matches one class.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, UnknownNameError

__all__ = ["ClassHierarchy", "class_set_scores", "conse_image_vectors", "conse_scores", "hierarchy_weights"]

_SCORE_TYPES = ("logits", "probs")


def _check_inputs(
    class_scores: Any, class_text_emb: Any, top_t: Any, temperature: Any, score_type: str, block_size: Any
) -> tuple[Any, np.ndarray, int, float, int]:
    scores = class_scores if isinstance(class_scores, np.ndarray) else np.asarray(class_scores)
    if scores.ndim != 2:
        raise InputError(f"class_scores must be a matrix [n_items, n_classes], got shape {scores.shape}")
    emb = np.asarray(class_text_emb, dtype=np.float32)
    if emb.ndim != 2:
        raise InputError(f"class_text_emb must be a matrix [n_classes, dim], got shape {emb.shape}")
    if scores.shape[1] != emb.shape[0]:
        raise InputError(
            f"class_scores has {scores.shape[1]} classes but class_text_emb has {emb.shape[0]} class embeddings"
        )
    if not np.isfinite(emb).all():
        raise InputError("class_text_emb contains NaN or inf")
    n_classes = emb.shape[0]
    if isinstance(top_t, bool) or not isinstance(top_t, (int, np.integer)) or not 1 <= top_t <= n_classes:
        raise InputError(f"top_t must be an integer in [1, {n_classes}], got {top_t!r}")
    if (
        not isinstance(temperature, (int, float, np.floating, np.integer))
        or not np.isfinite(temperature)
        or temperature <= 0
    ):
        raise InputError(f"temperature must be a positive number, got {temperature!r}")
    if score_type not in _SCORE_TYPES:
        raise UnknownNameError("score type", str(score_type), _SCORE_TYPES)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0:
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)  # [C, 1]
    if (norms == 0).any():
        raise InputError(f"class_text_emb row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    return scores, emb / norms, int(top_t), float(temperature), int(block_size)


def _conse_block(
    scores: np.ndarray, emb_unit: np.ndarray, top_t: int, temperature: float, score_type: str
) -> np.ndarray:
    """ConSE vectors of one block: ``scores [b, C]`` -> ``[b, d]`` unit rows (float32)."""
    s = np.asarray(scores, dtype=np.float64)  # [b, C]
    if not np.isfinite(s).all() and score_type == "logits":
        raise InputError("class_scores contain NaN or inf")
    if score_type == "probs":
        if not np.isfinite(s).all() or (s < 0).any():
            raise InputError("class_scores given as probabilities must be finite and non-negative")
        s = np.log(np.maximum(s, 1e-300))  # softmax(log p / T) = p**(1/T) / Z
    b, n_classes = s.shape
    if top_t < n_classes:
        top = np.argpartition(-s, top_t - 1, axis=1)[:, :top_t]  # [b, T] the T most likely classes
    else:
        top = np.broadcast_to(np.arange(n_classes), (b, n_classes))
    z = np.take_along_axis(s, top, axis=1) / temperature  # [b, T]
    w = np.exp(z - z.max(axis=1, keepdims=True))  # [b, T] softmax numerators restricted to the top T
    w /= w.sum(axis=1, keepdims=True)  # the full softmax denominator cancels after renormalising
    v = np.zeros((b, emb_unit.shape[1]), dtype=np.float32)  # [b, d]
    for t in range(top.shape[1]):  # one [b, d] gather at a time, never [b, T, d]
        v += w[:, t, None].astype(np.float32) * emb_unit[top[:, t]]
    norms = np.linalg.norm(v, axis=1, keepdims=True)  # [b, 1]
    return v / np.maximum(norms, 1e-12)


def conse_image_vectors(
    class_scores: Any,
    class_text_emb: Any,
    *,
    top_t: int = 10,
    temperature: float = 1.0,
    score_type: str = "logits",
    block_size: int = 8192,
) -> np.ndarray:
    """Place each item in the text space: ConSE vectors ``[n, d]``, float32, L2-normalised rows.

    Parameters
    ----------
    class_scores : array-like ``[n, C]``
        Per-item class scores (float16 at rest is fine): logits by default, or probabilities with
        ``score_type="probs"``.
    class_text_emb : array-like ``[C, d]``
        Text embeddings of the C class names (normalised here).
    top_t : int, default 10
        Classes kept per item (T in the paper; 1 <= T <= C).
    temperature : float, default 1.0
        Softmax temperature: probabilities are ``softmax(logits / temperature)`` (for probabilities,
        ``p**(1/temperature)`` renormalised). Higher values spread the weight over the top T.
    score_type : {"logits", "probs"}
    block_size : int
        Items processed at a time.
    """
    scores, emb_unit, top_t, temperature, bs = _check_inputs(
        class_scores, class_text_emb, top_t, temperature, score_type, block_size
    )
    n = scores.shape[0]
    out = np.empty((n, emb_unit.shape[1]), dtype=np.float32)
    for s in range(0, n, bs):
        out[s : s + bs] = _conse_block(scores[s : s + bs], emb_unit, top_t, temperature, score_type)
    return out


def conse_scores(
    query_text_emb: Any,
    class_scores: Any,
    class_text_emb: Any,
    *,
    top_t: int = 10,
    temperature: float = 1.0,
    score_type: str = "logits",
    block_size: int = 8192,
) -> np.ndarray:
    """Cosine between text queries and the ConSE vectors of every item, computed blockwise.

    Parameters
    ----------
    query_text_emb : array-like ``[d]`` or ``[q, d]``
        Query text embeddings from the same text encoder as ``class_text_emb`` (normalised here).
    class_scores, class_text_emb, top_t, temperature, score_type, block_size
        As in :func:`conse_image_vectors`.

    Returns
    -------
    float32 ``[n]`` for one query ``[d]``, ``[q, n]`` for ``[q, d]``. Rank items by it (higher is better).
    """
    q = np.asarray(query_text_emb, dtype=np.float32)
    single = q.ndim == 1
    if single:
        q = q[None, :]
    if q.ndim != 2:
        raise InputError(f"query_text_emb must be a vector [d] or a matrix [q, d], got shape {q.shape}")
    scores, emb_unit, top_t, temperature, bs = _check_inputs(
        class_scores, class_text_emb, top_t, temperature, score_type, block_size
    )
    if q.shape[1] != emb_unit.shape[1]:
        raise InputError(f"class embeddings have dim {emb_unit.shape[1]}, query has dim {q.shape[1]}")
    if not np.isfinite(q).all():
        raise InputError("query_text_emb contains NaN or inf")
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)  # [q, d]
    n = scores.shape[0]
    out = np.empty((q.shape[0], n), dtype=np.float32)
    for s in range(0, n, bs):
        v = _conse_block(scores[s : s + bs], emb_unit, top_t, temperature, score_type)  # [b, d]
        out[:, s : s + bs] = qn @ v.T  # [q, b]
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------- hierarchy
@dataclass(frozen=True)
class ClassHierarchy:
    """A hierarchy above a classifier's classes: ``classes`` (node ids in class-index order), ``nodes`` (ids),
    their ``lemmas`` (names, first is the usual one), and ``members [n_nodes, n_classes]`` (bool: the node is
    the class or one of its ancestors)."""

    classes: tuple[str, ...]
    nodes: tuple[str, ...]
    lemmas: tuple[tuple[str, ...], ...]
    members: np.ndarray
    parents: tuple[tuple[str, ...], ...] = ()
    senses: tuple[tuple[int, ...], ...] = ()  # per lemma, WordNet's sense number (1 = most frequent; 0 unknown)
    counts: tuple[tuple[int, ...], ...] = ()  # per lemma, WordNet's tag count of that sense (0: never tagged)
    #: Words for things without a class ("deer"), each with the node it backs off to (*ruminant*), sorted by node.
    backoff: tuple[tuple[str, int], ...] = ()

    @classmethod
    def imagenet(cls) -> "ClassHierarchy":
        """WordNet 3.0 above the 1000 ImageNet-1k classes (bundled: ``assay/data/imagenet_wordnet.json``,
        made by ``scripts/make_imagenet_wordnet.py``; 1,860 nodes), with 7,511 back-off words for physical
        things ImageNet has no class for ("deer" -> *ruminant*, "helicopter" -> *heavier-than-air craft*)."""
        return _imagenet_hierarchy()

    @classmethod
    def from_parents(cls, classes: list[str], nodes: dict[str, dict[str, Any]],
                     backoff: dict[str, str] | None = None) -> "ClassHierarchy":
        """From class ids in class-index order and ``{node: {"lemmas": [...], "parents": [...]}}``, and
        optionally ``backoff``: ``{word: node}`` for words no node has (what a query for them stands for)."""
        order = sorted(nodes)
        pos = {n: i for i, n in enumerate(order)}
        missing = [c for c in classes if c not in pos]
        if missing:
            raise InputError(f"hierarchy: classes without a node: {missing[:5]}")
        members = np.zeros((len(order), len(classes)), dtype=bool)
        for j, c in enumerate(classes):
            todo, seen = [c], set()
            while todo:
                n = todo.pop()
                if n in seen:
                    continue
                seen.add(n)
                members[pos[n], j] = True
                todo.extend(p for p in nodes[n].get("parents", []) if p in pos)
        lemmas = tuple(tuple(str(x) for x in nodes[n]["lemmas"]) or (n,) for n in order)
        parents = tuple(tuple(p for p in nodes[n].get("parents", []) if p in pos) for n in order)
        senses = tuple(tuple(int(x) for x in nodes[n].get("senses", [0] * len(lemmas[i])))
                       for i, n in enumerate(order))
        counts = tuple(tuple(int(x) for x in nodes[n].get("counts", [0] * len(lemmas[i])))
                       for i, n in enumerate(order))
        if any(len(sn) != len(lem) or len(c) != len(lem) for sn, c, lem in zip(senses, counts, lemmas)):
            raise InputError("hierarchy: each node needs one sense number and one tag count per lemma")
        words = {w.lower() for lem in lemmas for w in lem}
        back, seen = [], set()
        for word, node in (backoff or {}).items():
            if not isinstance(word, str) or not word.strip() or node not in pos:
                raise InputError(f"hierarchy: a back-off word must be a non-empty string with a node of the "
                                 f"hierarchy, got {word!r} -> {node!r}")
            if word.lower() in words:
                raise InputError(f"hierarchy: back-off word {word!r} is already a node's lemma")
            if word.lower() in seen:
                raise InputError(f"hierarchy: back-off word {word!r} is given twice (words are matched case-blind)")
            seen.add(word.lower())
            back.append((word, pos[node]))
        back.sort(key=lambda x: (x[1], x[0]))
        return cls(tuple(classes), tuple(order), lemmas, members, parents, senses, counts, tuple(back))

    @functools.cached_property
    def word_holders(self) -> dict[str, list[tuple[int, int, bool]]]:
        """Each lemma (lower-cased) -> the nodes that have it: ``[(node, its tag count, whether it is the name of
        that node's class)]``."""
        holders: dict[str, list[tuple[int, int, bool]]] = {}
        class_nodes = set(self.classes)
        for i, lem in enumerate(self.lemmas):
            cnt = self.counts[i] if self.counts else (0,) * len(lem)
            is_class = self.nodes[i] in class_nodes
            for j, word in enumerate(lem):
                holders.setdefault(word.lower(), []).append((i, cnt[j], is_class and j == 0))
        return holders

    @functools.cached_property
    def word_owner(self) -> dict[str, int]:
        """Each lemma (lower-cased) -> its node, or -1 when several nodes share it and none is clearly meant.

        A word one node has is that node's. A word several share goes, in order, to: the node whose sense of it
        WordNet's corpora tagged at least 10 times and more than any other ("plane" is the airplane, tagged 21
        times, not the carpenter's plane, a class never tagged); else the one class whose own name it is (the
        classifier's vocabulary: "plate" is the class *plate*, not a sheet of metal tagged 4 times); else the
        node tagged strictly most often. Else nobody: the nodes share the word and a query for it splits
        between them, which `describe_match` shows.
        """
        owner = {}
        for word, hs in self.word_holders.items():
            if len({h[0] for h in hs}) == 1:
                owner[word] = hs[0][0]
                continue
            best = max(h[1] for h in hs)
            top = [h for h in hs if h[1] == best]
            named = [h for h in hs if h[2]]
            if best >= _STRONG_TAGS and len(top) == 1:  # the corpora clearly mean this sense ("plane")
                owner[word] = top[0][0]
            elif len(named) == 1:  # else the class the word names ("plate" the dish)
                owner[word] = named[0][0]
            else:
                pool = named or hs
                best = max(h[1] for h in pool)
                top = [h for h in pool if h[1] == best]
                owner[word] = top[0][0] if best > 0 and len(top) == 1 else -1
        return owner

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """A name per node: its first lemma, told apart where other nodes have that word too (``"car, auto"`` /
        ``"car, railcar"``; by a second lemma, else by its parent: ``"crane, a kind of wading bird"``), so that
        what a query matched is always clear."""
        holders = self.word_holders

        def alone(word: str) -> bool:  # no other node has the word
            return len({h[0] for h in holders[word.lower()]}) == 1

        pos = {n: i for i, n in enumerate(self.nodes)}
        out = []
        for i, lem in enumerate(self.lemmas):
            if alone(lem[0]):
                out.append(lem[0])
            elif len(lem) > 1 and alone(lem[1]):
                out.append(f"{lem[0]}, {lem[1]}")
            elif self.parents and self.parents[i]:
                out.append(f"{lem[0]}, a kind of {self.lemmas[pos[self.parents[i][0]]][0]}")
            else:
                out.append(f"{lem[0]} ({self.nodes[i]})")
        twice = {n for n in out if out.count(n) > 1}  # same word, same parent: the node id tells them apart
        return tuple(f"{n} ({self.nodes[i]})" if n in twice else n for i, n in enumerate(out))

    @functools.cached_property
    def members_f32(self) -> np.ndarray:
        return self.members.astype(np.float32)

    def node_texts(self, template: str = "a photo of a {}") -> list[str]:
        """One text per node, from its name."""
        return [template.format(n) for n in self.names]

    def lemma_texts(self, template: str = "a photo of a {}") -> tuple[list[str], np.ndarray]:
        """Every lemma of every node as a text, and the node of each (``[n_texts]``, nodes in order): what
        :func:`hierarchy_weights` compares queries with, so that "automobile" finds the node *car, auto,
        automobile, ...* by its own word. A node's back-off words follow its lemmas ("a photo of a deer" is a
        text of *ruminant*), so that a query for a thing without a class finds its nearest parent, not a
        class whose name looks like it (*Scottish deerhound*).

        A word several nodes share goes to its owner (:attr:`word_owner`: the class it names, else the sense
        WordNet tagged most: "plane" to *airplane*, "cat" to *cat*, "car" to *car*, not *car, railcar*); the
        other nodes keep their other lemmas, and one whose own first lemma it is gets its told-apart name
        instead (``"plane, carpenter's plane"``). A shared word without an owner stays with every holder."""
        texts, owner_of_text, _ = self._texts(template)
        return texts, owner_of_text

    def backoff_of_texts(self, template: str = "a photo of a {}") -> list[str | None]:
        """Per text of :meth:`lemma_texts`: its back-off word, or None for a node's own lemma."""
        return self._texts(template)[2]

    def _texts(self, template: str) -> tuple[list[str], np.ndarray, list[str | None]]:
        with _TEXTS_LOCK:  # (one hierarchy is shared by every Searcher of a process, threads included)
            cache = self.__dict__.setdefault("_text_cache", {})  # (frozen: not through setattr)
            if template not in cache:
                cache[template] = self._build_texts(template)
            texts, owner, via = cache[template]
        return list(texts), owner.copy(), list(via)

    def _build_texts(self, template: str) -> tuple[list[str], np.ndarray, list[str | None]]:
        owner = self.word_owner
        backoff: dict[int, list[str]] = {}
        for word, node in self.backoff:
            backoff.setdefault(node, []).append(word)
        texts, owner_of_text, via = [], [], []
        for i, lem in enumerate(self.lemmas):
            seen = set()
            for j, word in enumerate(lem):
                mine = owner[word.lower()] in (i, -1)  # (-1: shared, nobody's in particular: every holder's)
                if not mine and j > 0:
                    continue  # the word means another node first
                text = word if mine else self.names[i]  # (a first lemma that is not its own: the told-apart name)
                if text.lower() in seen:
                    continue
                seen.add(text.lower())
                texts.append(template.format(text))
                owner_of_text.append(i)
                via.append(None)
            for word in backoff.get(i, ()):
                if word.lower() not in seen:
                    seen.add(word.lower())
                    texts.append(template.format(word))
                    owner_of_text.append(i)
                    via.append(word)
        return texts, np.asarray(owner_of_text, dtype=np.int64), via

    def describe(self, node: int) -> str:
        """``"dog (118 classes)"``."""
        n = int(self.members[node].sum())
        return f"{self.names[node]} ({n} class{'es' if n != 1 else ''})"

    def describe_match(self, node_weights: np.ndarray, *, min_share: float = 0.2, via: str | None = None) -> str:
        """What one query matched: the nodes holding at least ``min_share`` of its weight, most first
        (``"car, auto (10 classes) 0.7 | car, railcar (2 classes) 0.3"``; one node alone is named without a share).
        ``via``: the back-off word the query matched best, if any (``"ruminant (9 classes), for deer: no class"``)."""
        w = np.asarray(node_weights, dtype=np.float64)
        top = [int(i) for i in np.argsort(-w, kind="stable")[:5] if w[i] >= min_share] or [int(np.argmax(w))]
        note = f", for {via}: no class" if via else ""
        if len(top) == 1:
            return self.describe(top[0]) + note
        return " | ".join(f"{self.describe(i)} {w[i]:.2f}" for i in top) + note


_STRONG_TAGS = 10  # tags of a sense in WordNet's corpora that outweigh a class's own name
_TEXTS_LOCK = threading.Lock()
#: How much better (in cosine) a back-off word must match a query than every node's own words to be used.
BACKOFF_MARGIN = 0.05


@functools.lru_cache(maxsize=1)
def _imagenet_hierarchy() -> ClassHierarchy:
    import json
    from importlib import resources

    doc = json.loads(resources.files("assay").joinpath("data/imagenet_wordnet.json").read_text(encoding="utf-8"))
    return ClassHierarchy.from_parents(doc["classes"], doc["nodes"], doc.get("backoff"))


def hierarchy_weights(query_text_emb: Any, node_text_emb: Any, members: Any, *, temperature: float = 0.02,
                      text_node: Any = None, backoff: Any = None, backoff_margin: float = BACKOFF_MARGIN,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Class weights of text queries through a hierarchy: ``(weights [q, C] float32, node weights [q, n])``.

    Each query matches the nodes by a softmax of its cosines to their text embeddings over ``temperature``;
    a class weighs the summed match of the nodes it falls under. A weight row sums to at most 1 per node
    matched, so :func:`class_set_scores` is the probability of the matched node(s). With ``text_node``
    (``[n_texts]``, sorted: the node of each row of ``node_text_emb``, e.g. from
    :meth:`ClassHierarchy.lemma_texts`) a node's cosine is the best of its texts'. ``backoff`` (``[n_texts]``
    bool: the texts that are back-off words, :meth:`ClassHierarchy.backoff_of_texts`) gates those: a query
    backs off only when a back-off word matches it better than every node's own words, by more than
    ``backoff_margin`` in cosine ("a deer" is *ruminant* by the word deer, 0.84 against *deerhound*'s 0.76),
    and otherwise matches as if they were not there ("a dog" is *dog*, however near "dogsbody" is; the bare
    word "ship" is *ship*, 0.51, though "a photo of a shipping" is 0.54).
    """
    q = np.asarray(query_text_emb, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    e = np.asarray(node_text_emb, dtype=np.float32)
    m = np.asarray(members)
    if q.ndim != 2 or e.ndim != 2 or q.shape[1] != e.shape[1]:
        raise InputError(f"query embeddings {q.shape} and node embeddings {e.shape} must be [q, d] and [n, d]")
    owner = None if text_node is None else np.asarray(text_node, dtype=np.int64)
    if owner is not None and (owner.shape != (e.shape[0],) or (len(owner) and (owner[0] != 0 or (np.diff(owner) < 0).any()
                                                                              or (np.diff(owner) > 1).any()))):
        raise InputError(f"text_node must give each of the {e.shape[0]} texts its node, sorted, every node from 0 "
                         f"at least once; got shape {owner.shape}")
    back = None if backoff is None else np.asarray(backoff, dtype=bool)
    if back is not None and (back.shape != (e.shape[0],) or back.all()):
        raise InputError(f"backoff must flag each of the {e.shape[0]} texts, and not all of them; got shape {back.shape}")
    n_nodes = e.shape[0] if owner is None else (int(owner[-1]) + 1 if len(owner) else 0)
    if m.ndim != 2 or m.shape[0] != n_nodes:
        raise InputError(f"members must be [n_nodes={n_nodes}, n_classes], got shape {m.shape}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) or not temperature > 0:
        raise InputError(f"temperature must be a positive number, got {temperature!r}")
    if not (np.isfinite(q).all() and np.isfinite(e).all()):
        raise InputError("query or node embeddings contain NaN or inf")
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    en = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = (qn @ en.T).astype(np.float64)  # [q, texts]
    if back is not None and back.any():  # back off only where a back-off word matches best
        stay = (_backoff_used(sim, back, backoff_margin) < 0)[:, None]  # [q, 1]
        sim = np.where(stay & back[None, :], -np.inf, sim)
    if owner is not None:  # a node matches as well as its best text
        sim = np.maximum.reduceat(sim, np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]), axis=1)  # [q, n]
    w = np.exp((sim - sim.max(axis=1, keepdims=True)) / float(temperature))
    w /= w.sum(axis=1, keepdims=True)
    mf = m if m.dtype == np.float32 else m.astype(np.float32)
    return (w.astype(np.float32) @ mf).astype(np.float32), w.astype(np.float32)


def _backoff_used(sim: np.ndarray, back: np.ndarray, margin: float) -> np.ndarray:
    """``[q]``: per query (rows of the cosines ``sim [q, texts]``), the back-off text it backs off by, or -1."""
    if not back.any() or back.all():
        return np.full(sim.shape[0], -1, np.int64)
    b_idx = np.flatnonzero(back)
    own_best = sim[:, ~back].max(axis=1)
    j = b_idx[np.argmax(sim[:, b_idx], axis=1)]
    return np.where(sim[np.arange(sim.shape[0]), j] > own_best + float(margin), j, -1)


def backoff_texts_used(query_text_emb: Any, node_text_emb: Any, backoff: Any, *,
                       backoff_margin: float = BACKOFF_MARGIN) -> np.ndarray:
    """``[q]``: the index of the back-off text each query backs off by in :func:`hierarchy_weights` (its best
    back-off word, when that beats every node's own words by more than ``backoff_margin``), else -1."""
    q = np.atleast_2d(np.asarray(query_text_emb, dtype=np.float32))
    e = np.asarray(node_text_emb, dtype=np.float32)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    en = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return _backoff_used((qn @ en.T).astype(np.float64), np.asarray(backoff, dtype=bool), backoff_margin)


def class_set_scores(class_scores: Any, class_weights: Any, *, block_size: int = 2048) -> np.ndarray:
    """``[n, q]``: for each item and query, ``sum_c weights[q, c] * softmax(logits)[c]`` (float32).

    ``class_scores`` are logits ``[n, C]`` (float16 at rest is fine, e.g. a memory-mapped store extra).
    """
    w = np.asarray(class_weights, dtype=np.float32)
    if w.ndim == 1:
        w = w[None, :]
    n, c = np.shape(class_scores)
    if w.shape[1] != c:
        raise InputError(f"class_scores has {c} classes but the weights have {w.shape[1]}")
    out = np.empty((n, w.shape[0]), dtype=np.float32)
    for s in range(0, n, block_size):
        z = np.array(class_scores[s : s + block_size], dtype=np.float32)  # a copy: changed in place below
        m = z.max(axis=1, keepdims=True)  # [b, 1]
        if not np.isfinite(m).all():  # (a NaN anywhere in a row makes its max NaN)
            raise InputError("class_scores contain NaN or inf")
        z -= m
        np.exp(z, out=z)  # [b, C] softmax numerators
        out[s : s + block_size] = (z @ w.T) / z.sum(axis=1, keepdims=True)
    return out
