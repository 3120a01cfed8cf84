"""A TemporalWiki-style sequence of world updates on top of a generated world.

Why: one-shot LAMA-ckl has a single new task, so it cannot show *backward* transfer (does
learning period 3 erase period 1?) or forward transfer. TemporalWiki (Jang et al., 2022) feeds
a model monthly snapshots, each with new and changed facts. Here a generated world (the old
world the base LM learned in pre-training) is followed by P periods; each period is a set of
LAMA-schema rows whose `evidence` documents state one fact among distractor sentences:

- `new` facts: a relation the person had no value for (spouse, educated at);
- `changed` facts: an old employer or city replaced by a new one (`old_object` says which).

Design choices, so that the accuracy matrix measures forgetting and nothing else:
- every (subject, relation) changes at most once in the whole sequence, and the people of
  different periods are disjoint, so every period's probes stay true until the end;
- the old-world probes (`nf`) are the world's `nf` rows minus any fact a period changes.

    seq = build_sequence(load_world(world_dir), n_periods=4, facts_per_period=25, seed=0)
    seq["periods"][0][0]["task_descriptive"]   # 'Ada Quill works for Mann Systems.'

Same world, same options, same seed -> the same rows (uuids included).
"""

from __future__ import annotations

import json
import random
import re
import uuid as uuidlib
from pathlib import Path
from typing import Any

from metacl.data.world import ADJECTIVES, DAYS, DISTRACTORS, MONTHS, OVERWRITABLE, PLURALS, RELATIONS, generate_world
from metacl.errors import DataError, MetaclError
from metacl.utils import write_json_atomic

NEW_CODES = ("spouse", "alma_mater")
WORLD_SPLITS = ("pretrain_corpus", "nf", "tl", "tl_val", "meta_train", "meta_val")


def _check_world_row(row, split: str, path: Path, lineno: int) -> None:
    """One-line DataError for a row the sequence cannot use (names file, line and field)."""
    if split == "pretrain_corpus":
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise DataError(f"{path}:{lineno}: field 'text' is missing or empty; regenerate the world folder")
    elif split in ("nf", "tl", "tl_val"):
        from metacl.data.lama import validate_row

        validate_row(row, path, lineno)


def load_world(world_dir: str | Path) -> dict[str, list[dict]]:
    """The splits of a world folder written by `metacl data world` (JSONL per split)."""
    d = Path(world_dir)
    if not (d / "pretrain_corpus.jsonl").is_file() or not (d / "nf.jsonl").is_file():
        raise MetaclError(f"world folder {d} lacks pretrain_corpus.jsonl / nf.jsonl; create one with `metacl data world --out {d}`")
    out: dict[str, list[dict]] = {}
    for name in WORLD_SPLITS:
        path = d / f"{name}.jsonl"
        rows = []
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}:{i}: malformed JSON ({e.msg}); regenerate the world folder") from e
                        _check_world_row(rows[-1], name, path, i)  # a bad row fails here, not mid-run
        out[name] = rows
    return out


def old_facts(world: dict[str, list[dict]]) -> dict[tuple[str, str], str]:
    """(subject, relation_code) -> object of the old world, read back from the pre-training corpus.

    Each fact appears there with its probe template (template 0), so matching that template with
    the known subject recovers the object without needing the generator's internal state.
    """
    facts: dict[tuple[str, str], str] = {}
    for r in world["pretrain_corpus"]:
        code, s, text = r.get("relation_code"), r.get("subject"), r.get("text", "")
        rel = RELATIONS.get(code)
        if rel is None or s is None:
            continue
        pat = re.escape(rel.templates[0]).replace(re.escape("{s}"), re.escape(s)).replace(re.escape("{o}"), "(?P<o>.+)")
        m = re.fullmatch(pat, text)
        if m:
            facts[(s, code)] = m.group("o")
    return facts


def _pools(world: dict[str, list[dict]], facts: dict[tuple[str, str], str]) -> dict[str, list[str]]:
    people = sorted({s for (s, c) in facts if RELATIONS[c].subject_type == "person"})
    orgs = sorted({s for (s, c) in facts if c == "headquarters"})
    cities = sorted({s for (s, c) in facts if c == "country"})
    unis = sorted({r["object"] for split in ("tl", "tl_val", "meta_train", "meta_val")
                   for r in world.get(split, []) if r.get("relation_code") == "alma_mater"})
    return {"person": people, "org": orgs, "city": cities, "university": unis}


