"""End to end: `metacl ckl run` on a tiny model and a hand-made world, then compare, config errors."""

import json
from pathlib import Path

import pytest
import torch

from metacl.cli.main import main

PEOPLE = ["Ada Quill", "Marco Vell", "Lena Ostrow", "Piet Arno", "Sara Lund", "Tomas Reyes", "Ines Baro", "Olaf Berg"]
ORGS = ["Northwind Labs"] * 4 + ["Blue Harbor"] * 4   # few distinct objects: learnable in 2 tiny epochs
CITIES = ["Port Avery", "Lisbon", "Rome", "Paris", "Oslo", "Quito", "Lima", "Turin"]


def _row(i, s, rel, o, ev, code):
    return {"relation_code": code, "uuid": f"u{i}", "task_descriptive": f"{s} {rel} {o} .", "subject": s,
            "relation_label": rel, "object": o, "evidence": ev}


def write_world(d: Path) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    tl = [_row(i, p, "works for", o, " ".join([f"{p} works for {o} ."] * 4), "P108")
          for i, (p, o) in enumerate(zip(PEOPLE, ORGS))]
    nf = [_row(100 + i, p, "lives in", c, f"{p} lives in {c} .", "P551") for i, (p, c) in enumerate(zip(PEOPLE, CITIES))]
    for name, rows in (("tl", tl), ("nf", nf)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "pretrain_corpus.jsonl").write_text("".join(json.dumps({"text": r["evidence"]}) + "\n" for r in nf))
    return [r["evidence"] for r in tl + nf]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from metacl.models.pretrain import tiny_model_for_tests

    root = tmp_path_factory.mktemp("ckl")
    texts = write_world(root / "world")
    model = tiny_model_for_tests(root / "model", texts=texts * 3)
    return root, model


def run_args(root, model, out, *extra):
    return ["ckl", "run", "--model", str(model), "--data", str(root / "world"), "--out", str(out),
            "--epochs", "2", "--seeds", "0", "--lr", "1e-2", "--batch-size", "4", "--max-length", "12", *extra]


def test_finetune_run_learns_and_writes_everything_then_lora_and_compare(setup, capsys):
    root, model = setup
    out = root / "ft"
    assert main(run_args(root, model, out, "--strategy", "finetune")) == 0
    for f in ("config.json", "metrics.jsonl", "summary.json", "table.md", "plot.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["tl_acc"] > rows[0]["tl_acc"] + 0.1, rows   # the new facts are being learned
    assert {"tl_em", "nf_acc", "val_acc", "train_loss"} <= set(rows[-1])
    summary = json.loads((out / "summary.json").read_text())
    paper = summary["aggregate"]["paper"]
    assert paper["tl_acc"]["mean"] == pytest.approx(max(r["tl_acc"] for r in rows[1:]))
    assert paper["total"]["mean"] == pytest.approx(paper["tl_acc"]["mean"] + paper["nf_acc"]["mean"])
    assert summary["n_tl"] + summary["n_tl_val"] == 8  # 1 of 8 TL items carved as tl_val, not scored
    # the float path is recorded: torch and its thread count (the suite runs at one)
    assert (summary["torch"], summary["torch_threads"]) == (torch.__version__, 1) and "learned_lr" not in summary
    table = capsys.readouterr().out
    assert "paper (best TL test epoch)" in table and "honest (epoch by tl_val)" in table

    # Same command again: the seed is complete, nothing is rerun or appended.
    assert main(run_args(root, model, out, "--strategy", "finetune")) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    # More seeds in the same folder: only the new seed runs; the summary covers both.
    args = run_args(root, model, out, "--strategy", "finetune")
    args[args.index("--seeds") + 1] = "1"
    args.insert(args.index("--seeds") + 1, "0")
    assert main(args) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["seed"], r["epoch"]) for r in rows) == [(s, e) for s in (0, 1) for e in (0, 1, 2)]
    assert json.loads((out / "summary.json").read_text())["seeds"] == [0, 1]

    lo = root / "lora"
    assert main(run_args(root, model, lo, "--strategy", "lora", "--lora-r", "4")) == 0
    cmp_dir = root / "cmp"
    capsys.readouterr()
    assert main(["ckl", "compare", str(out), str(lo), "--out", str(cmp_dir)]) == 0
    merged = capsys.readouterr().out
    assert "| finetune |" in merged and "| lora |" in merged
    assert (cmp_dir / "plot.png").stat().st_size > 0 and (cmp_dir / "table.md").is_file()


