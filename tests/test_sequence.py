"""The task-sequence benchmark: metrics on a hand-made matrix, the period generator, and the CLI."""

from __future__ import annotations

import json

import pytest

from metacl.benchmarks.sequence import sequence_metrics, table_markdown
from metacl.data.world_sequence import generated_sequence, old_facts
from metacl.errors import MetaclError


def test_acc_bwt_fwt_on_hand_made_matrix():
    R = [[0.8, 0.1, 0.2],
         [0.6, 0.9, 0.3],
         [0.5, 0.7, 0.95]]
    b = [0.1, 0.1, 0.2]
    m = sequence_metrics(R, b)
    assert m["ACC"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m["BWT"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)      # -0.25: forgetting
    assert m["FWT"] == pytest.approx(((0.1 - 0.1) + (0.3 - 0.2)) / 2)      # 0.05
    # no forgetting at all -> BWT 0; a matrix that is not square is a user error
    assert sequence_metrics([[0.5, 0.0], [0.5, 0.9]])["BWT"] == pytest.approx(0.0)
    with pytest.raises(MetaclError):
        sequence_metrics([[0.5, 0.1]])


def test_sequence_generator_is_deterministic_and_consistent():
    from metacl.data.world import generate_world

    a = generated_sequence(60, 0, n_periods=3, facts_per_period=5, seed=1)
    b = generated_sequence(60, 0, n_periods=3, facts_per_period=5, seed=1)
    c = generated_sequence(60, 0, n_periods=3, facts_per_period=5, seed=2)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.dumps(a["periods"], sort_keys=True) != json.dumps(c["periods"], sort_keys=True)

    old = old_facts(generate_world(60, 0))
    subjects = [{r["subject"] for r in rows} for rows in a["periods"]]
    assert all(len(s) == 5 for s in subjects)
    assert not (subjects[0] & subjects[1]) and not (subjects[1] & subjects[2]) and not (subjects[0] & subjects[2])
    changed = set()
    for p, rows in enumerate(a["periods"], 1):
        for r in rows:
            assert r["period"] == p and r["task_descriptive"] in r["evidence"] and r["task_descriptive"].endswith(r["object"] + ".")
            assert {"relation_code", "uuid", "task_descriptive", "subject", "object", "evidence"} <= set(r)
            if r["kind"] == "changed":
                assert r["old_object"] == old[(r["subject"], r["relation_code"])] != r["object"]
                changed.add((r["subject"], r["relation_code"]))
            else:
                assert r["relation_code"] in ("spouse", "alma_mater")
    assert changed and not any((r["subject"], r["relation_code"]) in changed for r in a["nf"])
    with pytest.raises(MetaclError):
        generated_sequence(60, 0, n_periods=4, facts_per_period=100)


def test_ckl_sequence_cli_end_to_end(tmp_path):
    from metacl.cli.main import main
    from metacl.data.world import write_world
    from metacl.models.pretrain import tiny_model_for_tests

    world = tmp_path / "world"
    write_world(world, 40, 0)
    texts = [json.loads(l)["text"] for l in (world / "pretrain_corpus.jsonl").read_text().splitlines()[:200]]
    model = tiny_model_for_tests(tmp_path / "lm", texts)
    out = tmp_path / "seq"
    argv = ["ckl", "sequence", "--model", str(model), "--world", str(world), "--out", str(out),
            "--strategies", "finetune", "spg", "--periods", "2", "--facts-per-period", "3", "--epochs", "1",
            "--max-nf", "4", "--batch-size", "4", "--max-length", "64", "--lr", "1e-3", "--spg-docs", "4",
            "--device", "cpu"]
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["strategies"]) == {"finetune", "spg"}
    for name, st in s["strategies"].items():
        R = st["R"]["0"]
        assert len(R) == 2 and all(len(row) == 2 for row in R)
        assert st["ACC"]["mean"] == pytest.approx(sum(R[-1]) / 2)
        assert st["BWT"]["mean"] == pytest.approx(R[1][0] - R[0][0])
        assert st["FWT"]["mean"] == pytest.approx(R[0][1] - s["baseline"][1])
        assert (out / f"heatmap_{name}.png").stat().st_size > 1000
    assert (out / "sequence" / "period_2.jsonl").is_file()
    assert "Best per column" in (out / "table.md").read_text()
    # a rerun with the same options resumes (nothing retrained); different options are refused
    assert main(argv) == 0
    assert main(argv[:-2] + ["--epochs", "2"]) == 2


