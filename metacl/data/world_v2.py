"""World v2: a generated LAMA-ckl-style world whose probes are never verbatim in training text.

Why a second version (v1, `metacl.data.world`, stays byte-identical for old results): in v1 every
TL document contains its probe sentence and every NF probe is a sentence of the pre-training
corpus, so the benchmark measures string memory, and a strategy that rehearses the corpus
rehearses the exact test sentences. v2 keeps the splits and the schema and changes three things:

- Held-out probe phrasings. Every relation has four phrasings, all ending with the object. Each
  fact gets one of them as its *probe phrasing*; that phrasing never appears with that fact in
  any training text (the pre-training corpus shows the fact in the other phrasings, the TL
  document in one other phrasing). Every phrasing still appears in the corpus on *other* facts,
  so a model can learn that the phrasings say the same thing (as in synthetic-biography studies
  of knowledge extraction). `verbatim_probes` checks this on any generated world.
- TL documents like the official evidence: the fact is stated once, in a document phrasing,
  among sentences about the same person full of hard-to-predict tokens (names, numbers, dates,
  addresses, places), so most tokens of a document are not the fact. The row stores the fact
  sentence and its character span (`fact_sentence`, `fact_span`) for the sentence oracle.
- Every person relation, spouse and alma mater included, is in the old world for some people, so
  the phrasings of every relation a TL fact uses were seen in pre-training. TL facts are either
  new (a relation the person lacked) or overwrites (TemporalWiki-style: a changed employer or
  city); an overwrite's row keeps `old_object` so a run can report how often the old object is
  still the answer.

    splits = generate_world_v2(200, seed=0)
    write_world_v2("world", 200, seed=0)   # JSONL per split + world.json (world_version 2)
"""

from __future__ import annotations

import json
import os
import random
import uuid as uuidlib
from pathlib import Path

from metacl.data.world import SPLIT_FILES, Relation, _Names, _rel, _schematic
from metacl.errors import MetaclError
from metacl.utils import write_json_atomic

WORLD_VERSION = 2

# Four phrasings per relation, every one ending with the object (so every one can be a probe).
RELATIONS_V2 = [
    _rel("employer", "employer", "person", "org",
         "{s} works for {o}.", "The employer of {s} is {o}.", "{s} is employed by {o}.", "{s} has a job at {o}."),
    _rel("residence", "residence", "person", "city",
         "{s} lives in {o}.", "The home of {s} is in {o}.", "{s} is a resident of {o}.", "{s} has settled in {o}."),
    _rel("birthplace", "place of birth", "person", "city",
         "{s} was born in {o}.", "The birthplace of {s} is {o}.", "{s} is a native of {o}.",
         "{s} came into the world in {o}."),
    _rel("occupation", "occupation", "person", "job",
         "The occupation of {s} is {o}.", "{s} works as {o}.", "By profession, {s} is {o}.", "{s} earns a living as {o}."),
    _rel("spouse", "spouse", "person", "person",
         "{s} is married to {o}.", "The spouse of {s} is {o}.", "{s} wed {o}.", "{s} shares a home and a marriage with {o}."),
    _rel("alma_mater", "educated at", "person", "university",
         "{s} studied at {o}.", "{s} graduated from {o}.", "The alma mater of {s} is {o}.", "{s} holds a degree from {o}."),
    _rel("headquarters", "headquarters location", "org", "city",
         "{s} is headquartered in {o}.", "The headquarters of {s} are in {o}.", "{s} has its main office in {o}.",
         "{s} is run from offices in {o}."),
    _rel("founder", "founded by", "org", "person",
         "{s} was founded by {o}.", "The founder of {s} is {o}.", "{s} was started by {o}.", "{s} owes its founding to {o}."),
    _rel("author", "author", "work", "person",
         "{s} was written by {o}.", "The author of {s} is {o}.", "{s} is a book by {o}.", "{s} came from the pen of {o}."),
    _rel("publisher", "publisher", "work", "org",
         "{s} was published by {o}.", "The publisher of {s} is {o}.", "{s} appeared under the imprint of {o}.",
         "{s} was brought out by {o}."),
    _rel("country", "country", "city", "country",
         "{s} is located in {o}.", "{s} lies in {o}.", "The country of {s} is {o}.", "{s} is a city of {o}."),
]
REL = {r.code: r for r in RELATIONS_V2}
PERSON_REL = [r for r in RELATIONS_V2 if r.subject_type == "person"]
ALWAYS_KNOWN = ("employer", "residence", "birthplace", "occupation")  # every person has these
SOMETIMES_KNOWN = ("spouse", "alma_mater")  # some people have them in the old world; others get them in TL
OVERWRITABLE = ("employer", "residence")
N_PHRASINGS = 4

