"""What a new user meets first (issue 17), checked where they meet it: the `metacl` command.

Every refusal here is one `metacl: error:` line on stderr, exit code 2, and an untouched --out.
Runs are tiny (random 2-layer models, 6 facts, 1-2 epochs) so the file stays fast on a CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metacl.cli.main import main
from metacl.utils import snapshot_dir


PEOPLE = ["Ada Quill", "Marco Vell", "Lena Ostrow", "Piet Arno", "Sara Lund", "Tomas Reyes"]
ORGS = ["Northwind Labs", "Blue Harbor", "Northwind Labs", "Blue Harbor", "Northwind Labs", "Blue Harbor"]
CITIES = ["Port Avery", "Lisbon", "Rome", "Paris", "Oslo", "Quito"]


def _row(i, s, rel, o, ev, code="P108"):
    return {"relation_code": code, "uuid": f"u{i}", "task_descriptive": f"{s} {rel} {o} .", "subject": s,
            "relation_label": rel, "object": o, "evidence": ev}


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from metacl.models.loading import load_tokenizer
    from metacl.models.pretrain import tiny_model_for_tests

    r = tmp_path_factory.mktemp("ux")
    tl = [_row(i, p, "works for", o, f"{p} works for {o} . " * 4) for i, (p, o) in enumerate(zip(PEOPLE, ORGS))]
    nf = [_row(100 + i, p, "lives in", c, f"{p} lives in {c} .", "P551") for i, (p, c) in enumerate(zip(PEOPLE, CITIES))]
    w = r / "world"
    w.mkdir()
    for name, rows in (("tl", tl), ("nf", nf), ("meta_train", tl), ("meta_nf", nf)):
        _jsonl(w / f"{name}.jsonl", rows)
    _jsonl(w / "pretrain_corpus.jsonl", [{"text": x["evidence"]} for x in tl + nf])
    model = tiny_model_for_tests(r / "model", texts=[x["evidence"] for x in tl + nf])
    tok = load_tokenizer(model)

    def gpt2(name, positions):  # an own GPT-2 with learned positions: indexing past them crashes
        cfg = GPT2Config(vocab_size=len(tok), n_positions=positions, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        GPT2LMHeadModel(cfg).save_pretrained(r / name)
        tok.save_pretrained(r / name)
        return r / name

    return {"root": r, "world": w, "model": model, "tok": tok, "gpt2_32": gpt2("gpt2_32", 32),
            "gpt2_short": gpt2("gpt2_short", 6)}  # every probe is longer than 6 tokens


def _ckl(e, model, out, *extra):
    return ["ckl", "run", "--model", str(model), "--data", str(e["world"]), "--out", str(out), "--epochs", "1",
            "--seeds", "0", "--batch-size", "4", "--no-exact-match", *extra]


def _refused(capsys, argv, out: Path | None, *words):
    """Run argv; assert one error line holding `words`, exit 2, `out` as it was."""
    before, existed = (snapshot_dir(out), out.exists()) if out is not None else (None, None)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("metacl: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    if out is not None:
        assert out.exists() == existed and snapshot_dir(out) == before, f"{out} changed"
    return lines[0]


# ---------------------------------------------------------------- item 1: --max-length vs the model's context

def test_max_length_beyond_a_gpt2_context_is_clamped_with_one_note(env, capsys):
    out = env["root"] / "clamped"
    capsys.readouterr()
    assert main(_ckl(env, env["gpt2_32"], out)) == 0  # default --max-length 256 > n_positions 32
    err = capsys.readouterr().err
    notes = [l for l in err.splitlines() if l.startswith("metacl: note:")]
    assert len(notes) == 1 and "--max-length 256" in notes[0] and "32 positions" in notes[0], err
    assert json.loads((out / "config.json").read_text())["config"]["max_length"] == 32
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # trained past epoch 0 (the old IndexError point)
    capsys.readouterr()
    assert main(_ckl(env, env["gpt2_32"], out)) == 0  # the same command again: same hash, resumes (complete)
    assert "already complete" in capsys.readouterr().out


def test_probes_longer_than_the_context_are_refused_before_anything_is_written(env, capsys):
    out = env["root"] / "short_ctx"
    _refused(capsys, _ckl(env, env["gpt2_short"], out), out, "probe(s) need more positions", "context of",
             "longer context")


# ---------------------------------------------------------------- item 2: a warning when TL has not moved

def test_warning_when_tl_has_not_moved_after_two_epochs_names_the_lr_to_try(env, capsys):
    out = env["root"] / "stalled"
    capsys.readouterr()
    assert main(_ckl(env, env["model"], out, "--epochs", "2", "--lr", "1e-9", "--max-length", "32")) == 0
    err = capsys.readouterr().err
    warn = [l for l in err.splitlines() if l.startswith("metacl: warning:")]
    assert len(warn) == 1, err
    assert "seed 0" in warn[0] and "TL accuracy moved +0.000 in 2 epoch(s)" in warn[0] and "--lr 1e-09" in warn[0]
    assert "try --lr 1e-3" in warn[0], warn[0]  # the tiny model is far below 20M parameters


def test_no_warning_when_tl_moved_and_the_advice_follows_the_optimizer():
    from metacl.ckl.guidance import stalled_message

    rows = [{"epoch": 0, "tl_acc": 0.30}, {"epoch": 1, "tl_acc": 0.33, "train_loss": 3.0},
            {"epoch": 2, "tl_acc": 0.36, "train_loss": 2.5}]
    assert stalled_message(rows, 2, 5, "adamw", 1e-4, 1_000_000) is None  # moved 0.06
    flat = [dict(r, tl_acc=0.30) for r in rows]
    assert stalled_message(flat, 1, 5, "adamw", 1e-4, 1_000_000) is None  # not the check epoch yet
    assert "try --lr 1e-3" in stalled_message(flat, 2, 5, "adamw", 1e-4, 1_000_000)
    assert "raise --lr" in stalled_message(flat, 2, 5, "adamw", 1e-4, 500_000_000)  # a big model: no 1e-3 advice
    assert "--learned-lr" in stalled_message(flat, 2, 5, "learned", 1e-4, 1_000_000)
    assert "train loss 3.000 -> 2.500" in stalled_message(flat, 2, 5, "adamw", 1e-4, 1_000_000)
    other_seed = [dict(r, seed=1, tl_acc=0.30 + 0.05 * r["epoch"]) for r in rows]  # a resumed run reads every seed's rows
    assert stalled_message(other_seed + [dict(r, seed=0) for r in flat], 2, 5, "adamw", 1e-4, 1_000_000, seed=1) is None
    assert stalled_message(other_seed + [dict(r, seed=0) for r in flat], 2, 5, "adamw", 1e-4, 1_000_000, seed=0)


# ---------------------------------------------------------------- item 4: messages that said the wrong thing

def test_a_peft_adapter_folder_as_model_says_merge_or_pass_the_base(env, capsys):
    from peft import LoraConfig, get_peft_model

    from metacl.models.loading import load_model_and_tokenizer

    m, _ = load_model_and_tokenizer(env["model"], device="cpu")
    adapter = env["root"] / "adapter"
    get_peft_model(m, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    out = env["root"] / "o_adapter"
    _refused(capsys, _ckl(env, adapter, out), out, "PEFT adapter", "merge_and_unload", str(env["model"]))


def test_data_check_accepts_a_folder_and_refuses_one_without_split_files(env, capsys):
    capsys.readouterr()
    assert main(["data", "check", str(env["world"])]) == 0
    said = capsys.readouterr().out
    for name in ("tl.jsonl", "nf.jsonl", "meta_train.jsonl", "meta_nf.jsonl"):
        assert f"{name}: 6 rows OK" in said, said
    (env["root"] / "no_splits").mkdir()
    _refused(capsys, ["data", "check", str(env["root"] / "no_splits")], None, "holds none of the LAMA-ckl split files")


def test_out_of_another_run_names_the_options_that_differ(env, capsys):
    out = env["root"] / "first"
    assert main(_ckl(env, env["model"], out, "--max-length", "32")) == 0
    line = _refused(capsys, _ckl(env, env["model"], out, "--max-length", "32", "--lr", "0.05", "--epochs", "2"), out,
                    "holds a different run", "options differ")
    assert "lr 0.0001 -> 0.05" in line and "epochs 1 -> 2" in line, line


def test_out_pointing_at_a_users_model_folder_is_not_called_a_pretrain_run(env, capsys):
    line = _refused(capsys, _ckl(env, env["model"], env["gpt2_32"]), env["gpt2_32"], "holds a saved model")
    assert "pretrain" not in line, line


def test_ctrl_c_says_how_to_resume(env, capsys, monkeypatch):
    import metacl.ckl.protocol as protocol

    def interrupted(cfg, log=print):
        raise KeyboardInterrupt

    monkeypatch.setattr(protocol, "run_ckl", interrupted)
    capsys.readouterr()
    assert main(_ckl(env, env["model"], env["root"] / "ctrl_c")) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["metacl: interrupted; rerun the same command to resume (finished seeds and steps are kept)"], err


# ---------------------------------------------------------------- item 5: help that explains, start-up that is quick

def test_every_token_weighting_option_has_a_help_text():
    from metacl.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["meta-train"]
    tw = next(a for a in sub._actions if a.dest == "meta_command").choices["token-weighting"]
    missing = [a.option_strings[0] for a in tw._actions if a.option_strings and not (a.help or "").strip()]
    assert not missing, f"options without help: {missing}"


def test_top_level_help_lists_the_commands_without_importing_torch():
    code = ("import sys, contextlib, io\nfrom metacl.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as f: rc = main(['--help'])\n"
            "print(rc, 'torch' in sys.modules, len(sys.modules)); print(f.getvalue())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    first, help_text = res.stdout.split("\n", 1)
    rc, torch_loaded, n_modules = first.split()
    assert rc == "0" and torch_loaded == "False", res.stdout + res.stderr
    assert int(n_modules) < 200, n_modules  # was ~1200 with torch, transformers and every command module
    assert "finetune, lora and taalm" in " ".join(help_text.split())


def test_lazy_help_table_matches_the_modules_own_help():
    """COMMAND_HELP repeats each command's help so `metacl --help` needs no import: they must agree."""
    from metacl.cli.main import COMMAND_HELP, build_parser

    full = build_parser()  # every module registered for real
    lazy = build_parser(["--help"])
    sub_full = next(a for a in full._actions if a.dest == "command")
    sub_lazy = next(a for a in lazy._actions if a.dest == "command")
    real = {c.dest: c.help for c in sub_full._choices_actions}
    assert real == {c.dest: c.help for c in sub_lazy._choices_actions} == {k: v[1] for k, v in COMMAND_HELP.items()}
    assert full.format_help() == lazy.format_help()


