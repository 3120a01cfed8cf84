"""`metacl ckl tune`: a grid chosen on tl_val only (never TL test), recorded, resumable, with --then-seeds."""

import json
from pathlib import Path

import pytest

from metacl.cli.main import main

PEOPLE = ["Ada Quill", "Marco Vell", "Lena Ostrow", "Piet Arno", "Sara Lund", "Tomas Reyes", "Ines Baro", "Olaf Berg"]
VAL_PEOPLE = ["Rita Moss", "Karl Fenn", "Nora Vik"]
ORGS = ["Northwind Labs", "Blue Harbor"]
CITIES = ["Lisbon", "Rome", "Paris", "Oslo", "Quito", "Lima"]


def _row(uuid, s, rel, o, code, repeat=3):
    return {"relation_code": code, "uuid": uuid, "task_descriptive": f"{s} {rel} {o} .", "subject": s,
            "relation_label": rel, "object": o, "evidence": " ".join([f"{s} {rel} {o} ."] * repeat)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """TL and an explicit tl_val split of the same kind (few distinct objects: learnable in 2 tiny epochs)."""
    from metacl.models.pretrain import tiny_model_for_tests

    root = tmp_path_factory.mktemp("tune")
    d = root / "world"
    d.mkdir()
    tl = [_row(f"u{i}", p, "works for", ORGS[i % 2], "P108") for i, p in enumerate(PEOPLE)]
    val = [_row(f"v{i}", p, "works for", ORGS[i % 2], "P108") for i, p in enumerate(VAL_PEOPLE)]
    nf = [_row(f"n{i}", p, "lives in", c, "P551", 1) for i, (p, c) in enumerate(zip(PEOPLE, CITIES))]
    for name, rows in (("tl", tl), ("tl_val", val), ("nf", nf)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_model_for_tests(root / "model", texts=[r["evidence"] for r in tl + val + nf] * 3)
    return root, model


def tune_args(world, out, *extra):
    root, model = world
    return ["ckl", "tune", "--model", str(model), "--data", str(root / "world"), "--out", str(out), "--epochs", "2",
            "--seeds", "0", "--batch-size", "4", "--max-length", "12", "--no-exact-match", "--device", "cpu", *extra]


def _rows(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _honest_val(rows):
    """tl_val accuracy at the honest epoch, recomputed here from the rows (best val_acc among epochs >= 1)."""
    return max(r["val_acc"] for r in rows if r["epoch"] >= 1)


def test_choice_is_the_tl_val_argmax_of_the_point_runs_then_seeds_and_resume(world, tmp_path, capsys):
    out = tmp_path / "t"
    args = tune_args(world, out, "--grid", "lr=1e-4,2e-2,6e-2", "--then-seeds", "0", "1")
    assert main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "tune.json").read_text())
    assert [c["values"] for c in res["configs"]] == [{"lr": 1e-4}, {"lr": 2e-2}, {"lr": 6e-2}]
    scores = [_honest_val(_rows(out / c["run_dir"])) for c in res["configs"]]
    assert len(set(scores)) > 1, scores  # the points differ on tl_val, so the choice means something
    best = scores.index(max(scores))     # first argmax: ties go to the earlier point
    assert res["chosen"] == best and res["chosen_values"] == res["configs"][best]["values"]
    assert [c["tl_val_acc"] for c in res["configs"]] == pytest.approx(scores)
    for c in res["configs"]:  # each point ran with its own lr and the shared options
        cfg = json.loads((out / c["run_dir"] / "config.json").read_text())["config"]
        assert cfg["lr"] == c["values"]["lr"] and cfg["epochs"] == 2 and cfg["batch_size"] == 4
    assert f"chosen flags: {res['configs'][best]['flags']}" in printed
    assert "**chosen**" in (out / "tune.md").read_text()
    assert res["rule"].startswith("highest mean tl_val accuracy at the honest epoch")

    # --then-seeds: OUT/final is a ckl run of the chosen point; seed 0 is the tuning run's rows
    final = json.loads((out / "final" / "summary.json").read_text())
    assert final["seeds"] == [0, 1] and final["lr"] == res["chosen_values"]["lr"]
    tuned = [r for r in _rows(out / res["chosen_run_dir"]) if r["seed"] == 0]
    assert [r for r in _rows(out / "final") if r["seed"] == 0] == tuned
    assert {r["seed"] for r in _rows(out / "final")} == {0, 1}

    # Rerun: every point and the final run are finished; nothing is retrained or appended
    before = {p: p.read_text() for p in out.rglob("metrics.jsonl")}
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 3 and "seed 1: already complete" in printed
    assert {p: p.read_text() for p in out.rglob("metrics.jsonl")} == before
    assert json.loads((out / "tune.json").read_text())["chosen"] == best


def test_a_point_better_on_tl_test_but_worse_on_tl_val_is_not_chosen(world, tmp_path, monkeypatch, capsys):
    """Probe scores are made up per lr: lr 2e-3 wins TL test (0.9 vs 0.2) and NF, lr 1e-3 wins tl_val."""
    import metacl.ckl.protocol as protocol
    import metacl.ckl.tune as tune_mod

    current = {}
    real_run = tune_mod.run_ckl

    def run(cfg, log=print):
        current["lr"] = cfg.lr
        return real_run(cfg, log=log)

    made_up = {1e-3: {"v": 0.8, "u": 0.2, "n": 0.1}, 2e-3: {"v": 0.4, "u": 0.9, "n": 0.5}}

    def probe(model, tok, items, **kw):
        kind = {str(it["uuid"] if isinstance(it, dict) else it.uuid)[0] for it in items}
        assert len(kind) == 1, kind  # one probe set at a time: v = tl_val, u = TL, n = NF
        return {"acc": made_up[current["lr"]][kind.pop()], "em": None, "prompt_tokens": 0, "seconds_per_query": 0.0}

    monkeypatch.setattr(tune_mod, "run_ckl", run)
    monkeypatch.setattr(protocol, "probe_accuracy", probe)
    out = tmp_path / "t"
    assert main(tune_args(world, out, "--grid", "lr=1e-3,2e-3")) == 0
    res = json.loads((out / "tune.json").read_text())
    tl_test = [max(r["tl_acc"] for r in _rows(out / c["run_dir"])) for c in res["configs"]]
    val = [_honest_val(_rows(out / c["run_dir"])) for c in res["configs"]]
    assert tl_test[1] > tl_test[0] and val[0] > val[1]  # the construction holds in the runs themselves
    assert res["chosen_values"] == {"lr": 1e-3}
    assert "chosen flags: --lr 0.001" in capsys.readouterr().out

    # an NF floor only lr 2e-3 meets: the floor, not TL test, moves the choice
    out2 = tmp_path / "floor"
    assert main(tune_args(world, out2, "--grid", "lr=1e-3,2e-3", "--nf-floor", "0.3")) == 0
    res2 = json.loads((out2 / "tune.json").read_text())
    assert res2["chosen_values"] == {"lr": 2e-3} and "NF accuracy >= 0.3" in res2["rule"]
    assert [c["eligible"] for c in res2["configs"]] == [False, True]
    # a floor nobody meets: one line, exit 2, tune.json still records every point
    out3 = tmp_path / "none"
    assert main(tune_args(world, out3, "--grid", "lr=1e-3,2e-3", "--nf-floor", "0.9")) == 2
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.startswith("metacl: error")]
    assert len(err) == 1 and "no grid point has NF accuracy >= 0.9" in err[0]  # (the runs' own warnings aside)
    assert json.loads((out3 / "tune.json").read_text())["chosen"] is None


