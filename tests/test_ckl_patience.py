"""`ckl run --patience N`: a seed stops once tl_val has not improved for N epochs, says so, and resumes as done."""

import json
from pathlib import Path

import pytest

from ckl_fixtures import ckl_args, make_tiny_ckl_world
from metacl.cli.main import main

MEASURED = ("seconds", "peak_mem")  # wall time and memory differ run to run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_ckl_world(tmp_path_factory.mktemp("patience"))


def _args(world, out, *extra):
    """Six epochs at a learning rate too small to move any probe: tl_val is flat from epoch 1 on."""
    args = ckl_args(world, out, "--lr", "1e-9", *extra)
    args[args.index("--epochs") + 1] = "6"
    return args


def _rows(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if not any(m in k for m in MEASURED)} for r in rows),
                  key=lambda r: (r["seed"], r["epoch"]))


def test_early_stop_rule_follows_the_honest_pick():
    from metacl.ckl.protocol import early_stop

    def hist(*vals):
        return [{"epoch": e, "val_acc": v} for e, v in enumerate(vals)]

    h = hist(0.9, 0.1, 0.3, 0.3, 0.2)  # epoch 0 is not a candidate (the honest pick ignores it)
    assert early_stop(h[:3], 2, 2, 10) is None           # best so far is epoch 2
    assert early_stop(h[:4], 3, 2, 10) is None           # a tie is no improvement, 1 epoch back
    assert early_stop(h, 4, 2, 10) == "stopped: tl_val did not improve for 2 epochs"
    assert early_stop(h, 4, 3, 10) is None
    assert early_stop(h, 4, 2, 4) is None                # the last epoch: nothing left to skip
    assert early_stop(h, 4, None, 10) is None


def test_patience_stops_a_flat_run_and_says_so_resume_does_not_retrain(world, tmp_path, capsys):
    out = tmp_path / "stop"
    assert main(_args(world, out, "--patience", "1")) == 0
    printed = capsys.readouterr().out
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2], rows   # epoch 2 did not beat epoch 1: stop there
    assert rows[-1]["stopped"] == "stopped: tl_val did not improve for 1 epochs"
    assert all("stopped" not in r for r in rows[:-1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == {"0": {"epoch": 2, "reason": "stopped: tl_val did not improve for 1 epochs"}}
    assert summary["patience"] == 1
    assert summary["per_seed"]["0"]["honest"]["epoch"] == 1          # picked on the shorter curve
    assert summary["per_seed"]["0"]["paper"]["epoch"] in (1, 2)
    assert "seed 0: stopped: tl_val did not improve for 1 epochs (trained 2 of 6 epochs)" in printed
    assert not (out / "checkpoint").exists()

    # Rerun: the stopped seed is complete (no row added); a new seed runs and stops the same way.
    assert main(_args(world, out, "--patience", "1")) == 0
    assert "seed 0: already complete" in capsys.readouterr().out
    assert _rows(out) == rows
    args = _args(world, out, "--patience", "1")
    args[args.index("--seeds") + 1: args.index("--seeds") + 2] = ["0", "1"]
    assert main(args) == 0
    assert [(r["seed"], r["epoch"]) for r in _rows(out)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert set(json.loads((out / "summary.json").read_text())["stopped"]) == {"0", "1"}


def test_without_patience_every_epoch_is_trained(world, tmp_path):
    out = tmp_path / "all"
    args = _args(world, out)
    args[args.index("--epochs") + 1] = "3"
    assert main(args) == 0
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[2]["val_acc"] == rows[1]["val_acc"]  # flat: patience 1 would have stopped at epoch 2
    assert all("stopped" not in r for r in rows)
    assert json.loads((out / "summary.json").read_text())["stopped"] == {}


class _Killed(BaseException):
    """Stands for a kill: not an Exception, so no handler in metacl runs on its way out."""


def test_resume_across_the_patience_window_stops_at_the_same_epoch(world, tmp_path, monkeypatch):
    """Killed after epoch 2's checkpoint (before its probe): the resumed seed still counts epoch 1's
    tl_val from metrics.jsonl and stops at epoch 3 like the uninterrupted run."""
    import metacl.ckl.protocol as protocol

    ref, out = tmp_path / "ref", tmp_path / "cut"
    assert main(_args(world, ref, "--patience", "2")) == 0
    assert [r["epoch"] for r in _rows(ref)] == [0, 1, 2, 3]
    real_save = protocol.save_checkpoint

    def save_then_die(path, tensors, state):
        real_save(path, tensors, state)
        if state["train"]["position"]["epoch"] == 2:
            raise _Killed

    monkeypatch.setattr(protocol, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        main(_args(world, out, "--patience", "2"))
    monkeypatch.setattr(protocol, "save_checkpoint", real_save)
    assert [r["epoch"] for r in _rows(out)] == [0, 1]
    assert main(_args(world, out, "--patience", "2")) == 0
    assert _rows(out) == _rows(ref)
    assert _rows(out)[-1]["stopped"] == "stopped: tl_val did not improve for 2 epochs"


def test_bad_patience_is_one_line(world, tmp_path, capsys):
    assert main(_args(world, tmp_path / "bad", "--patience", "0")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--patience must be >= 1" in err[0]
    assert not (tmp_path / "bad").exists()