def test_first_seed_reuses_the_preflight_strategies_with_the_same_result(setup, monkeypatch, tmp_path):
    """One seed builds its strategies once (the pre-flight instances); later seeds build fresh ones.

    Seed 0 runs on the pre-flight instances in `--seeds 0 1` and on freshly built ones in
    `--seeds 1 0`; its rows must be the same (ewc: state built in before_task).
    """
    import metacl.ckl.protocol as protocol
    import metacl.ckl.stream as stream

    root, model = setup
    builds = []

    def counting(real):
        def build(names, options):
            builds.append(list(names))
            return real(names, options)
        return build

    monkeypatch.setattr(protocol, "build_strategies", counting(protocol.build_strategies))
    monkeypatch.setattr(stream, "build_strategies", counting(stream.build_strategies))
    measured = ("seconds", "peak_mem")  # wall time and memory differ run to run


    def seed0_rows(out, seeds):
        args = run_args(root, model, out, "--strategy", "ewc", "--ewc-fisher-docs", "4", "--epochs", "1")
        i = args.index("--seeds")
        args[i + 1: i + 2] = seeds
        assert main(args) == 0
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not any(m in k for m in measured)} for r in rows if r["seed"] == 0]

    one = seed0_rows(tmp_path / "one", ["0"])
    assert builds == [["ewc"]]  # the pre-flight build only
    builds.clear()
    reused = seed0_rows(tmp_path / "a", ["0", "1"])
    assert builds == [["ewc"], ["ewc"]]  # pre-flight (used by seed 0), then seed 1's own
    fresh = seed0_rows(tmp_path / "b", ["1", "0"])
    assert reused == fresh == one and len(one) == 2


def test_out_folder_of_a_different_run_is_refused(setup, capsys, tmp_path):
    root, model = setup
    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.json").write_text(json.dumps({"hash": "0000", "config": {}}))
    assert main(run_args(root, model, out, "--strategy", "finetune")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a different run" in err[0]


def test_config_errors_are_one_line(setup, capsys, tmp_path):
    root, model = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nlearning_rate: 0.1\n")
    assert main(["ckl", "run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'learning_rate'" in err[0]

    assert main(run_args(root, model, tmp_path / "o", "--epochs", "0")) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert main(run_args(root, model, tmp_path / "o2", "--strategy", "nosuch")) == 2
    assert "unknown strategy 'nosuch'" in capsys.readouterr().err
    assert main(["ckl", "run", "--data", str(root / "world"), "--out", str(tmp_path / "o3")]) == 2
    assert "--model" in capsys.readouterr().err


def test_bad_model_path_fails_before_anything_is_written(setup, capsys, tmp_path):
    root, _ = setup
    out = tmp_path / "never"
    assert main(run_args(root, tmp_path / "no_such_model", out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not out.exists()


def test_yaml_config_gives_options_and_command_line_wins(tmp_path):
    from metacl.cli.ckl import config_from_options, merge_options
    from metacl.cli.main import build_parser

    y = tmp_path / "c.yaml"
    y.write_text("model: m\ndata: d\nout: o\nstrategy: lora\nlora-r: 3\nepochs: 5\nseeds: [1, 2]\n")
    parser = build_parser()
    args = parser.parse_args(["ckl", "run", "--config", str(y), "--epochs", "7"])
    defaults = args.func.keywords["defaults"]  # the real defaults, kept aside by the run parser
    cfg = config_from_options(merge_options(defaults, {k: v for k, v in vars(args).items() if k != "func"}))
    assert cfg.strategies == ["lora"] and cfg.strategy_options == {"lora_r": 3, "lora_alpha": 16.0, "lora_dropout": 0.0}
    assert cfg.epochs == 7 and cfg.seeds == [1, 2] and cfg.model == "m"


def test_strategies_lists_finetune_and_lora(capsys):
    assert main(["ckl", "strategies"]) == 0
    out = capsys.readouterr().out
    assert any(l.startswith("finetune") for l in out.splitlines())
    assert any(l.startswith("lora ") for l in out.splitlines())