def test_meta_train_optimizer_ends_with_a_sentence_saying_which_is_better(tmp_path, capsys):
    capsys.readouterr()
    assert main(["meta-train", "optimizer", "--out", str(tmp_path / "lo"), "--family", "toy", "--steps", "1",
                 "--inner-steps", "2", "--eval-episodes", "1", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    ev = json.loads((tmp_path / "lo" / "summary.json").read_text())["eval_heldout"]
    better = "the learned optimizer is better" if ev["learned"]["meta_loss"] < ev["adam"]["meta_loss"] else "AdamW"
    assert "lower is better" in last and better in last, last
    assert f"{ev['learned']['meta_loss']:.4f} for the learned optimizer" in last, last


# ---------------------------------------------------------------- item 6: duplicates and names

def test_a_strategy_given_twice_is_refused(env, capsys):
    out = env["root"] / "twice"
    _refused(capsys, _ckl(env, env["model"], out, "--strategy", "finetune", "finetune"), out,
             "--strategy lists finetune more than once")


def test_run_name_carries_a_non_default_optimizer(env, capsys):
    out = env["root"] / "sgd"
    capsys.readouterr()
    assert main(_ckl(env, env["model"], out, "--optimizer", "sgd", "--lr", "0.01", "--max-length", "32")) == 0
    assert json.loads((out / "summary.json").read_text())["name"] == "finetune [sgd]"
    assert "| finetune [sgd] | epoch 0" in (out / "table.md").read_text()
    capsys.readouterr()
    assert main(["ckl", "compare", str(out), str(env["root"] / "first")]) == 0
    table = capsys.readouterr().out
    assert "| finetune [sgd] |" in table and "| finetune |" in table


# ---------------------------------------------------------------- item 7: plots that point, ckl show

def _summary(epochs_tl, epochs_val, seeds=(0,)):
    from metacl.ckl.report import summarize

    rows = [{"seed": s, "epoch": e, "tl_acc": tl, "nf_acc": 0.9 - 0.01 * e, "val_acc": v,
             "train_loss": None if e == 0 else 3.0 - 0.1 * e}
            for s in seeds for e, (tl, v) in enumerate(zip(epochs_tl, epochs_val))]
    return summarize(rows)


def test_plot_marks_the_chosen_epochs_has_five_panels_integer_ticks_and_a_full_axis_option():
    import matplotlib.pyplot as plt

    from metacl.ckl.report import plot_figure

    summ = _summary([0.30, 0.31, 0.35, 0.33], [0.30, 0.34, 0.32, 0.31])  # paper epoch 2, honest epoch 1
    fig = plot_figure([("finetune", summ)])
    axes = fig.axes
    titles = [a.get_title() for a in axes]
    for t in ("To-Learn", "Not-To-Forget", "Total Knowledge", "TL_val", "training loss"):
        assert any(t in x for x in titles), titles
    tl_ax = axes[0]
    marks = {l.get_marker(): list(l.get_xdata()) for l in tl_ax.lines if l.get_linestyle() == "None"}
    assert marks == {"*": [2], "D": [1]}, marks
    ticks = [t for t in tl_ax.get_xticks() if 0 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert tl_ax.get_ylim()[1] < 0.5  # zoomed by default
    plt.close(fig)
    fig = plot_figure([("finetune", summ)], full_axis=True)
    assert fig.axes[0].get_ylim() == (0.0, 1.0) and fig.axes[1].get_ylim() == (0.0, 1.0)
    plt.close(fig)


def test_ckl_show_prints_a_finished_and_a_running_run(env, capsys, tmp_path):
    import shutil

    done = env["root"] / "first"  # written by test_out_of_another_run_names_the_options_that_differ
    if not (done / "summary.json").exists():
        assert main(_ckl(env, env["model"], done, "--max-length", "32")) == 0
    capsys.readouterr()
    assert main(["ckl", "show", str(done)]) == 0
    said = capsys.readouterr().out
    assert "finished: seeds 0" in said and "| finetune | honest (epoch by tl_val)" in said, said
    assert f"plot: {done / 'plot.png'}" in said
    running = tmp_path / "running"
    shutil.copytree(done, running)
    (running / "summary.json").unlink()
    (running / "plot.png").unlink()
    lines = (running / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text(lines[0] + "\n")  # only epoch 0 evaluated so far
    before = snapshot_dir(running)
    assert main(["ckl", "show", str(running), "--plot", str(tmp_path / "now.png")]) == 0
    said = capsys.readouterr().out
    assert "running or stopped (seed 0 at epoch 0 of 1)" in said and "plot: not written yet" in said, said
    assert (tmp_path / "now.png").stat().st_size > 0 and snapshot_dir(running) == before
    _refused(capsys, ["ckl", "show", str(env["root"] / "nowhere")], None, "does not exist")
    _refused(capsys, ["ckl", "show", str(env["world"])], None, "not a `metacl ckl run`")


# ---------------------------------------------------------------- item 8: no noise from transformers and PEFT

def test_lora_wrap_hides_only_the_is_gradient_checkpointing_warning(env):
    import warnings

    from peft import LoraConfig, get_peft_model

    from metacl.models.loading import load_model_and_tokenizer, quiet_peft_wrap

    def wrap(quiet: bool):
        m, _ = load_model_and_tokenizer(env["model"], device="cpu")
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            cfg = LoraConfig(r=2, target_modules=["q_proj"])
            if quiet:
                with quiet_peft_wrap():
                    get_peft_model(m, cfg)
            else:
                get_peft_model(m, cfg)
            warnings.warn("another FutureWarning", FutureWarning)  # not ours to hide
        return [str(w.message) for w in got]

    loud = wrap(False)
    assert any("is_gradient_checkpointing" in m for m in loud), loud  # the warning exists, so the filter is needed
    quiet = wrap(True)
    assert not any("is_gradient_checkpointing" in m for m in quiet) and "another FutureWarning" in quiet, quiet


def test_pretrain_and_lora_runs_print_no_shard_bars_nor_the_peft_warning(env, tmp_path):
    env_vars = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "always"}
    res = subprocess.run([sys.executable, "-m", "metacl", "pretrain", "--corpus", str(env["world"] / "pretrain_corpus.jsonl"),
                          "--size", "tiny", "--out", str(tmp_path / "lm"), "--steps", "2"],
                         capture_output=True, text=True, timeout=300, env=env_vars)
    assert res.returncode == 0, res.stderr
    assert "Writing model shards" not in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "metacl", *_ckl(env, tmp_path / "lm", tmp_path / "lora", "--strategy", "lora",
                                                                "--max-length", "32")],
                         capture_output=True, text=True, timeout=300, env=env_vars)
    assert res.returncode == 0, res.stderr
    assert "is_gradient_checkpointing" not in res.stderr and "Writing model shards" not in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "metacl", "meta-train", "token-weighting", "--model", str(tmp_path / "lm"),
                          "--data", str(env["world"]), "--out", str(tmp_path / "tw"), "--steps", "2", "--meta-batch", "1",
                          "--inner-steps", "1", "--val-every", "0", "--max-length", "16"],
                         capture_output=True, text=True, timeout=300, env=env_vars)
    assert res.returncode == 0, res.stderr
    assert "it/s" not in res.stderr and "Writing model shards" not in res.stderr, res.stderr  # no bars off a TTY