def build_sequence(world: dict[str, list[dict]], n_periods: int = 4, facts_per_period: int = 25, seed: int = 0,
                   changed_fraction: float = 0.5, n_distractors: tuple[int, int] = (4, 6)) -> dict[str, Any]:
    """`{"periods": [[row, ...] x P], "nf": [row, ...], "meta": {...}}` for the given world.

    A world v2 folder gets v2 periods (held-out probe phrasings, v2's hard sentences and their
    default 3-5 of them: `metacl.data.world_sequence_v2`); `n_distractors` applies to v1 only.
    """
    from metacl.data.world_sequence_v2 import build_sequence_v2, check_sequence_shape, is_v2

    if is_v2(world):
        return build_sequence_v2(world, n_periods, facts_per_period, seed, changed_fraction)
    check_sequence_shape(n_periods, facts_per_period)
    facts = old_facts(world)
    pools = _pools(world, facts)
    if not pools["person"] or not pools["org"] or not pools["city"]:
        raise MetaclError("the world has no people, organisations or cities in its pre-training corpus; "
                          "regenerate it with `metacl data world`")
    need = n_periods * facts_per_period
    if need > len(pools["person"]):
        raise MetaclError(f"{n_periods} periods x {facts_per_period} facts need {need} people but the world has "
                          f"{len(pools['person'])}; lower --facts-per-period or use a world with more --entities")
    rng = random.Random(f"metacl-sequence/{seed}")
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    people = list(pools["person"])
    rng.shuffle(people)
    new_codes = [c for c in NEW_CODES if pools[RELATIONS[c].object_type]]

    def document(s: str, fact_sentence: str) -> str:
        k = min(rng.randint(*n_distractors), len(DISTRACTORS))
        sents = []
        for t in rng.sample(DISTRACTORS, k):
            adj, adj2 = rng.sample(ADJECTIVES, 2)
            sents.append(t.format(s=s, city=rng.choice(pools["city"]), adj=adj, adj2=adj2, month=rng.choice(MONTHS),
                                  bs=fake.bs(), phrase=fake.catch_phrase().lower(), first=fake.first_name(),
                                  plural=rng.choice(PLURALS), day=rng.choice(DAYS), title=fake.catch_phrase().title()))
        sents.insert(rng.randint(0, k), fact_sentence)
        return " ".join(sents)

    periods: list[list[dict]] = []
    changed_keys: set[tuple[str, str]] = set()
    for p in range(n_periods):
        rows = []
        for j, s in enumerate(people[p * facts_per_period:(p + 1) * facts_per_period]):
            change = rng.random() < changed_fraction or not new_codes
            code = rng.choice(OVERWRITABLE) if change else rng.choice(new_codes)
            rel = RELATIONS[code]
            old = facts.get((s, code))
            o = rng.choice([x for x in pools[rel.object_type] if x not in (s, old)])
            sentence = rel.templates[0].format(s=s, o=o)
            evidence = document(s, sentence)
            if change:
                changed_keys.add((s, code))
            rows.append({
                "relation_code": code,
                "uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"metacl-sequence/{seed}/{p}/{j}")),
                "task_descriptive": sentence,
                "task_schematic": f"Guess the object. \n  subject is {s} , relation is {rel.label} , object is {o}",
                "subject": s, "relation_label": rel.label, "object": o,
                "masked_evidence": evidence.replace(o, "[MASK]"), "evidence": evidence,
                "position": round(evidence.rfind(o) / len(evidence), 6), "evidence_length": len(evidence),
                "invariant": False, "scores": {}, "split": f"period_{p + 1}", "period": p + 1,
                "kind": "changed" if change else "new", "subject_type": "person",
                **({"old_object": old} if change and old is not None else {}),
            })
        periods.append(rows)
    nf = [r for r in world["nf"] if (r.get("subject"), r.get("relation_code")) not in changed_keys]
    meta = {"n_periods": n_periods, "facts_per_period": facts_per_period, "seed": seed,
            "changed_fraction": changed_fraction, "n_distractors": list(n_distractors),
            "changed": [sum(r["kind"] == "changed" for r in rows) for rows in periods], "nf": len(nf),
            "nf_dropped": len(world["nf"]) - len(nf)}
    return {"periods": periods, "nf": nf, "meta": meta}


def write_sequence(out_dir: str | Path, world: dict[str, list[dict]], **opts) -> dict[str, Any]:
    """Write `period_<i>.jsonl`, `nf.jsonl` and `sequence.json` (options + counts) to `out_dir`."""
    seq = build_sequence(world, **opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {f"period_{i + 1}": rows for i, rows in enumerate(seq["periods"])}
    files["nf"] = seq["nf"]
    for name, rows in files.items():
        tmp = out / f".{name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        tmp.replace(out / f"{name}.jsonl")
    write_json_atomic(out / "sequence.json", seq["meta"])
    return seq


def generated_sequence(n_entities: int, world_seed: int, **opts) -> dict[str, Any]:
    """Convenience: generate the world in memory, then its sequence (tests, quick looks)."""
    return build_sequence(generate_world(n_entities, world_seed), **opts)
