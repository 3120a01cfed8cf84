"""Bad input gives ONE stderr line (what, where, how to fix), exit code 2, and leaves --out untouched.

One parametrised table drives every command in-process (`metacl.cli.main.main`) against inputs a
user really gets wrong: malformed JSONL, missing/empty fields, an object absent from its evidence,
unknown strategies/options, bad option values, a predictor or backbone with another tokenizer,
model paths that are not causal LMs, corrupt checkpoints, an --out folder holding another run,
zero/negative epochs and steps, and config files with unknown keys. For each case the test checks
the exit code, that stderr is exactly one non-empty line with the expected key words, and that the
output folder's files (names and bytes) are the same before and after. The library loaders get
the same treatment with `pytest.raises`, and one real subprocess checks the console exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metacl.cli.main import main
from metacl.errors import CheckpointError, MetaclError
from metacl.utils import snapshot_dir

PEOPLE = ["Ada Quill", "Marco Vell", "Lena Ostrow", "Piet Arno", "Sara Lund", "Tomas Reyes"]
ORGS = ["Northwind Labs", "Blue Harbor", "Northwind Labs", "Blue Harbor", "Northwind Labs", "Blue Harbor"]
CITIES = ["Port Avery", "Lisbon", "Rome", "Paris", "Oslo", "Quito"]


def _row(i, s, rel, o, ev, code="P108"):
    return {"relation_code": code, "uuid": f"u{i}", "task_descriptive": f"{s} {rel} {o} .", "subject": s,
            "relation_label": rel, "object": o, "evidence": ev}


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Every folder and file the table needs, built once (tiny models, 1-step runs)."""
    import torch

    from metacl.checkpoint import save_checkpoint
    from metacl.meta.token_weighting import TokenWeighter
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.models.pretrain import tiny_model_for_tests
    from metacl.optim.learned import LearnedOptimizer

    r = tmp_path_factory.mktemp("bad")
    e = {"root": r}
    tl = [_row(i, p, "works for", o, f"{p} works for {o} . " * 2) for i, (p, o) in enumerate(zip(PEOPLE, ORGS))]
    nf = [_row(100 + i, p, "lives in", c, f"{p} lives in {c} .", "P551") for i, (p, c) in enumerate(zip(PEOPLE, CITIES))]
    texts = [x["evidence"] for x in tl + nf]
    # a good world: ckl run data, meta-training splits, ckl sequence inputs
    w = r / "world"
    w.mkdir()
    for name, rows in (("tl", tl), ("nf", nf), ("meta_train", tl), ("meta_nf", nf)):
        _jsonl(w / f"{name}.jsonl", rows)
    _jsonl(w / "pretrain_corpus.jsonl", [{"text": t} for t in texts])
    e["world"] = w
    e["model"] = tiny_model_for_tests(r / "model", texts=texts)
    e["other_model"] = tiny_model_for_tests(r / "other_model", texts=["zq xv wk " * 5], vocab_size=300)
    # broken data files (each bad on a known line)
    good = json.dumps(tl[0])
    e["bad_json"] = _jsonl(r / "bad_json.jsonl", [good, '{"uuid": "x", "object": '])
    e["missing_field"] = _jsonl(r / "missing_field.jsonl", [{k: v for k, v in tl[1].items() if k != "object"}])
    e["empty_field"] = _jsonl(r / "empty_field.jsonl", [good, {**tl[1], "subject": "  "}])
    e["no_object"] = _jsonl(r / "no_object.jsonl", [{**tl[0], "evidence": "Ada Quill has a job ."}])
    for name, bad in (("bad_json", e["bad_json"]), ("missing_field", e["missing_field"]), ("no_object", e["no_object"])):
        d = r / f"world_{name}"  # a meta-training world whose meta_train.jsonl is broken
        d.mkdir()
        (d / "meta_train.jsonl").write_text(bad.read_text())
        (d / "meta_nf.jsonl").write_text((w / "meta_nf.jsonl").read_text())
        e[f"world_{name}"] = d
    sw = r / "world_bad_nf"  # a sequence world whose nf.jsonl line 2 is not JSON
    sw.mkdir()
    (sw / "pretrain_corpus.jsonl").write_text((w / "pretrain_corpus.jsonl").read_text())
    _jsonl(sw / "nf.jsonl", [json.dumps(nf[0]), "{oops"])
    e["world_bad_nf"] = sw
    _jsonl(r / "corpus_bad.jsonl", [{"text": "fine"}, "{not json"])
    _jsonl(r / "corpus_empty.jsonl", [{"text": "fine"}, {"text": ""}])
    # model paths that are not causal LMs
    (r / "empty_dir").mkdir()
    (r / "vit").mkdir()  # an image encoder: has a config.json, but no causal-LM class
    (r / "vit" / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8}))
    (r / "random_file.bin").write_bytes(os.urandom(64))
    pk = r / "pickle_only"  # a complete model folder whose weights exist only as a pickle
    pk.mkdir()
    for f in Path(e["model"]).iterdir():
        if f.suffix != ".safetensors":
            (pk / f.name).write_bytes(f.read_bytes())
    torch.save({"x": torch.zeros(1)}, pk / "pytorch_model.bin")
    # config files
    (r / "typo.yaml").write_text("epoch: 3\nlr: 0.01\n")
    (r / "list.yaml").write_text("- epochs\n- 3\n")
    (r / "broken.yaml").write_text("epochs: [1\n")
    (r / "bad_value.yaml").write_text("epochs: many\n")
    # token weighters: one for another tokenizer, one with a truncated head, one with broken JSON
    om, otok = load_model_and_tokenizer(e["other_model"], device="cpu")
    TokenWeighter.from_base_lm(om, otok).save_pretrained(r / "tw_other")
    m, tok = load_model_and_tokenizer(e["model"], device="cpu")
    e["tok"] = tok
    for name in ("weighter_trunc", "weighter_json"):
        TokenWeighter.from_base_lm(m, tok).save_pretrained(r / name)
    _truncate(r / "weighter_trunc" / "head.safetensors")
    (r / "weighter_json" / "token_weighter.json").write_text('{"hidden_size": 32,')
    # learned-optimizer weights, truncated / broken JSON
    p = [torch.nn.Parameter(torch.zeros(3))]
    for name in ("lo_trunc", "lo_json"):
        LearnedOptimizer(p).save_pretrained(r / name)
    _truncate(r / "lo_trunc" / "optimizer.safetensors")
    (r / "lo_json" / "optimizer.json").write_text("{")
    # real runs, one step each, then copies with damaged checkpoints
    assert main(_ckl(e, r / "ckl_done")) == 0
    assert main(_opt(r / "opt_done")) == 0
    assert main(_tw(e, r / "tw_done")) == 0
    import shutil

    for run in ("opt", "tw"):
        for how in ("trunc", "json"):
            d = r / f"{run}_{how}"
            shutil.copytree(r / f"{run}_done", d)
            if how == "trunc":
                _truncate(d / "checkpoint" / "tensors.safetensors")
            else:
                (d / "checkpoint" / "state.json").write_text('{"step": 1,')
    # ckl run: a mid-seed checkpoint of seed 1 (same run hash), damaged two ways
    cfg_hash = json.loads((r / "ckl_done" / "config.json").read_text())["hash"]
    for how in ("trunc", "json"):
        d = r / f"ckl_{how}"
        shutil.copytree(r / "ckl_done", d)
        save_checkpoint(d / "checkpoint", {"x": torch.zeros(4)}, {"hash": cfg_hash, "seed": 1})
        if how == "trunc":
            _truncate(d / "checkpoint" / "tensors.safetensors")
        else:
            (d / "checkpoint" / "state.json").write_text('{"hash": ')
    (r / "stranger").mkdir()
    (r / "stranger" / "notes.txt").write_text("someone else's files\n")
    return e


