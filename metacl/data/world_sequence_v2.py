"""The task sequence on a world v2 folder: periods of new and changed facts whose probes are held out.

Why a v2 builder: `metacl.data.world_sequence.build_sequence` writes v1 documents, where each
period's probe sentence sits verbatim in its training document, so the sequence would measure string
memory on the very world built to avoid it. Here every period row follows world v2's rules
(`metacl.data.world_v2`):

- the fact is stated once, in a phrasing other than the probe's, among the same hard sentences
  (names, numbers, dates, places) as world v2's TL documents;
- a changed fact (a new employer or city) is probed in the old fact's *held-out* phrasing, the one
  the pre-training corpus never shows for that fact, as world v2's overwrites are;
- a new fact is a relation the person lacked (spouse, alma mater), probed in a random phrasing.

Everything is read back from the world folder (the corpus gives the old facts and the phrasings it
shows), so no generator state is needed; as in v1, the people of different periods are disjoint,
every (subject, relation) changes at most once (and never one the world's TL-like documents already
state), and NF is the world's NF minus the changed facts.
Same world, same options, same seed -> the same rows.
"""

from __future__ import annotations

import random
import re
import uuid as uuidlib
from typing import Any

from metacl.data.world_v2 import (N_PHRASINGS, OVERWRITABLE, REL, SOMETIMES_KNOWN, WORLD_VERSION, _Hard,
                                  hard_document, training_texts, verbatim_probes)
from metacl.errors import MetaclError


def is_v2(world: dict[str, list[dict]]) -> bool:
    """True for a world v2 folder (its rows say `world_version: 2`)."""
    rows = world.get("nf") or world.get("tl") or []
    return bool(rows) and rows[0].get("world_version") == WORLD_VERSION


def check_sequence_shape(n_periods: int, facts_per_period: int) -> None:
    """One-line errors for sequence sizes no builder (v1 or v2) accepts."""
    if not 2 <= n_periods <= 8:
        raise MetaclError(f"--periods {n_periods} is out of range; use 2 to 8 periods (3-4 is TemporalWiki-like)")
    if facts_per_period < 1:
        raise MetaclError(f"--facts-per-period must be >= 1, got {facts_per_period}")


def old_facts_v2(world: dict[str, list[dict]]) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], set[int]]]:
    """(subject, code) -> object, and -> the phrasings the corpus shows it in, from the one-fact corpus rows."""
    facts: dict[tuple[str, str], str] = {}
    shown: dict[tuple[str, str], set[int]] = {}
    pats: dict[tuple[str, int], re.Pattern] = {}
    for r in world["pretrain_corpus"]:
        code, s, text = r.get("relation_code"), r.get("subject"), r.get("text", "")
        rel = REL.get(code)
        if rel is None or s is None:
            continue  # profile paragraphs repeat facts the one-fact rows already state
        for k, tpl in enumerate(rel.templates):
            key = (code, k)
            if key not in pats:
                pats[key] = re.compile(re.escape(tpl).replace(re.escape("{s}"), "(?P<s>.+?)").replace(re.escape("{o}"), "(?P<o>.+)"))
            m = pats[key].fullmatch(text)
            if m and m.group("s") == s:
                facts[(s, code)] = m.group("o")
                shown.setdefault((s, code), set()).add(k)
                break
    return facts, shown


