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

pytestmark = pytest.mark.usefixtures("one_thread")

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
