"""`metacl.data.world`: determinism, disjoint splits, the schema, and what each split promises."""

import json
from pathlib import Path

import pytest

from metacl.cli.main import main
from metacl.data.lama import load_ckl_data, load_lama_jsonl
from metacl.data.world import NEW_RELATIONS, OLD_RELATIONS, SPLIT_FILES, generate_world, write_world

PROBE_SPLITS = ("nf", "tl", "tl_val", "meta_train", "meta_val", "meta_nf")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    write_world(d, 60, seed=3)
    return d


def _rows(d: Path, name: str) -> list[dict]:
    return [json.loads(l) for l in (d / f"{name}.jsonl").read_text().splitlines()]


def test_same_seed_same_bytes(world, tmp_path):
    write_world(tmp_path / "again", 60, seed=3)
    for name in SPLIT_FILES + ("world",):
        ext = "json" if name == "world" else "jsonl"
        assert (world / f"{name}.{ext}").read_bytes() == (tmp_path / "again" / f"{name}.{ext}").read_bytes(), name
    other = generate_world(60, seed=4)
    assert [r["task_descriptive"] for r in other["tl"]] != [r["task_descriptive"] for r in _rows(world, "tl")]


def test_every_probe_split_loads_and_validates(world):
    for name in PROBE_SPLITS:
        items = load_lama_jsonl(world / f"{name}.jsonl")
        assert items, name
        for it in items:
            assert it.task_descriptive.rstrip(".").endswith(it.object)
            assert it.object in it.evidence
    d = load_ckl_data(world)
    assert d.source == "world" and d.tl_val and len(d.old_corpus) == len(_rows(world, "pretrain_corpus"))


def test_subject_groups_are_disjoint(world):
    subj = {n: {r["subject"] for r in _rows(world, n)} for n in PROBE_SPLITS}
    for a, b in [("tl", "tl_val"), ("tl", "meta_train"), ("tl", "meta_val"), ("tl_val", "meta_train"),
                 ("tl_val", "meta_val"), ("meta_train", "meta_val")]:
        assert not subj[a] & subj[b], (a, b)
    people_nf = {r["subject"] for r in _rows(world, "nf") if r["subject_type"] == "person"}
    assert people_nf <= subj["tl"]                       # NF people are the TL people (old facts)
    assert subj["meta_nf"] <= subj["meta_train"]
    uuids = [r["uuid"] for n in PROBE_SPLITS for r in _rows(world, n)]
    assert len(uuids) == len(set(uuids))


def test_old_world_in_corpus_new_facts_not(world):
    corpus = {r["text"] for r in _rows(world, "pretrain_corpus")}
    for r in _rows(world, "nf") + _rows(world, "meta_nf"):
        assert r["task_descriptive"] in corpus and r["kind"] == "old"
    for n in ("tl", "tl_val", "meta_train", "meta_val"):
        for r in _rows(world, n):
            assert r["task_descriptive"] not in corpus and not r["invariant"]
    # Each old fact appears in several paraphrases.
    r = _rows(world, "nf")[0]
    assert sum(r["subject"] in t and r["object"] in t for t in corpus) >= 4


def test_overwrites_replace_an_old_fact(world):
    tl = _rows(world, "tl")
    over = [r for r in tl if r["kind"] == "overwrite"]
    assert 0 < len(over) < len(tl)
    corpus = {r["text"] for r in _rows(world, "pretrain_corpus")}
    nf_keys = {(r["subject"], r["relation_code"]) for r in _rows(world, "nf")}
    for r in over:
        assert r["old_object"] != r["object"] and r["relation_code"] in ("employer", "residence")
        assert r["task_descriptive"].replace(r["object"], r["old_object"]) in corpus
        assert (r["subject"], r["relation_code"]) not in nf_keys  # NF never probes a changed fact


def test_documents_bury_the_fact_and_relations_are_rich(world):
    for r in _rows(world, "tl") + _rows(world, "meta_train"):
        assert r["evidence"].count(r["task_descriptive"]) == 1
        assert len(r["task_descriptive"]) < 0.35 * len(r["evidence"])  # most of the document is not the fact
    codes = {r["relation_code"] for n in PROBE_SPLITS for r in _rows(world, n)}
    assert len(codes) >= 8 and codes <= {r.code for r in OLD_RELATIONS + NEW_RELATIONS}
    objs = [r["object"] for n in PROBE_SPLITS for r in _rows(world, n)]
    assert sum(" " in o for o in objs) > 0.5 * len(objs)  # mostly multi-word objects


def test_cli_world(tmp_path, capsys):
    assert main(["data", "world", "--entities", "40", "--seed", "1", "--out", str(tmp_path / "w")]) == 0
    meta = json.loads((tmp_path / "w" / "world.json").read_text())
    assert meta["counts"]["tl"] == 20 and meta["seed"] == 1
    assert main(["data", "world", "--entities", "5", "--out", str(tmp_path / "x")]) == 2
    assert "too small" in capsys.readouterr().err
