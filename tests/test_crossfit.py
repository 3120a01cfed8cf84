"""Cross-fitted token weighters: folds never put a document on both sides, and at deployment every
document is weighted by the one weighter that was not meta-trained on it."""

from __future__ import annotations

import json
import random

import pytest
import torch

from metacl.cli.main import main
from metacl.core.batching import DocBatches
from metacl.data.crossfit import crossfit_folds, evidence_key, read_manifest, write_crossfit
from metacl.data.lama import load_lama_jsonl
from metacl.errors import MetaclError
from metacl.meta.crossfit import CrossFitWeighter
from metacl.meta.token_weighting import TokenWeighter
from metacl.models.loading import load_model_and_tokenizer
from tests.ckl_fixtures import ckl_args, make_tiny_ckl_world


def _items(tmp_path, n=40, shared_evidence=4):
    rows = []
    for i in range(n):
        rel = ["P1", "P2", "P3"][i % 3]
        ev = f"doc {i // 2} ." if i < shared_evidence else f"Person {i} has {rel} value {i} ."  # two pairs share a doc
        rows.append({"relation_code": rel, "uuid": f"u{i}", "task_descriptive": f"Person {i} {rel} value {i} .",
                     "subject": f"Person {i}", "relation_label": rel, "object": f"value {i}", "evidence": ev})
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_lama_jsonl(f, require_object_in_evidence=False), f


def test_folds_keep_a_document_on_one_side_and_deal_every_relation(tmp_path):
    items, _ = _items(tmp_path)
    folds = crossfit_folds(items, folds=2, seed=0)
    assert sum(len(f) for f in folds) == len(items)
    keys = [{evidence_key(it.evidence) for it in f} for f in folds]
    assert not keys[0] & keys[1]  # the two "doc k ." pairs stay together
    for f in folds:
        assert {it.relation_code for it in f} == {"P1", "P2", "P3"}
    shuffled = list(items)
    random.Random(1).shuffle(shuffled)
    again = crossfit_folds(shuffled, folds=2, seed=0)
    assert [sorted(it.uuid for it in f) for f in again] == [sorted(it.uuid for it in f) for f in folds]
    other = crossfit_folds(items, folds=2, seed=1)
    assert [sorted(it.uuid for it in f) for f in other] != [sorted(it.uuid for it in f) for f in folds]


def test_written_folds_train_only_on_other_folds_and_refuse_a_redeal(tmp_path):
    items, _ = _items(tmp_path)
    m = write_crossfit(items, tmp_path / "cf", folds=2, seed=0, val_fraction=0.2)
    for k, fold in enumerate(m["folds"]):
        d = tmp_path / "cf" / fold["dir"]
        deploy = {evidence_key(it.evidence) for it in load_lama_jsonl(d / "deploy.jsonl", require_object_in_evidence=False)}
        seen = load_lama_jsonl(d / "meta_train.jsonl", require_object_in_evidence=False) + \
            load_lama_jsonl(d / "meta_val.jsonl", require_object_in_evidence=False)
        assert deploy == set(fold["deploy_evidence_sha256"])
        assert not deploy & {evidence_key(it.evidence) for it in seen}
        assert len(seen) + len(deploy) >= len(items) - 1  # everything else is on the training side
    assert read_manifest(tmp_path / "cf")["folds"] == m["folds"]
    write_crossfit(items, tmp_path / "cf", folds=2, seed=0, val_fraction=0.2)  # same deal: fine
    with pytest.raises(MetaclError, match="dealt differently"):
        write_crossfit(items, tmp_path / "cf", folds=2, seed=5, val_fraction=0.2)
    with pytest.raises(MetaclError, match="at least 2 folds"):
        crossfit_folds(items, folds=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_ckl_world(tmp_path_factory.mktemp("cf_world"))


def _save_weighters(world, cf_dir, biases=(4.0, -4.0)):
    """One weighter per fold with a distinct constant-ish weight (bias +4 -> ~0.98, -4 -> ~0.02)."""
    _, model_dir = world
    model, tok = load_model_and_tokenizer(model_dir)
    m = read_manifest(cf_dir)
    for fold, b in zip(m["folds"], biases):
        torch.manual_seed(0)
        tw = TokenWeighter.from_base_lm(model, tok, init_bias=b)
        tw.save_pretrained(cf_dir / fold["weighter"] / "best")
    return tok


def test_each_document_gets_the_weights_of_the_fold_that_never_saw_it(world, tmp_path):
    root, _ = world
    assert main(["data", "crossfit", "--data", str(root / "world"), "--out", str(tmp_path / "cf"), "--folds", "2",
                 "--val-fraction", "0.34"]) == 0
    tok = _save_weighters(world, tmp_path / "cf")
    cf = CrossFitWeighter.from_folder(tmp_path / "cf", base_tokenizer=tok)
    tl = load_lama_jsonl(root / "world" / "tl.jsonl")
    docs = [it.evidence for it in tl]
    with pytest.raises(MetaclError, match="routed"):
        cf(torch.ones(1, 3, dtype=torch.long))
    info = cf.route(tok, docs + ["an old text no fold holds ."], max_length=10)
    assert sum(info["documents_per_fold"]) == len(docs) and info["documents_outside_folds"] == 1
    fold_of_doc = {evidence_key(d): k for k, f in enumerate(read_manifest(tmp_path / "cf")["folds"])
                   for d in docs if evidence_key(d) in f["deploy_evidence_sha256"]}
    batches = DocBatches(tok, docs + ["an old text no fold holds ."], batch_size=4, max_length=10, shuffle=False)
    owners = [k for d in docs + ["an old text no fold holds ."]
              for k in [fold_of_doc.get(evidence_key(d))] * len(DocBatches(tok, [d], 1, 10).windows)]
    got, row = [], 0
    with torch.no_grad():
        for b in batches:
            w = cf(b["input_ids"], b["attention_mask"])
            each = [tw(b["input_ids"], b["attention_mask"]) for tw in cf.weighters]
            for r in range(w.shape[0]):
                k = owners[row]
                want = each[k][r] if k is not None else (each[0][r] + each[1][r]) / 2
                got.append(torch.allclose(w[r], want))
                row += 1
    assert row == len(owners) and all(got)
    assert set(fold_of_doc.values()) == {0, 1}  # both folds are used, so the check above can fail


def test_ckl_run_uses_a_crossfit_folder_as_taalm_and_random_predictor(world, tmp_path):
    root, _ = world
    assert main(["data", "crossfit", "--data", str(root / "world" / "tl.jsonl"), "--out", str(tmp_path / "cf"),
                 "--val-fraction", "0.34"]) == 0
    out_missing = tmp_path / "missing"
    assert main(ckl_args(world, out_missing, "--strategy", "taalm", "--taalm-predictor", str(tmp_path / "cf"))) == 2
    assert not out_missing.exists()  # refused before anything is written: no weighter trained yet
    _save_weighters(world, tmp_path / "cf")
    for strat, flag in (("taalm", "--taalm-predictor"), ("random", "--random-predictor")):
        out = tmp_path / strat
        assert main(ckl_args(world, out, "--strategy", strat, flag, str(tmp_path / "cf"))) == 0
        assert (out / "summary.json").is_file()