def test_choose_reads_tl_val_only_and_ties_go_to_the_earlier_point():
    from metacl.ckl.tune import choose

    recs = [{"tl_val_acc": 0.5, "nf_acc_at_honest": 0.9, "tl_test_acc_at_honest_not_used": 0.1},
            {"tl_val_acc": 0.7, "nf_acc_at_honest": 0.2, "tl_test_acc_at_honest_not_used": 0.2},
            {"tl_val_acc": 0.7, "nf_acc_at_honest": 0.8, "tl_test_acc_at_honest_not_used": 0.9},
            {"tl_val_acc": 0.6, "nf_acc_at_honest": 0.8, "tl_test_acc_at_honest_not_used": 1.0}]
    assert choose(recs) == 1                  # 0.7 first at index 1; index 2 ties, index 3 wins TL test
    assert choose(recs, nf_floor=0.5) == 2    # index 1 is below the floor
    assert choose(recs, nf_floor=0.95) is None


def test_grid_parsing_uses_the_declared_option_types():
    from metacl.ckl.tune import grid_points, parse_grid, point_flags, point_name

    axes = parse_grid(["lr=3e-4,1e-3", "ewc-lambda=10,100", "ewc_fisher_docs=8"], ["ewc"])
    assert axes == [("lr", [3e-4, 1e-3]), ("ewc_lambda", [10.0, 100.0]), ("ewc_fisher_docs", [8])]
    assert isinstance(axes[2][1][0], int)
    pts = grid_points(axes)
    assert len(pts) == 4 and pts[1] == {"lr": 3e-4, "ewc_lambda": 100.0, "ewc_fisher_docs": 8}
    assert point_name(pts[1]) == "lr=0.0003__ewc_lambda=100__ewc_fisher_docs=8"
    assert point_flags(pts[1]) == "--lr 0.0003 --ewc-lambda 100 --ewc-fisher-docs 8"
    assert grid_points([]) == [{}]


@pytest.mark.parametrize("grid,message", [
    ("ewc_lamda=10", "--grid ewc_lamda: not a tunable option of --strategy ewc; valid names: lr, weight_decay"),
    ("lora_r=4", "not a tunable option of --strategy ewc"),
    ("ewc_fisher_docs=8.5", "'8.5' is not an integer"),
    ("lr=fast", "--grid lr=fast: 'fast' is not a number"),
    ("lr", "is not KEY=V1,V2"),
])
def test_bad_grid_is_one_line_exit_2_nothing_written(world, tmp_path, capsys, grid, message):
    out = tmp_path / "bad"
    assert main(tune_args(world, out, "--strategy", "ewc", "--grid", grid)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    if "valid names" in message:
        assert "ewc_lambda" in err[0] and "ewc_fisher_docs" in err[0]
    assert not out.exists()


def test_bad_choice_and_tune_out_checks(world, tmp_path, capsys):
    assert main(tune_args(world, tmp_path / "a", "--strategy", "das", "--grid", "das_mask=step,foo")) == 2
    assert "'foo' is not one of step, grad" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(tune_args(world, busy, "--grid", "lr=1e-3")) == 2
    assert "holds no `ckl tune` run" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_tune_help_lists_every_run_key(capsys):
    """The --grid help names each run option a grid may vary (it is written out to keep the CLI import light)."""
    from metacl.ckl.tune import RUN_KEYS
    from metacl.cli.main import main

    assert main(["ckl", "tune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    grid = text[text.index("--grid KEY=V1,V2 one grid axis"):]
    assert all(k in grid for k in RUN_KEYS), [k for k in RUN_KEYS if k not in grid]