def test_sequence_optimizer_rows_and_icl_memory(tmp_path, monkeypatch):
    """`--optimizer` rows get their own name in the same --out (same periods, same hash), and a
    non-training strategy (ICL) keeps every earlier period's documents as its memory."""
    import metacl.benchmarks.sequence as seq_mod
    from metacl.cli.main import main
    from metacl.data.world import write_world
    from metacl.models.pretrain import tiny_model_for_tests

    world = tmp_path / "world"
    write_world(world, 40, 0)
    texts = [json.loads(l)["text"] for l in (world / "pretrain_corpus.jsonl").read_text().splitlines()[:200]]
    model = tiny_model_for_tests(tmp_path / "lm", texts)
    out = tmp_path / "seq"
    base = ["ckl", "sequence", "--model", str(model), "--world", str(world), "--out", str(out), "--periods", "2",
            "--facts-per-period", "3", "--epochs", "1", "--max-nf", "4", "--batch-size", "4", "--max-length", "64",
            "--lr", "1e-3", "--device", "cpu", "--seeds", "0"]
    assert main(base + ["--strategies", "finetune", "--optimizer", "learned"]) == 0
    r = json.loads((out / "runs" / "finetune@learned" / "seed_0.json").read_text())
    assert r["optim"]["optimizer"] == "learned" and r["strategy"] == "finetune"

    # ICL: record, per evaluation, which prefix a period-1 probe gets
    seen = []
    real = seq_mod._evaluate

    def spy(model, tok, probe_sets, nf, cfg, device, prefix_fn=None):
        item = probe_sets[0][0]
        seen.append(prefix_fn(item) == item["evidence"] if prefix_fn else None)
        return real(model, tok, probe_sets, nf, cfg, device, prefix_fn)

    monkeypatch.setattr(seq_mod, "_evaluate", spy)
    assert main(base + ["--strategies", "icl"]) == 0
    assert seen == [True, True]          # after period 2 the period-1 evidence is still in memory
    s = json.loads((out / "summary.json").read_text())
    assert {"finetune@learned", "icl"} <= set(s["strategies"])
    assert (out / "heatmap_finetune@learned.png").is_file()
    # a learned-optimizer path without --optimizer learned is a user error (one line, exit 2)
    assert main(base + ["--strategies", "finetune", "--optimizer-path", str(tmp_path)]) == 2
    assert main(base + ["--strategies", "finetune", "--learned-anchor-lr", "1"]) == 2   # same for the anchor multiplier


def test_sequence_learned_anchor_lr_reaches_the_optimizer(tmp_path, monkeypatch):
    import metacl.ckl.stream as stream
    from metacl.cli.main import main
    from metacl.data.world import write_world
    from metacl.models.pretrain import tiny_model_for_tests

    world = tmp_path / "world"
    write_world(world, 40, 0)
    texts = [json.loads(l)["text"] for l in (world / "pretrain_corpus.jsonl").read_text().splitlines()[:200]]
    model = tiny_model_for_tests(tmp_path / "lm", texts)
    got = []
    real = stream.build_optimizer
    monkeypatch.setattr(stream, "build_optimizer", lambda *a, **kw: got.append(kw) or real(*a, **kw))
    out = tmp_path / "seq"
    argv = ["ckl", "sequence", "--model", str(model), "--world", str(world), "--out", str(out), "--periods", "2",
            "--facts-per-period", "2", "--epochs", "1", "--max-nf", "2", "--batch-size", "4", "--max-length", "64",
            "--device", "cpu", "--seeds", "0", "--strategies", "finetune", "--optimizer", "learned",
            "--learned-lr", "2", "--learned-anchor-lr", "0.5"]
    assert main(argv) == 0
    assert got and all(kw["learned_lr"] == 2 and kw["learned_anchor_lr"] == 0.5 for kw in got)
    r = json.loads((out / "runs" / "finetune@learned" / "seed_0.json").read_text())
    assert r["optim"]["learned_anchor_lr"] == 0.5
    assert main(argv[:-1] + ["-1"]) == 2