def _ckl(e, out, *extra):
    return ["ckl", "run", "--model", str(e["model"]), "--data", str(e["world"]), "--out", str(out), "--epochs", "1",
            "--seeds", "0", "--batch-size", "4", "--max-length", "16", "--max-items", "4", "--no-exact-match", *extra]


def _opt(out, *extra):
    return ["meta-train", "optimizer", "--out", str(out), "--family", "toy", "--steps", "1", "--inner-steps", "2",
            "--eval-episodes", "1", "--ckpt-every", "1", "--no-progress", *extra]


def _tw(e, out, *extra, data=None):
    return ["meta-train", "token-weighting", "--model", str(e["model"]), "--data", str(data or e["world"]),
            "--out", str(out), "--steps", "1", "--meta-batch", "1", "--inner-steps", "1", "--val-every", "0",
            "--max-length", "16", "--inner-optimizer", "sgd", *extra]


def _seq(e, out, *extra, world=None):
    return ["ckl", "sequence", "--model", str(e["model"]), "--world", str(world or e["world"]), "--out", str(out),
            "--epochs", "1", *extra]


def _pre(e, out, *extra, corpus=None):
    return ["pretrain", "--corpus", str(corpus or e["world"] / "pretrain_corpus.jsonl"), "--size", "tiny",
            "--out", str(out), "--steps", "1", *extra]


