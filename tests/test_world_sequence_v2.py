"""The v2 task sequence (`metacl.data.world_sequence_v2`): held-out probes, v2 documents, disjoint
people, one change per fact, determinism, and dispatch from `build_sequence` by world version."""

import json
import re

import pytest

from metacl.data.world import generate_world
from metacl.data.world_sequence import build_sequence, load_world
from metacl.data.world_sequence_v2 import build_sequence_v2, old_facts_v2
from metacl.data.world_v2 import HARD_SENTENCES, REL, probe_text, write_world_v2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world_v2_seq")
    write_world_v2(d, 80, seed=3)
    return load_world(d)


def _phrasing(row) -> int:
    """Which of the relation's phrasings the probe sentence uses."""
    for k, t in enumerate(REL[row["relation_code"]].templates):
        if t.format(s=row["subject"], o=row["object"]) == row["task_descriptive"]:
            return k
    raise AssertionError(row["task_descriptive"])


def test_old_facts_are_read_back_from_the_corpus(world):
    facts, shown = old_facts_v2(world)
    for r in world["nf"]:
        assert facts[(r["subject"], r["relation_code"])] == r["object"]
        assert r["probe_phrasing"] not in shown[(r["subject"], r["relation_code"])]  # the held-out one


def test_v2_periods_hold_their_probes_out_and_look_like_v2_tl_documents(world):
    seq = build_sequence(world, n_periods=3, facts_per_period=8, seed=1)  # dispatches on world_version
    assert seq["meta"]["world_version"] == 2
    facts, shown = old_facts_v2(world)
    hay = "\n".join([r["text"] for r in world["pretrain_corpus"]] + [r["evidence"] for p in seq["periods"] for r in p])
    people = [r["subject"] for p in seq["periods"] for r in p]
    assert len(people) == len(set(people)) == 24  # disjoint people: one fact each
    hard = [re.compile(re.escape(t).replace(re.escape("{s}"), ".+?").replace(r"\{", "{").split("{")[0]) for t in HARD_SENTENCES]
    for p in seq["periods"]:
        for r in p:
            assert probe_text(r) not in hay, r["task_descriptive"]  # never verbatim in any training text
            assert r["fact_sentence"] in r["evidence"] and r["evidence"].count(r["fact_sentence"]) == 1
            assert r["doc_phrasing"] != r["probe_phrasing"] == _phrasing(r)
            others = r["evidence"].replace(r["fact_sentence"], "").strip()
            assert others and r["object"] not in others  # hard sentences around it, none naming the object
            key = (r["subject"], r["relation_code"])
            if r["kind"] == "changed":
                assert r["old_object"] == facts[key] != r["object"]
                assert r["probe_phrasing"] not in shown[key]  # probed in the phrasing the corpus never showed
            else:
                assert key not in facts  # a relation the person lacked
    stated = {(r["subject"], r["relation_code"]) for n in ("tl", "tl_val", "meta_train", "meta_val") for r in world[n]}
    assert not stated & {(r["subject"], r["relation_code"]) for p in seq["periods"] for r in p}  # one story per fact
    changed = {(r["subject"], r["relation_code"]) for p in seq["periods"] for r in p if r["kind"] == "changed"}
    assert not any((r["subject"], r["relation_code"]) in changed for r in seq["nf"])
    assert len(seq["nf"]) == len(world["nf"]) - seq["meta"]["nf_dropped"]
    again = build_sequence_v2(world, n_periods=3, facts_per_period=8, seed=1)
    assert json.dumps(again, sort_keys=True) == json.dumps(seq, sort_keys=True)
    assert json.dumps(build_sequence_v2(world, 3, 8, seed=2), sort_keys=True) != json.dumps(seq, sort_keys=True)


def test_v1_worlds_keep_the_v1_sequence():
    seq = build_sequence(generate_world(40, 0), n_periods=2, facts_per_period=3, seed=0)
    assert "world_version" not in seq["meta"]
    r = seq["periods"][0][0]
    assert r["task_descriptive"] in r["evidence"]  # v1: the probe sentence is in the document


def test_too_many_facts_is_one_clear_error(world):
    from metacl.errors import MetaclError

    with pytest.raises(MetaclError, match="need .* people"):
        build_sequence_v2(world, n_periods=8, facts_per_period=500)
