"""World v2 (`metacl.data.world_v2`): no probe verbatim in training text, official-like TL documents,
held-out phrasings seen on other facts, overwrites, determinism, schema, and the CLI default."""

import json
import re
from pathlib import Path

import pytest

from metacl.cli.main import main
from metacl.data.lama import load_ckl_data, load_lama_jsonl
from metacl.data.world import SPLIT_FILES, generate_world, write_world
from metacl.data.world_v2 import (N_PHRASINGS, REL, generate_world_v2, probe_text, verbatim_probes,
                                  write_world_v2)

PROBE_SPLITS = ("nf", "tl", "tl_val", "meta_train", "meta_val", "meta_nf")
DOC_SPLITS = ("tl", "tl_val", "meta_train", "meta_val")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world_v2")
    write_world_v2(d, 80, seed=5)
    return d


def _rows(d: Path, name: str) -> list[dict]:
    return [json.loads(l) for l in (d / f"{name}.jsonl").read_text().splitlines()]


def _splits(d: Path) -> dict[str, list[dict]]:
    return {n: _rows(d, n) for n in SPLIT_FILES}


def _template_regex(t: str) -> re.Pattern:
    return re.compile("^" + re.escape(t).replace(re.escape("{s}"), "(.+)").replace(re.escape("{o}"), "(.+)") + "$")


def test_no_probe_is_verbatim_in_any_training_text(world):
    splits = _splits(world)
    assert verbatim_probes(splits) == []
    # the check can fail: v1 puts every probe in training text, and one planted probe is found
    v1 = generate_world(80, seed=5)
    assert len(verbatim_probes(v1)) == sum(len(v1[n]) for n in PROBE_SPLITS)
    planted = json.loads(json.dumps(splits))
    planted["tl"][0]["evidence"] += " " + planted["tl"][0]["task_descriptive"]
    assert verbatim_probes(planted) == [probe_text(planted["tl"][0])]
    planted = json.loads(json.dumps(splits))
    planted["pretrain_corpus"].append({"text": planted["nf"][3]["task_descriptive"]})
    assert verbatim_probes(planted) == [probe_text(planted["nf"][3])]


def test_held_out_phrasing_is_seen_on_other_facts(world):
    splits = _splits(world)
    corpus = [r["text"] for r in splits["pretrain_corpus"] if r["relation_code"] != "profile"]
    seen = {(code, k) for code, rel in REL.items() for k, t in enumerate(rel.templates)
            if any(_template_regex(t).match(x) for x in corpus)}
    assert seen == {(code, k) for code in REL for k in range(N_PHRASINGS)}  # every phrasing, every relation
    for n in PROBE_SPLITS:
        for r in splits[n]:
            rel = REL[r["relation_code"]]
            assert r["task_descriptive"] == rel.templates[r["probe_phrasing"]].format(s=r["subject"], o=r["object"])
    # an NF fact is in the corpus, in other phrasings only
    for r in splits["nf"][:20]:
        rel = REL[r["relation_code"]]
        mine = [rel.templates[k].format(s=r["subject"], o=r["object"]) for k in range(N_PHRASINGS)]
        shown = {k for k, m in enumerate(mine) if m in corpus}
        assert shown and r["probe_phrasing"] not in shown


def test_tl_documents_state_the_fact_once_among_hard_sentences(world):
    for n in DOC_SPLITS:
        for r in _rows(world, n):
            ev, fact = r["evidence"], r["fact_sentence"]
            a, b = r["fact_span"]
            assert ev[a:b] == fact and ev.count(r["object"]) == 1 and r["object"] in fact
            assert r["doc_phrasing"] != r["probe_phrasing"] and fact != r["task_descriptive"]
            assert len(fact) < 0.25 * len(ev)  # most of the document is not the fact
            assert len(re.findall(r"\d", ev)) >= 10  # numbers, dates, addresses
            assert not r["invariant"]


def test_overwrites_probe_the_new_object_and_keep_the_old(world):
    splits = _splits(world)
    corpus = "\n".join(r["text"] for r in splits["pretrain_corpus"])
    over = [r for r in splits["tl"] if r["kind"] == "overwrite"]
    new = [r for r in splits["tl"] if r["kind"] == "new"]
    assert over and new
    for r in over:
        assert r["old_object"] != r["object"] and r["relation_code"] in ("employer", "residence")
        assert r["old_object"] in corpus and f"{r['subject']} " in corpus
        assert r["object"] in r["task_descriptive"]
    nf_keys = {(r["subject"], r["relation_code"]) for r in splits["nf"]}
    assert not nf_keys & {(r["subject"], r["relation_code"]) for r in splits["tl"]}


def test_same_seed_same_bytes_and_schema(world, tmp_path):
    write_world_v2(tmp_path / "again", 80, seed=5)
    for name in SPLIT_FILES:
        assert (world / f"{name}.jsonl").read_bytes() == (tmp_path / "again" / f"{name}.jsonl").read_bytes(), name
    assert (world / "world.json").read_bytes() == (tmp_path / "again" / "world.json").read_bytes()
    other = generate_world_v2(80, seed=6)
    assert [r["task_descriptive"] for r in other["tl"]] != [r["task_descriptive"] for r in _rows(world, "tl")]
    for name in PROBE_SPLITS:
        assert load_lama_jsonl(world / f"{name}.jsonl")
    d = load_ckl_data(world)
    assert d.tl_val and d.tl[0].extra["world_version"] == 2 and "fact_span" in d.tl[0].extra


def test_cli_default_is_v2_and_v1_stays_selectable(tmp_path, capsys):
    assert main(["data", "world", "--entities", "40", "--seed", "1", "--out", str(tmp_path / "v2")]) == 0
    assert json.loads((tmp_path / "v2" / "world.json").read_text())["world_version"] == 2
    assert main(["data", "world", "--version", "1", "--entities", "40", "--seed", "1", "--out", str(tmp_path / "v1")]) == 0
    write_world(tmp_path / "v1ref", 40, seed=1)
    for name in SPLIT_FILES:
        assert (tmp_path / "v1" / f"{name}.jsonl").read_bytes() == (tmp_path / "v1ref" / f"{name}.jsonl").read_bytes()
    assert main(["data", "world", "--entities", "40", "--paraphrases", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "--paraphrases 1" in capsys.readouterr().err
    assert main(["data", "world", "--entities", "40", "--distractors", "5", "2", "--out", str(tmp_path / "bad1")]) == 2
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_document_knobs_change_documents_only():
    """One base LM serves every distractor setting: corpus, probes and NF are the same bytes."""
    a = generate_world_v2(60, seed=2, n_distractors=(6, 8))
    b = generate_world_v2(60, seed=2, n_distractors=(0, 2))
    assert a["pretrain_corpus"] == b["pretrain_corpus"] and a["nf"] == b["nf"]
    assert [r["task_descriptive"] for r in a["tl"]] == [r["task_descriptive"] for r in b["tl"]]
    assert [r["fact_sentence"] for r in a["tl"]] == [r["fact_sentence"] for r in b["tl"]]
    assert sum(len(r["evidence"]) for r in a["tl"]) > 2 * sum(len(r["evidence"]) for r in b["tl"])
    assert verbatim_probes(b) == []