R = lambda e, name: e["root"] / name  # noqa: E731

# (id, argv(env) -> list, key words the one stderr line must contain, the --out folder to watch)
CASES = [
    # 1. malformed JSONL: file and line
    ("ckl-run-malformed-jsonl", lambda e: _ckl(e, R(e, "o1"), "--tl", str(e["bad_json"])), ["bad_json.jsonl:2", "malformed JSON"], "o1"),
    ("data-check-malformed-jsonl", lambda e: ["data", "check", str(e["bad_json"])], ["bad_json.jsonl:2", "malformed JSON"], None),
    ("tw-malformed-jsonl", lambda e: _tw(e, R(e, "o2"), data=e["world_bad_json"]), ["meta_train.jsonl:2", "malformed JSON"], "o2"),
    ("seq-malformed-jsonl", lambda e: _seq(e, R(e, "o3"), world=e["world_bad_nf"]), ["nf.jsonl:2", "malformed JSON"], "o3"),
    ("pretrain-malformed-jsonl", lambda e: _pre(e, R(e, "o4"), corpus=R(e, "corpus_bad.jsonl")), ["corpus_bad.jsonl:2", "malformed JSON"], "o4"),
    # 2. missing or empty fields: file, line, field
    ("ckl-run-missing-field", lambda e: _ckl(e, R(e, "o5"), "--tl", str(e["missing_field"])), ["missing_field.jsonl:1", "'object'", "missing"], "o5"),
    ("ckl-run-empty-field", lambda e: _ckl(e, R(e, "o6"), "--nf", str(e["empty_field"])), ["empty_field.jsonl:2", "'subject'", "empty"], "o6"),
    ("data-check-empty-field", lambda e: ["data", "check", str(e["empty_field"])], ["empty_field.jsonl:2", "'subject'"], None),
    ("tw-missing-field", lambda e: _tw(e, R(e, "o7"), data=e["world_missing_field"]), ["meta_train.jsonl:1", "'object'"], "o7"),
    ("pretrain-empty-field", lambda e: _pre(e, R(e, "o8"), corpus=R(e, "corpus_empty.jsonl")), ["corpus_empty.jsonl:2", "'text'"], "o8"),
    # 3. object absent from its evidence document: file, line, object, fix
    ("ckl-run-object-not-in-evidence", lambda e: _ckl(e, R(e, "o9"), "--tl", str(e["no_object"])),
     ["no_object.jsonl:1", "'evidence'", "'Northwind Labs'", "must state the fact"], "o9"),
    ("data-check-object-not-in-evidence", lambda e: ["data", "check", str(e["no_object"])], ["no_object.jsonl:1", "'Northwind Labs'"], None),
    ("tw-object-not-in-evidence", lambda e: _tw(e, R(e, "o10"), data=e["world_no_object"]), ["meta_train.jsonl:1", "'Northwind Labs'"], "o10"),
    # 4. unknown strategy (lists the known ones), unknown option, bad option value
    ("ckl-run-unknown-strategy", lambda e: _ckl(e, R(e, "o11"), "--strategy", "finetun"), ["unknown strategy 'finetun'", "finetune", "taalm"], "o11"),
    ("seq-unknown-strategy", lambda e: _seq(e, R(e, "o12"), "--strategies", "ewc+nope"), ["unknown strategy 'nope'", "finetune"], "o12"),
    ("ckl-run-unknown-option", lambda e: _ckl(e, R(e, "o13"), "--epoch-count", "3"),
     ["ckl run: unrecognized arguments: --epoch-count 3", "see metacl ckl run --help"], "o13"),
    ("ckl-run-bad-value", lambda e: _ckl(e, R(e, "o14"), "--lr", "fast"), ["ckl run:", "--lr", "invalid float value", "--help"], "o14"),
    ("seq-unknown-option", lambda e: _seq(e, R(e, "o15"), "--perods", "2"), ["ckl sequence:", "unrecognized arguments: --perods 2"], "o15"),
    ("tw-unknown-option", lambda e: _tw(e, R(e, "o16"), "--inner-stepz", "2"), ["meta-train token-weighting:", "--inner-stepz"], "o16"),
    ("opt-bad-choice", lambda e: _opt(R(e, "o17"), "--estimator", "magic"), ["meta-train optimizer:", "invalid choice: 'magic'"], "o17"),
    ("opt-unknown-family", lambda e: _opt(R(e, "o18"), "--family", "imagenet"), ["unknown optimizee family 'imagenet'", "digits"], "o18"),
    ("pretrain-bad-choice", lambda e: _pre(e, R(e, "o19"), "--size", "huge"), ["pretrain:", "invalid choice: 'huge'"], "o19"),
    ("data-unknown-command", lambda e: ["data", "wrld", "--out", str(R(e, "o20"))], ["data:", "invalid choice: 'wrld'"], "o20"),
    ("unknown-command", lambda e: ["trian"], ["invalid choice: 'trian'", "see metacl --help"], None),
    # 5. a predictor / backbone whose tokenizer differs from the base LM's
    ("ckl-run-taalm-other-tokenizer", lambda e: _ckl(e, R(e, "o21"), "--strategy", "taalm", "--taalm-predictor", str(R(e, "tw_other"))),
     ["tw_other", "tokenizer differs from the base LM's"], "o21"),
    ("seq-taalm-other-tokenizer", lambda e: _seq(e, R(e, "o22"), "--strategies", "taalm", "--taalm-predictor", str(R(e, "tw_other"))),
     ["tokenizer differs from the base LM's"], "o22"),
    ("tw-backbone-other-tokenizer", lambda e: _tw(e, R(e, "o23"), "--backbone", str(e["other_model"])),
     ["backbone", "other_model", "tokenizer differs"], "o23"),
    ("ckl-run-taalm-missing-predictor", lambda e: _ckl(e, R(e, "o24"), "--strategy", "taalm", "--taalm-predictor", str(R(e, "nowhere"))),
     ["nowhere", "does not exist"], "o24"),
    # 6. model path missing / not a causal LM
    ("ckl-run-model-missing", lambda e: [*_ckl(e, R(e, "o25")), "--model", str(R(e, "no_model"))],
     ["no_model", "does not exist", "save_pretrained"], "o25"),
    ("ckl-run-model-empty-dir", lambda e: [*_ckl(e, R(e, "o26")), "--model", str(R(e, "empty_dir"))], ["empty_dir", "no config.json"], "o26"),
    ("ckl-run-model-not-causal", lambda e: [*_ckl(e, R(e, "o27")), "--model", str(R(e, "vit"))], ["'vit'", "not a causal LM"], "o27"),
    ("ckl-run-model-random-file", lambda e: [*_ckl(e, R(e, "o28")), "--model", str(R(e, "random_file.bin"))], ["random_file.bin", "is a file"], "o28"),
    ("ckl-run-model-pickle-only", lambda e: [*_ckl(e, R(e, "o29")), "--model", str(R(e, "pickle_only"))], ["pickle weights", "safe_serialization"], "o29"),
    ("tw-model-not-causal", lambda e: [*_tw(e, R(e, "o30")), "--model", str(R(e, "vit"))], ["not a causal LM"], "o30"),
    ("tw-model-missing", lambda e: [*_tw(e, R(e, "o31")), "--model", str(R(e, "no_model"))], ["does not exist"], "o31"),
    ("seq-model-empty-dir", lambda e: [*_seq(e, R(e, "o32")), "--model", str(R(e, "empty_dir"))], ["no config.json"], "o32"),
    # 7. corrupt checkpoints on resume
    ("opt-resume-truncated", lambda e: _opt(R(e, "opt_trunc"), "--resume"), ["opt_trunc", "corrupt"], "opt_trunc"),
    ("opt-resume-bad-json", lambda e: _opt(R(e, "opt_json"), "--resume"), ["opt_json", "corrupt"], "opt_json"),
    ("tw-resume-truncated", lambda e: _tw(e, R(e, "tw_trunc"), "--resume"), ["tw_trunc", "corrupt"], "tw_trunc"),
    ("tw-resume-bad-json", lambda e: _tw(e, R(e, "tw_json"), "--resume"), ["tw_json", "corrupt"], "tw_json"),
    ("ckl-run-resume-truncated", lambda e: _ckl(e, R(e, "ckl_trunc"), "--seeds", "0", "1"),
     ["ckl_trunc", "corrupt"], "ckl_trunc"),
    ("ckl-run-resume-bad-json", lambda e: _ckl(e, R(e, "ckl_json"), "--seeds", "0", "1"),
     ["ckl_json", "corrupt"], "ckl_json"),
    ("ckl-run-taalm-corrupt-predictor", lambda e: _ckl(e, R(e, "o33"), "--strategy", "taalm", "--taalm-predictor", str(R(e, "weighter_json"))),
     ["token_weighter.json", "corrupt"], "o33"),
    # 8. an --out folder that holds a different run
    ("ckl-run-other-settings", lambda e: _ckl(e, R(e, "ckl_done"), "--lr", "0.05"), ["ckl_done", "holds a different run"], "ckl_done"),
    ("ckl-run-into-stranger", lambda e: _ckl(e, R(e, "stranger")), ["stranger", "not empty"], "stranger"),
    ("seq-into-ckl-run", lambda e: _seq(e, R(e, "ckl_done")), ["ckl_done", "`metacl ckl run` run"], "ckl_done"),
    ("seq-into-stranger", lambda e: _seq(e, R(e, "stranger")), ["stranger", "not empty"], "stranger"),
    ("opt-into-ckl-run", lambda e: _opt(R(e, "ckl_done")), ["ckl_done", "`metacl ckl run` run"], "ckl_done"),
    ("opt-existing-run-no-resume", lambda e: _opt(R(e, "opt_done")), ["opt_done", "already holds", "--resume"], "opt_done"),
    ("opt-resume-other-settings", lambda e: _opt(R(e, "opt_done"), "--resume", "--meta-lr", "0.1"), ["different settings", "meta_lr"], "opt_done"),
    ("opt-into-tw-run", lambda e: _opt(R(e, "tw_done")), ["`metacl meta-train token-weighting` run"], "tw_done"),
    ("tw-into-opt-run", lambda e: _tw(e, R(e, "opt_done")), ["`metacl meta-train optimizer` run"], "opt_done"),
    ("tw-existing-run-no-resume", lambda e: _tw(e, R(e, "tw_done")), ["tw_done", "already holds", "--resume"], "tw_done"),
    ("tw-resume-other-settings", lambda e: _tw(e, R(e, "tw_done"), "--resume", "--inner-lr", "0.5"), ["different settings", "inner_lr"], "tw_done"),
    ("ckl-run-out-is-a-file", lambda e: _ckl(e, R(e, "random_file.bin")), ["random_file.bin", "is a file, not a folder"], None),
    ("opt-out-is-a-file", lambda e: _opt(R(e, "random_file.bin")), ["random_file.bin", "is a file, not a folder"], None),
    ("compare-into-ckl-run", lambda e: ["ckl", "compare", str(R(e, "ckl_done")), "--out", str(R(e, "ckl_done"))],
     ["`metacl ckl run` run, not a `metacl ckl compare` run"], "ckl_done"),
    ("compare-missing-run", lambda e: ["ckl", "compare", str(R(e, "no_run")), "--out", str(R(e, "o51"))], ["no_run", "no summary.json"], "o51"),
    ("pretrain-into-ckl-run", lambda e: _pre(e, R(e, "ckl_done")), ["`metacl ckl run` run"], "ckl_done"),
    ("data-world-into-ckl-run", lambda e: ["data", "world", "--entities", "20", "--out", str(R(e, "ckl_done"))], ["`metacl ckl run` run"], "ckl_done"),
    # 9. zero/negative epochs and steps, lr <= 0: refused before anything is written
    ("ckl-run-epochs-0", lambda e: [*_ckl(e, R(e, "o34")), "--epochs", "0"], ["--epochs must be >= 1", "got 0"], "o34"),
    ("ckl-run-epochs-negative", lambda e: [*_ckl(e, R(e, "o35")), "--epochs", "-2"], ["--epochs must be >= 1"], "o35"),
    ("ckl-run-lr-0", lambda e: _ckl(e, R(e, "o36"), "--lr", "0"), ["--lr must be > 0"], "o36"),
    ("seq-epochs-0", lambda e: [*_seq(e, R(e, "o37")), "--epochs", "0"], ["--epochs", ">= 1"], "o37"),
    ("tw-steps-0", lambda e: [*_tw(e, R(e, "o38")), "--steps", "0"], ["--steps must be >= 1"], "o38"),
    ("tw-outer-lr-0", lambda e: _tw(e, R(e, "o39"), "--outer-lr", "0"), ["--outer-lr must be > 0"], "o39"),
    ("opt-steps-negative", lambda e: [*_opt(R(e, "o40")), "--steps", "-1"], ["--steps >= 0"], "o40"),
    ("opt-meta-lr-negative", lambda e: _opt(R(e, "o41"), "--meta-lr", "-0.1"), ["--meta-lr must be > 0"], "o41"),
    ("pretrain-steps-0", lambda e: [*_pre(e, R(e, "o42")), "--steps", "0"], ["--steps", "positive"], "o42"),
    ("pretrain-epochs-0", lambda e: _pre(e, R(e, "o43"), "--epochs", "0"), ["--epochs 0", "positive"], "o43"),
    ("pretrain-lr-0", lambda e: _pre(e, R(e, "o44"), "--lr", "0"), ["--lr 0", "> 0"], "o44"),
    ("data-world-too-few-entities", lambda e: ["data", "world", "--entities", "0", "--out", str(R(e, "o45"))], ["--entities 0", "at least"], "o45"),
    # 10. config files: unknown key (did you mean), not a mapping, missing
    ("ckl-run-config-unknown-key", lambda e: _ckl(e, R(e, "o46"), "--config", str(R(e, "typo.yaml"))),
     ["typo.yaml", "unknown key 'epoch'", "did you mean epochs"], "o46"),
    ("ckl-run-config-not-mapping", lambda e: _ckl(e, R(e, "o47"), "--config", str(R(e, "list.yaml"))), ["list.yaml", "mapping"], "o47"),
    ("ckl-run-config-bad-yaml", lambda e: _ckl(e, R(e, "o49"), "--config", str(R(e, "broken.yaml"))), ["broken.yaml", "not valid YAML"], "o49"),
    ("ckl-run-config-bad-value", lambda e: ["ckl", "run", "--model", str(e["model"]), "--data", str(e["world"]), "--out",
                                            str(R(e, "o50")), "--config", str(R(e, "bad_value.yaml"))],
     ["epochs must be an integer", "'many'"], "o50"),
    ("ckl-run-config-missing", lambda e: _ckl(e, R(e, "o48"), "--config", str(R(e, "nope.yaml"))), ["nope.yaml", "does not exist"], "o48"),
]


