"""Meta-training on a user's own (evidence, probe) pairs: a deterministic split by uuid hash, NF from a given file."""

from __future__ import annotations

import hashlib
import json

import pytest

from metacl.cli.main import main
from metacl.meta.user_data import split_key, split_pairs
from metacl.models.pretrain import tiny_model_for_tests


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A pairs file (a world's meta_train + meta_val rows, shuffled) and an old-facts file, plus a tiny LM."""
    import random

    from metacl.data.world import write_world

    root = tmp_path_factory.mktemp("ud")
    write_world(root / "world", 20, seed=0)
    w = root / "world"
    rows = [l for f in ("meta_train", "meta_val") for l in (w / f"{f}.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(rows)
    pairs = root / "my_pairs.jsonl"
    pairs.write_text("\n".join(rows) + "\n")
    nf = root / "my_old_facts.jsonl"
    nf.write_text((w / "meta_nf.jsonl").read_text())
    texts = [json.loads(l)["text"] for l in (w / "pretrain_corpus.jsonl").read_text().splitlines()[:200]]
    return pairs, nf, tiny_model_for_tests(root / "lm", texts=texts, vocab_size=360)


def _uuids(path):
    return [json.loads(l)["uuid"] for l in path.read_text().splitlines()]


def test_cli_meta_trains_on_a_pairs_file(user_files, tmp_path):
    pairs, nf, lm = user_files
    out = tmp_path / "tw"
    base = ["meta-train", "token-weighting", "--model", str(lm), "--data", str(pairs), "--nf", str(nf),
            "--steps", "1", "--meta-batch", "2", "--val-every", "1", "--val-epochs", "1", "--val-items", "4",
            "--retention", "0.5", "--retention-probes", "1", "--max-length", "64", "--val-fraction", "0.3",
            "--device", "cpu"]
    assert main(base + ["--out", str(out)]) == 0
    d = out / "data"
    train, val = _uuids(d / "meta_train.jsonl"), _uuids(d / "meta_val.jsonl")
    every = _uuids(pairs)
    assert sorted(train + val) == sorted(every) and not set(train) & set(val)
    # the documented rule, recomputed here: sha256(uuid) as a fraction below --val-fraction -> meta-val
    rule = {u for u in every if int(hashlib.sha256(u.encode()).hexdigest()[:15], 16) / 16**15 < 0.3}
    assert set(val) == rule and 0 < len(val) < len(every)
    assert _uuids(d / "meta_nf.jsonl") == _uuids(nf)
    info = json.loads((d / "split.json").read_text())
    assert info["counts"] == {"meta_train": len(train), "meta_val": len(val), "meta_nf": len(_uuids(nf))}
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("kind") == "val"] == [0, 1]
    assert all(r["retention_nll"] > 0 for r in rows if "retention_nll" in r), "retention probes come from --nf"
    val_cfg = json.loads((out / "val" / "step_000001" / "config.json").read_text())["config"]
    assert val_cfg["tl"] == str(d / "meta_val.jsonl") and val_cfg["nf"] == str(d / "meta_nf.jsonl")
    assert (out / "best" / "token_weighter.json").is_file()


def test_split_is_stable_under_reordering_and_growth():
    from metacl.data.lama import LamaItem

    def item(u):
        return LamaItem("P1", u, "x is y", "", "x", "is", "y", "", "x is y", 0.0, 3, False)

    items = [item(f"id-{i}") for i in range(200)]
    tr, va = split_pairs(items, 0.25)
    assert 30 < len(va) < 70  # about a quarter
    tr2, va2 = split_pairs(items[::-1] + [item(f"new-{i}") for i in range(50)], 0.25)
    assert {i.uuid for i in va} <= {i.uuid for i in va2} and {i.uuid for i in tr} <= {i.uuid for i in tr2}
    assert all((split_key(i.uuid) < 0.25) == (i in va) for i in items)
    two = [item("a"), item("b")]  # tiny files still get both sides
    t, v = split_pairs(two, 0.01)
    assert len(t) == 1 and len(v) == 1


def test_pairs_file_bad_input_is_one_line_and_writes_nothing(user_files, tmp_path, capsys):
    pairs, nf, lm = user_files
    out = tmp_path / "never"
    common = ["meta-train", "token-weighting", "--model", str(lm), "--out", str(out), "--device", "cpu"]
    assert main(common + ["--data", str(pairs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nf" in err[0]
    assert main(common + ["--data", str(pairs), "--nf", str(nf), "--val-fraction", "1.5"]) == 2
    assert "--val-fraction" in capsys.readouterr().err
    assert main(common + ["--data", str(tmp_path / "missing.jsonl"), "--nf", str(nf)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()