def build_sequence_v2(world: dict[str, list[dict]], n_periods: int = 4, facts_per_period: int = 25, seed: int = 0,
                      changed_fraction: float = 0.5, n_distractors: tuple[int, int] = (3, 5)) -> dict[str, Any]:
    """`{"periods": [[row, ...] x P], "nf": [row, ...], "meta": {...}}` for a world v2 folder's splits."""
    check_sequence_shape(n_periods, facts_per_period)
    facts, shown = old_facts_v2(world)
    everyone = sorted({s for (s, c) in facts if REL[c].subject_type == "person" and c == "employer"})
    pools = {t: sorted({o for (s, c), o in facts.items() if REL[c].object_type == t}) for t in
             ("org", "city", "person", "university")}
    pools["person"] = everyone
    # facts the world's TL-like documents already state (every person has some): a period never
    # restates or re-changes them, so each (subject, relation) has one story
    taken = {(r.get("subject"), r.get("relation_code")) for split in ("tl", "tl_val", "meta_train", "meta_val")
             for r in world.get(split, [])}

    def options(s: str) -> tuple[list[str], list[str]]:
        """(relations `s` could get changed, relations `s` lacks and could get)."""
        return ([c for c in OVERWRITABLE if (s, c) not in taken],
                [c for c in SOMETIMES_KNOWN if (s, c) not in facts and (s, c) not in taken and pools[REL[c].object_type]])

    people = [s for s in everyone if any(options(s))]
    if not everyone or not pools["org"] or not pools["city"]:
        raise MetaclError("the world v2 folder has no people, organisations or cities in its pre-training corpus; "
                          "regenerate it with `metacl data world`")
    need = n_periods * facts_per_period
    if need > len(people):
        raise MetaclError(f"{n_periods} periods x {facts_per_period} facts need {need} people but the world has "
                          f"{len(people)} with a relation left to add or change; lower --facts-per-period or use a world with more --entities")
    lo, hi = n_distractors
    rng = random.Random(f"metacl-sequence-v2/{seed}")
    hard = _Hard(seed + 104729, rng, avoid=set(people) | set(pools["org"]) | set(pools["city"]))
    order = list(people)
    rng.shuffle(order)

    periods: list[list[dict]] = []
    changed_keys: set[tuple[str, str]] = set()
    for p in range(n_periods):
        rows = []
        for j, s in enumerate(order[p * facts_per_period:(p + 1) * facts_per_period]):
            changeable, lacking = options(s)
            change = bool(changeable) and (rng.random() < changed_fraction or not lacking)
            code = rng.choice(changeable) if change else rng.choice(lacking)
            rel = REL[code]
            old = facts.get((s, code))
            o = rng.choice([x for x in pools[rel.object_type] if x not in (s, old)])
            if change:
                held = [k for k in range(N_PHRASINGS) if k not in shown.get((s, code), set())]
                probe_k = held[0] if held else rng.randrange(N_PHRASINGS)
                changed_keys.add((s, code))
            else:
                probe_k = rng.randrange(N_PHRASINGS)
            doc_k = rng.choice([k for k in range(N_PHRASINGS) if k != probe_k])
            fact = rel.templates[doc_k].format(s=s, o=o)
            evidence = hard_document(hard, rng, s, o, fact, lo, hi)
            a = evidence.find(fact)
            rows.append({
                "relation_code": code,
                "uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"metacl-sequence-v2/{seed}/{p}/{j}")),
                "task_descriptive": rel.templates[probe_k].format(s=s, o=o),
                "task_schematic": f"Guess the object. \n  subject is {s} , relation is {rel.label} , object is {o}",
                "subject": s, "relation_label": rel.label, "object": o,
                "masked_evidence": evidence.replace(o, "[MASK]"), "evidence": evidence,
                "position": round(evidence.rfind(o) / len(evidence), 6), "evidence_length": len(evidence),
                "invariant": False, "scores": {}, "split": f"period_{p + 1}", "period": p + 1,
                "kind": "changed" if change else "new", "subject_type": "person", "world_version": WORLD_VERSION,
                "probe_phrasing": probe_k, "doc_phrasing": doc_k, "fact_sentence": fact, "fact_span": [a, a + len(fact)],
                **({"old_object": old} if change and old is not None else {}),
            })
        periods.append(rows)
    nf = [r for r in world["nf"] if (r.get("subject"), r.get("relation_code")) not in changed_keys]
    texts = training_texts(world) + [r["evidence"] for rows in periods for r in rows]
    bad = verbatim_probes({f"period_{i}": rows for i, rows in enumerate(periods)}, names=[f"period_{i}" for i in range(n_periods)],
                          texts=texts)
    if bad:  # a name collision could put a probe in some text; never hand out such a sequence
        raise MetaclError(f"the v2 sequence (seed {seed}) has {len(bad)} probe(s) verbatim in training text, e.g. {bad[0]!r}; "
                          "use another --data-seed")
    meta = {"world_version": WORLD_VERSION, "n_periods": n_periods, "facts_per_period": facts_per_period, "seed": seed,
            "changed_fraction": changed_fraction, "n_distractors": [lo, hi],
            "changed": [sum(r["kind"] == "changed" for r in rows) for rows in periods], "nf": len(nf),
            "nf_dropped": len(world["nf"]) - len(nf)}
    return {"periods": periods, "nf": nf, "meta": meta}