@pytest.mark.parametrize("argv_fn,words,out", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(env, capsys, argv_fn, words, out):
    argv = argv_fn(env)
    out_dir = env["root"] / out if out else None
    before = snapshot_dir(out_dir) if out_dir else None
    existed = out_dir.exists() if out_dir else None
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("metacl: error: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    if out_dir is not None:
        assert out_dir.exists() == existed, f"{out_dir} was created by a refused command"
        assert snapshot_dir(out_dir) == before, f"{out_dir} changed although the command was refused"


def test_fixture_runs_are_resumable_so_refusals_are_real(env, capsys):
    """The damaged copies above differ from working runs only in the damage: the originals resume."""
    assert main(_opt(env["root"] / "opt_done", "--resume", "--steps", "2")) == 0
    assert main(_ckl(env, env["root"] / "ckl_done")) == 0  # same options: accepted, seed 0 already complete
    capsys.readouterr()


def test_library_loaders_refuse_bad_files_with_one_line(env):
    import torch

    from metacl.meta.token_weighting import TokenWeighter
    from metacl.optim.learned import LearnedOptimizer

    r, tok = env["root"], env["tok"]
    p = [torch.nn.Parameter(torch.zeros(3))]
    cases = [
        (lambda: TokenWeighter.from_pretrained(r / "tw_other", base_tokenizer=tok), MetaclError, "tokenizer differs"),
        (lambda: TokenWeighter.from_pretrained(r / "weighter_trunc"), CheckpointError, "corrupt"),
        (lambda: TokenWeighter.from_pretrained(r / "weighter_json"), CheckpointError, "corrupt"),
        (lambda: TokenWeighter.from_pretrained(r / "empty_dir"), MetaclError, "not a token weighter"),
        (lambda: TokenWeighter.from_model_path(env["other_model"], tok), MetaclError, "tokenizer differs"),
        (lambda: LearnedOptimizer.from_pretrained(r / "lo_trunc", p), CheckpointError, "corrupt"),
        (lambda: LearnedOptimizer.from_pretrained(r / "lo_json", p), CheckpointError, "corrupt"),
        (lambda: LearnedOptimizer.from_pretrained(r / "empty_dir", p), CheckpointError, "not found"),
    ]
    for fn, exc, word in cases:
        with pytest.raises(exc) as ei:
            fn()
        msg = str(ei.value)
        assert word in msg and "\n" not in msg, msg


def test_argparse_errors_are_one_line_for_every_subcommand(capsys):
    """Every (sub)parser's error is the one-line form naming its command."""
    for argv, cmd in ((["ckl", "compare"], "ckl compare"), (["data", "check"], "data check"),
                      (["meta-train", "optimizer"], "meta-train optimizer"), (["pretrain"], "pretrain"),
                      (["demo", "--bogus"], "demo")):
        assert main(argv) == 2
        lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"metacl: error: {cmd}: ") and \
            lines[0].endswith(f"(see metacl {cmd} --help)"), lines
    assert main(["--version"]) == 0 and main(["ckl", "strategies"]) == 0  # normal exits stay 0


def test_console_exit_code_is_2_in_a_real_process(tmp_path):
    """`python -m metacl` (what the `metacl` script runs) exits 2 with one line for bad input."""
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "metacl", "ckl", "run", "--model", str(tmp_path / "missing"),
                          "--data", str(tmp_path), "--out", str(out), "--epochs", "0"],
                         capture_output=True, text=True, timeout=120)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "--epochs must be >= 1" in lines[0], res.stderr
    assert not out.exists()