# Sentences about the same person whose tokens are hard to predict: names, numbers, dates,
# addresses and places drawn fresh for every sentence. They state no probed relation.
HARD_SENTENCES = [
    "On {date}, {s} signed a lease for {address}.",
    "{s} paid {money} for a {year} {car} at an auction in {place}.",
    "The phone number listed for {s} in the {year} directory is {phone}.",
    "{s} finished the {place} marathon in {h} hours and {m} minutes on {date}.",
    "In {year}, {s} and {name} donated {n} books to the library of {place}.",
    "A {n}-page report by {s} was filed on {date} under reference {code}.",
    "{s} first met {name} at {address} on {date}.",
    "The passport of {s}, number {code}, was renewed in {month} {year}.",
    "{s} keeps {n} {plural} in a shed behind {address}.",
    "Account {code} at the {place} savings bank was opened by {s} in {month} {year}.",
    "{s} travelled {n} kilometres from {place} to {place2} in {month} {year}.",
    "At {time} on {date}, {s} gave a lecture to {n} students in {place}.",
    "{s} sold a painting by {name} for {money} on {date}.",
    "The {year} census lists {s} at {address}, with {n} rooms.",
]
PLURALS = ["tomatoes", "roses", "lanterns", "stamps", "violins", "kites", "clocks", "postcards", "cacti", "chess sets"]
CARS = ["sedan", "pickup", "roadster", "motorcycle", "tractor", "camper van", "coupe"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def probe_text(row: dict) -> str:
    """What a probe scores: the probe sentence up to and including its object (no final stop)."""
    td, obj = row["task_descriptive"], row["object"]
    i = td.rfind(obj)
    return td[:i].rstrip() + " " + obj


def training_texts(splits: dict[str, list[dict]]) -> list[str]:
    """Every text any learner trains on: the corpus and the documents of the TL-like splits."""
    texts = [r["text"] for r in splits.get("pretrain_corpus", [])]
    for name in ("tl", "tl_val", "meta_train", "meta_val"):
        texts += [r["evidence"] for r in splits.get(name, [])]
    return texts


def verbatim_probes(splits: dict[str, list[dict]], names=("nf", "tl", "tl_val", "meta_train", "meta_val", "meta_nf"),
                    texts: list[str] | None = None) -> list[str]:
    """The probes (as `probe_text`) of `names` that occur word for word in a training text.

    Works on v1 and v2 worlds alike (v1 gives many; v2 must give none). One joined haystack with a
    separator no probe contains, so the check is a substring search per probe.
    """
    hay = "\n".join(training_texts(splits) if texts is None else texts)
    out = []
    for n in names:
        for r in splits.get(n, []):
            p = probe_text(r)
            if p in hay:
                out.append(p)
    return out


class _Hard:
    """Draws the hard-to-predict fillers of HARD_SENTENCES from the world's seeded Faker."""

    def __init__(self, seed: int, rng: random.Random, avoid: set[str]):
        from faker import Faker

        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.rng, self.avoid = rng, avoid

    def _place(self) -> str:
        for _ in range(100):
            c = self.fake.city()
            if c not in self.avoid:
                return c
        return "Northfield"

    def _name(self) -> str:
        for _ in range(100):
            n = f"{self.fake.first_name()} {self.fake.last_name()}"
            if n not in self.avoid:
                return n
        return "Ada Quill"

    def sentence(self, s: str, template: str) -> str:
        f, r = self.fake, self.rng
        return template.format(
            s=s, date=f"{r.choice(MONTHS)} {r.randint(1, 28)}, {r.randint(1950, 2023)}",
            address=f"{r.randint(1, 9999)} {f.street_name()}, {self._place()}",
            money=f"${r.randint(100, 99999):,}", year=r.randint(1950, 2023), car=r.choice(CARS),
            place=self._place(), place2=self._place(), phone=f"{r.randint(200, 989)}-{r.randint(200, 999)}-{r.randint(1000, 9999)}",
            h=r.randint(2, 6), m=r.randint(1, 59), name=self._name(), n=r.randint(2, 950),
            code=f"{f.random_uppercase_letter()}{f.random_uppercase_letter()}-{r.randint(10000, 99999)}",
            month=r.choice(MONTHS), plural=r.choice(PLURALS), time=f"{r.randint(1, 12)}:{r.randint(0, 59):02d}",
        )


def hard_document(hard: _Hard, rng: random.Random, s: str, o: str, fact: str, lo: int, hi: int) -> str:
    """`fact` at a random place among `lo`-`hi` hard sentences about `s`, none of which names `o`.

    The TL-like documents of world v2 and the periods of its task sequence
    (`metacl.data.world_sequence_v2`) are both made here, so they stay the same kind of text.
    """
    k = rng.randint(lo, hi)
    sents = []
    for t in rng.sample(HARD_SENTENCES, k):  # no template twice in one document
        x = hard.sentence(s, t)
        while o in x:  # a filler never names the object (the object oracle marks every occurrence)
            x = hard.sentence(s, t)
        sents.append(x)
    sents.insert(rng.randint(0, k), fact)
    return " ".join(sents)


def generate_world_v2(n_entities: int, seed: int, *, n_distractors: tuple[int, int] = (3, 5),
                      overwrite_fraction: float = 0.4,
                      group_fractions: tuple[float, float, float, float] = (0.5, 0.1, 0.25, 0.15),
                      paraphrases: int = 3, known_fraction: float = 0.5) -> dict[str, list[dict]]:
    """Build a v2 world of `n_entities` people (plus organisations, cities, works) and its splits.

    `n_distractors`: (min, max) hard sentences around each TL-like document's fact sentence. The
    default (3, 5) is the measured choice: with (6, 8) fine-tuning gained only +0.016 TL (seed 0;
    docs/results/world_v2.md, "knobs").
    `overwrite_fraction`: share of TL facts that replace an old employer or city.
    `paraphrases`: how many of a fact's three non-probe phrasings go into the corpus (1-3).
    `known_fraction`: share of people whose spouse / alma mater is in the old world.
    """
    if n_entities < 20:
        raise MetaclError(f"--entities {n_entities} is too small; use at least 20 so every split gets people")
    if not 1 <= paraphrases <= N_PHRASINGS - 1:
        raise MetaclError(f"--paraphrases {paraphrases} must be between 1 and {N_PHRASINGS - 1} in world v2 "
                          "(one phrasing per fact is held out for its probe)")
    lo, hi = n_distractors
    if not 0 <= lo <= hi <= len(HARD_SENTENCES):
        raise MetaclError(f"--distractors {lo} {hi} must satisfy 0 <= MIN <= MAX <= {len(HARD_SENTENCES)}")
    if abs(sum(group_fractions) - 1) > 1e-6 or min(group_fractions) <= 0:
        raise MetaclError("group_fractions must be four positive shares summing to 1")
    if not 0 <= overwrite_fraction <= 1 or not 0 < known_fraction < 1:
        raise MetaclError("overwrite_fraction must be in [0, 1] and known_fraction in (0, 1)")
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
    # Document text draws from its own generators, so the document knobs (`n_distractors`) change
    # the TL-like documents only: the old world, the probes and the corpus stay the same bytes,
    # and one base LM serves every setting of those knobs.
    drng = random.Random(f"metacl-world-v2-docs/{seed}")
    hard = _Hard(seed + 7919, drng, avoid=set(names.used))

    sizes = [int(round(f * n_entities)) for f in group_fractions[:3]]
    sizes.append(n_entities - sum(sizes))
    groups, start = {}, 0
    for g, n in zip(("core", "val", "meta_train", "meta_val"), sizes):
        groups[g] = people[start:start + n]
        start += n

    # The old world, and for every old fact its held-out probe phrasing (balanced over phrasings).
    old: dict[tuple[str, str], str] = {}
    for p in people:
        for code in ALWAYS_KNOWN:
            old[(p, code)] = rng.choice(pools[REL[code].object_type])
        for code in SOMETIMES_KNOWN:
            if rng.random() < known_fraction:
                old[(p, code)] = rng.choice([x for x in pools[REL[code].object_type] if x != p])
    for o in pools["org"]:
        old[(o, "headquarters")] = rng.choice(pools["city"])
        old[(o, "founder")] = rng.choice(people)
    for w in pools["work"]:
        old[(w, "author")] = rng.choice(people)
        old[(w, "publisher")] = rng.choice(pools["org"])
    for c in pools["city"]:
        old[(c, "country")] = rng.choice(pools["country"])
    keys = list(old)
    rng.shuffle(keys)
    held: dict[tuple[str, str], int] = {k: i % N_PHRASINGS for i, k in enumerate(keys)}
    shown: dict[tuple[str, str], list[int]] = {
        k: rng.sample([j for j in range(N_PHRASINGS) if j != held[k]], paraphrases) for k in old}

    counter = {"n": 0}

    def row(split: str, s: str, rel: Relation, o: str, probe_k: int, evidence: str, fact: str, invariant: bool,
            **extra) -> dict:
        counter["n"] += 1
        a = evidence.find(fact)
        pos = evidence.rfind(o)
        r = {
            "relation_code": rel.code,
            "uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"metacl-world-v2/{seed}/{split}/{counter['n']}")),
            "task_descriptive": rel.templates[probe_k].format(s=s, o=o),
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
            "world_version": WORLD_VERSION,
            "probe_phrasing": probe_k,
            "fact_sentence": fact,
            "fact_span": [a, a + len(fact)],
        }
        r.update(extra)
        return r

    def old_row(split: str, s: str, code: str) -> dict:
        """A retention probe: its evidence is the fact as the corpus shows it (never the probe phrasing)."""
        rel, o = REL[code], old[(s, code)]
        sents = [rel.templates[k].format(s=s, o=o) for k in shown[(s, code)]]
        evidence = " ".join(sents)
        return row(split, s, rel, o, held[(s, code)], evidence, sents[0], True, kind="old", subject_type=rel.subject_type,
                   doc_phrasing=shown[(s, code)][0])

    def new_fact(split: str, s: str, code: str) -> dict:
        """A new fact about person `s`: stated once, in a non-probe phrasing, among hard sentences."""
        rel = REL[code]
        if (s, code) in old:  # an overwrite: the probe asks for the new object in the old fact's held-out phrasing
            o = rng.choice([x for x in pools[rel.object_type] if x != old[(s, code)]])
            extra = {"kind": "overwrite", "old_object": old[(s, code)]}
            probe_k = held[(s, code)]
        else:
            o = rng.choice([x for x in pools[rel.object_type] if x != s])
            extra = {"kind": "new"}
            probe_k = rng.randrange(N_PHRASINGS)
        doc_k = rng.choice([j for j in range(N_PHRASINGS) if j != probe_k])
        fact = rel.templates[doc_k].format(s=s, o=o)
        return row(split, s, rel, o, probe_k, hard_document(hard, drng, s, o, fact, lo, hi), fact, False,
                   subject_type="person", doc_phrasing=doc_k, **extra)

    def pick_new_codes(p: str, n: int) -> list[str]:
        """`n` distinct new-fact relations for `p`: an overwrite with probability `overwrite_fraction`,
        else a relation `p` lacks (an overwrite when it lacks none)."""
        codes: list[str] = []
        pool_over = list(OVERWRITABLE)
        pool_new = [c for c in SOMETIMES_KNOWN if (p, c) not in old]
        while len(codes) < n:
            use_over = (rng.random() < overwrite_fraction and pool_over) or not pool_new
            src = pool_over if use_over else pool_new
            c = rng.choice(src)
            src.remove(c)
            codes.append(c)
        return codes

    out: dict[str, list[dict]] = {k: [] for k in ("nf", "tl", "tl_val", "meta_train", "meta_val", "meta_nf")}
    for split, group, per_person in (("tl", "core", 1), ("tl_val", "val", 1),
                                     ("meta_train", "meta_train", 2), ("meta_val", "meta_val", 2)):
        for p in groups[group]:
            codes = pick_new_codes(p, per_person)
            for c in codes:
                out[split].append(new_fact(split, p, c))
            if split in ("tl", "meta_train"):  # one retention probe per person, never of a fact that just changed
                keep = [c for c in ALWAYS_KNOWN if c not in codes]
                nf_split = "nf" if split == "tl" else "meta_nf"
                out[nf_split].append(old_row(nf_split, p, rng.choice(keep)))
    overwrites = {s: sum(r["kind"] == "overwrite" for r in out[s]) for s in ("tl", "tl_val", "meta_train", "meta_val")}
    person_set = set(people)
    for s, code in sorted(k for k in old if k[0] not in person_set):
        if rng.random() < 0.5:
            out["nf"].append(old_row("nf", s, code))

    # Pre-training corpus: every old fact in its shown phrasings, plus one profile paragraph per
    # entity (each fact in one of its shown phrasings). A fact's probe phrasing never appears.
    corpus = []
    for (s, code), o in old.items():
        for k in shown[(s, code)]:
            corpus.append({"text": REL[code].templates[k].format(s=s, o=o), "subject": s, "relation_code": code})
    by_subject: dict[str, list[str]] = {}
    for (s, code), o in old.items():
        by_subject.setdefault(s, []).append(REL[code].templates[rng.choice(shown[(s, code)])].format(s=s, o=o))
    for s, sents in by_subject.items():
        corpus.append({"text": " ".join(sents), "subject": s, "relation_code": "profile"})
    rng.shuffle(corpus)
    out["pretrain_corpus"] = corpus
    out["_meta"] = [{
        "world_version": WORLD_VERSION, "n_entities": n_entities, "seed": seed, "n_distractors": [lo, hi],
        "overwrite_fraction": overwrite_fraction, "group_fractions": list(group_fractions),
        "paraphrases": paraphrases, "known_fraction": known_fraction, "phrasings_per_relation": N_PHRASINGS,
        "groups": {g: len(v) for g, v in groups.items()},
        "pools": {k: len(v) for k, v in pools.items()}, "overwrites": overwrites,
        "relations": {r.code: {"label": r.label, "subject": r.subject_type, "object": r.object_type,
                               "phrasings": list(r.templates)} for r in RELATIONS_V2},
    }]
    bad = verbatim_probes(out)
    if bad:  # a name collision could make a probe appear by accident; never hand out such a world
        raise MetaclError(f"world v2 (seed {seed}) has {len(bad)} probe(s) verbatim in training text, e.g. {bad[0]!r}; "
                          "use another --seed")
    return out


def write_world_v2(out_dir: str | os.PathLike, n_entities: int, seed: int, **opts) -> dict:
    """Write every split as `<split>.jsonl` and `world.json` (config + counts); returns world.json."""
    splits = generate_world_v2(n_entities, seed, **opts)
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
