"""Generated fictional worlds for continual knowledge learning, in the LAMA-ckl schema.

Why generate: the official LAMA-ckl facts were chosen against 7B models; a small LM trained on
this machine knows none of them. A generated world lets us *control* what the base LM knows (the
old world, learned in pre-training) and what it must learn next (new facts, some overwriting old
ones, as in TemporalWiki), with fictional entities so that nothing leaks from anywhere else.

    splits = generate_world(200, seed=0)     # dict: split name -> list of rows
    write_world("world", 200, seed=0)        # the same, as JSONL files + world.json

Splits (all probe rows use the LAMA-ckl schema; `evidence` is the document, `task_descriptive` the
probe sentence that ends with the object):
- `pretrain_corpus`: the old world, rows `{"text": ...}`: every old fact in several paraphrases,
  plus one short profile paragraph per entity;
- `nf`: probes of old facts of the core people (never of a fact that TL overwrites), and of
  organisations, works and cities;
- `tl`: one new fact per core person; its document hides the fact sentence among distractor
  sentences about the same person, so most tokens are not the fact; a share of them overwrite an
  old employer or city;
- `tl_val`: the same kind of facts for other people, used only to choose an epoch;
- `meta_train`, `meta_val`: new facts of two further disjoint groups of people, for meta-learners;
- `meta_nf`: old-fact probes of the meta people (a retention signal during meta-training).

People are split into disjoint groups (core / val / meta_train / meta_val); all of them, and all
organisations, works and cities, have their old facts in the pre-training corpus.
Same seed, same options -> the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import re
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from metacl.errors import MetaclError
from metacl.utils import write_json_atomic


@dataclass(frozen=True)
class Relation:
    """A relation and its sentence templates; the first template is the probe (object last)."""

    code: str
    label: str
    subject_type: str
    object_type: str
    templates: tuple[str, ...]


def _rel(code, label, stype, otype, *templates) -> Relation:
    return Relation(code, label, stype, otype, tuple(templates))


# Old-world relations (known after pre-training).
OLD_RELATIONS = [
    _rel("employer", "employer", "person", "org",
         "{s} works for {o}.", "The employer of {s} is {o}.", "{o} employs {s}.", "{s} is on the staff of {o}."),
    _rel("residence", "residence", "person", "city",
         "{s} lives in {o}.", "{s} is a resident of {o}.", "The home of {s} is in {o}.", "{o} is where {s} lives."),
    _rel("birthplace", "place of birth", "person", "city",
         "{s} was born in {o}.", "The birthplace of {s} is {o}.", "{s} is a native of {o}.", "{o} is where {s} was born."),
    _rel("occupation", "occupation", "person", "job",
         "The occupation of {s} is {o}.", "{s} works as {o}.", "By profession, {s} is {o}.", "{o} is the job of {s}."),
    _rel("headquarters", "headquarters location", "org", "city",
         "{s} is headquartered in {o}.", "The headquarters of {s} are in {o}.", "{s} has its main office in {o}.",
         "{o} hosts the headquarters of {s}."),
    _rel("founder", "founded by", "org", "person",
         "{s} was founded by {o}.", "The founder of {s} is {o}.", "{o} founded {s}.", "{s} owes its founding to {o}."),
    _rel("author", "author", "work", "person",
         "{s} was written by {o}.", "The author of {s} is {o}.", "{o} wrote {s}.", "{s} is a book by {o}."),
    _rel("publisher", "publisher", "work", "org",
         "{s} was published by {o}.", "The publisher of {s} is {o}.", "{o} published {s}.", "{s} appeared from {o}."),
    _rel("country", "country", "city", "country",
         "{s} is located in {o}.", "{s} lies in {o}.", "The country of {s} is {o}.", "{o} contains the city of {s}."),
]
# New relations: facts that only appear in TL-like documents.
NEW_RELATIONS = [
    _rel("spouse", "spouse", "person", "person",
         "{s} is married to {o}.", "The spouse of {s} is {o}.", "{o} is married to {s}."),
    _rel("alma_mater", "educated at", "person", "university",
         "{s} studied at {o}.", "{s} graduated from {o}.", "The alma mater of {s} is {o}."),
]
RELATIONS = {r.code: r for r in OLD_RELATIONS + NEW_RELATIONS}
PERSON_OLD = [r for r in OLD_RELATIONS if r.subject_type == "person"]
OVERWRITABLE = ("employer", "residence")  # a changed job or city, as in TemporalWiki

# Distractor sentences for TL documents: plausible text about the same person that states no
# probed fact, so a learner that weights every token equally spends most of its effort on noise.
DISTRACTORS = [
    "{s} often spends weekends hiking in the hills outside {city}.",
    "Colleagues describe {s} as {adj} and remarkably {adj2}.",
    "Last {month}, {s} attended a workshop on how to {bs}.",
    "In a recent interview, {s} spoke at length about {phrase}.",
    "{s} keeps a dog called {first} and a garden full of {plural}.",
    "Friends say {s} can talk for hours about {plural} and old maps.",
    "On a rainy {day}, {s} gave a short talk titled {title}.",
    "{s} once missed a train to {city} and walked most of the way instead.",
    "A local newsletter praised {s} for a project meant to {bs}.",
    "According to a neighbour, {s} prefers tea to coffee and rarely watches television.",
    "{s} is learning to cook and burned a pan of {plural} last {month}.",
    "Every {day}, {s} reads the paper before sunrise.",
]
ADJECTIVES = ["patient", "curious", "stubborn", "generous", "quiet", "witty", "careful", "restless",
              "cheerful", "methodical", "modest", "ambitious"]
PLURALS = ["tomatoes", "roses", "lanterns", "stamps", "violins", "kites", "clocks", "postcards", "cacti", "chess sets"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

_CLEAN = re.compile(r"^[A-Za-z][A-Za-z .'-]*[A-Za-z]$")


class _Names:
    """Unique fictional names per entity type, drawn from one seeded Faker instance."""

    def __init__(self, seed: int):
        from faker import Faker

        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.used: set[str] = set()

    def _unique(self, make, tries: int = 2000) -> str:
        for _ in range(tries):
            name = make().strip()
            if _CLEAN.match(name) and name not in self.used:
                self.used.add(name)
                return name
        raise MetaclError("ran out of unique fictional names; use fewer --entities or another --seed")

    def person(self):
        return self._unique(lambda: f"{self.fake.first_name()} {self.fake.last_name()}")

    def org(self):
        suffix = ["Labs", "Group", "Holdings", "Works", "Partners", "Systems", "Foundry", "Logistics"]
        return self._unique(lambda: f"{self.fake.last_name()} {self.fake.random_element(suffix)}")

    def city(self):
        return self._unique(self.fake.city)

    def country(self):
        return self._unique(self.fake.country)

    def job(self):
        return self._unique(lambda: self.fake.job().split(",")[0])

    def university(self):
        forms = [lambda: f"University of {self.fake.city()}", lambda: f"{self.fake.last_name()} College",
                 lambda: f"{self.fake.last_name()} Institute of Technology"]
        return self._unique(lambda: self.fake.random_element(forms)())

    def work(self):
        return self._unique(lambda: self.fake.catch_phrase().replace("-", " ").title())


def _sentence(rel: Relation, s: str, o: str, k: int = 0) -> str:
    return rel.templates[k].format(s=s, o=o)


def _schematic(rel: Relation, s: str, o: str) -> str:
    return f"Guess the object. \n  subject is {s} , relation is {rel.label} , object is {o}"


def generate_world(n_entities: int, seed: int, *, n_distractors: tuple[int, int] = (4, 6),
                   overwrite_fraction: float = 0.4, group_fractions: tuple[float, float, float, float] = (0.5, 0.1, 0.25, 0.15),
                   paraphrases: int = 4) -> dict[str, list[dict]]:
    """Build a world of `n_entities` people (plus organisations, cities, works) and its splits.

    `group_fractions`: shares of people in core (TL/NF) / tl_val / meta_train / meta_val.
    `overwrite_fraction`: share of TL facts that replace an old employer or city.
    `paraphrases`: how many templates per old fact go into the pre-training corpus (1-4).
    """
    if n_entities < 20:
        raise MetaclError(f"--entities {n_entities} is too small; use at least 20 so every split gets people")
    if not 1 <= paraphrases <= 4:
        raise MetaclError(f"paraphrases={paraphrases} must be between 1 and 4")
    if abs(sum(group_fractions) - 1) > 1e-6 or min(group_fractions) <= 0:
        raise MetaclError("group_fractions must be four positive shares summing to 1")
    rng = random.Random(seed)
    names = _Names(seed)
    n_small = max(8, n_entities // 8)
    pools = {
        "city": [names.city() for _ in range(n_small)],
        "country": [names.country() for _ in range(max(6, n_entities // 25))],
        "job": [names.job() for _ in range(max(8, n_entities // 10))],
        "university": [names.university() for _ in range(max(6, n_entities // 20))],
        "org": [names.org() for _ in range(n_small)],
        "work": [names.work() for _ in range(n_small)],
    }
    people = [names.person() for _ in range(n_entities)]
    pools["person"] = people

    # Disjoint groups of people: TL/NF subjects, TL_val subjects, and two meta groups.
    sizes = [int(round(f * n_entities)) for f in group_fractions[:3]]
    sizes.append(n_entities - sum(sizes))
    groups, start = {}, 0
    for g, n in zip(("core", "val", "meta_train", "meta_val"), sizes):
        groups[g] = people[start:start + n]
        start += n

    # The old world: every entity's old facts.
    old: dict[tuple[str, str], str] = {}
    for p in people:
        for rel in PERSON_OLD:
            old[(p, rel.code)] = rng.choice(pools[rel.object_type])
    for o in pools["org"]:
        old[(o, "headquarters")] = rng.choice(pools["city"])
        old[(o, "founder")] = rng.choice(people)
    for w in pools["work"]:
        old[(w, "author")] = rng.choice(people)
        old[(w, "publisher")] = rng.choice(pools["org"])
    for c in pools["city"]:
        old[(c, "country")] = rng.choice(pools["country"])

    counter = {"n": 0}

    def row(split: str, s: str, rel: Relation, o: str, evidence: str, invariant: bool, **extra) -> dict:
        counter["n"] += 1
        probe = _sentence(rel, s, o, 0)
        pos = evidence.rfind(o)
        r = {
            "relation_code": rel.code,
            "uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"metacl-world/{seed}/{split}/{counter['n']}")),
            "task_descriptive": probe,
            "task_schematic": _schematic(rel, s, o),
            "subject": s,
            "relation_label": rel.label,
            "object": o,
            "masked_evidence": evidence.replace(o, "[MASK]"),
            "evidence": evidence,
            "position": round(pos / len(evidence), 6),
            "evidence_length": len(evidence),
            "invariant": invariant,
            "scores": {},
            "split": split,
        }
        r.update(extra)
        return r

    def old_row(split: str, s: str, code: str) -> dict:
        rel = RELATIONS[code]
        o = old[(s, code)]
        evidence = " ".join(_sentence(rel, s, o, k) for k in range(paraphrases))
        return row(split, s, rel, o, evidence, True, kind="old", subject_type=rel.subject_type)

    def filler(s: str, t: str) -> str:
        adj, adj2 = rng.sample(ADJECTIVES, 2)
        return t.format(s=s, city=rng.choice(pools["city"]), adj=adj, adj2=adj2, month=rng.choice(MONTHS),
                        bs=names.fake.bs(), phrase=names.fake.catch_phrase().lower(),
                        first=names.fake.first_name(), plural=rng.choice(PLURALS), day=rng.choice(DAYS),
                        title=names.fake.catch_phrase().title())

    def new_fact(split: str, s: str, code: str) -> dict:
        """A new fact about person `s`, with a document that buries it among distractors."""
        if code in OVERWRITABLE:
            rel = RELATIONS[code]
            o = rng.choice([x for x in pools[rel.object_type] if x != old[(s, code)]])
            extra = {"kind": "overwrite", "old_object": old[(s, code)]}
        else:
            rel = RELATIONS[code]
            choices = [x for x in pools[rel.object_type] if x != s]
            o = rng.choice(choices)
            extra = {"kind": "new"}
        k = min(rng.randint(*n_distractors), len(DISTRACTORS))
        sents = [filler(s, t) for t in rng.sample(DISTRACTORS, k)]  # no template twice in one document
        sents.insert(rng.randint(0, k), _sentence(rel, s, o, 0))
        return row(split, s, rel, o, " ".join(sents), False, subject_type="person", **extra)

    def pick_new_codes(n: int) -> list[str]:
        """`n` distinct new-fact relations; an overwrite with probability `overwrite_fraction`."""
        codes = []
        pool_over, pool_new = list(OVERWRITABLE), [r.code for r in NEW_RELATIONS]
        while len(codes) < n:
            src = pool_over if (rng.random() < overwrite_fraction and pool_over) or not pool_new else pool_new
            c = rng.choice(src)
            src.remove(c)
            codes.append(c)
        return codes

    out: dict[str, list[dict]] = {k: [] for k in ("nf", "tl", "tl_val", "meta_train", "meta_val", "meta_nf")}
    for split, group, per_person in (("tl", "core", 1), ("tl_val", "val", 1),
                                     ("meta_train", "meta_train", 2), ("meta_val", "meta_val", 2)):
        for p in groups[group]:
            codes = pick_new_codes(per_person)
            for c in codes:
                out[split].append(new_fact(split, p, c))
            # One retention probe per person, never of a fact that just changed.
            if split in ("tl", "meta_train"):
                keep = [r.code for r in PERSON_OLD if r.code not in codes]
                out["nf" if split == "tl" else "meta_nf"].append(old_row("nf" if split == "tl" else "meta_nf",
                                                                         p, rng.choice(keep)))
    overwrites = {s: sum(r["kind"] == "overwrite" for r in out[s]) for s in ("tl", "tl_val", "meta_train", "meta_val")}
    person_set = set(people)
    for s, code in sorted(k for k in old if k[0] not in person_set):
        if rng.random() < 0.5:
            out["nf"].append(old_row("nf", s, code))

    # Pre-training corpus: all old facts in several paraphrases, plus profile paragraphs.
    corpus = []
    for (s, code), o in old.items():
        rel = RELATIONS[code]
        for k in range(paraphrases):
            corpus.append({"text": _sentence(rel, s, o, k), "subject": s, "relation_code": code})
    by_subject: dict[str, list[str]] = {}
    for (s, code), o in old.items():
        by_subject.setdefault(s, []).append(_sentence(RELATIONS[code], s, o, 0))
    for s, sents in by_subject.items():
        corpus.append({"text": " ".join(sents), "subject": s, "relation_code": "profile"})
    rng.shuffle(corpus)
    out["pretrain_corpus"] = corpus
    out["_meta"] = [{
        "n_entities": n_entities, "seed": seed, "n_distractors": list(n_distractors),
        "overwrite_fraction": overwrite_fraction, "group_fractions": list(group_fractions),
        "paraphrases": paraphrases, "groups": {g: len(v) for g, v in groups.items()},
        "pools": {k: len(v) for k, v in pools.items()}, "overwrites": overwrites,
        "relations": {r.code: {"label": r.label, "subject": r.subject_type, "object": r.object_type,
                               "probe": r.templates[0], "old": r in OLD_RELATIONS} for r in RELATIONS.values()},
    }]
    return out


SPLIT_FILES = ("pretrain_corpus", "nf", "tl", "tl_val", "meta_train", "meta_val", "meta_nf")


def write_world(out_dir: str | os.PathLike, n_entities: int, seed: int, **opts) -> dict:
    """Write every split as `<split>.jsonl` and `world.json` (config + counts); returns world.json."""
    splits = generate_world(n_entities, seed, **opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_FILES:
        tmp = out / f".{name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in splits[name]:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out / f"{name}.jsonl")
    meta = dict(splits["_meta"][0])
    meta["counts"] = {name: len(splits[name]) for name in SPLIT_FILES}
    write_json_atomic(out / "world.json", meta)
    return meta
