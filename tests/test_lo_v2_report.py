"""experiments/lo_v2_report.py: the learned-optimizer table's arithmetic (deltas, closure, the goal) on
hand-made run folders, and that a tune folder is read through its chosen point's `final/` run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(d: Path, tl_by_epoch, nf_by_epoch, val_by_epoch, seeds=(0, 1, 2)):
    d.mkdir(parents=True)
    with open(d / "metrics.jsonl", "w") as f:
        for s in seeds:
            for e, (tl, nf, val) in enumerate(zip(tl_by_epoch, nf_by_epoch, val_by_epoch)):
                f.write(json.dumps({"seed": s, "epoch": e, "tl_acc": tl, "nf_acc": nf, "val_acc": val}) + "\n")


def _tune(d: Path, **final):
    _run(d / "final", **final)
    (d / "tune.json").write_text(json.dumps({"final": "final", "grid": {"lr": [1e-3, 3e-3]}, "tuning_seeds": [0],
                                             "rule": "tl_val", "chosen_values": {"lr": 1e-3},
                                             "chosen_flags": "--lr 0.001"}))


def test_report_rows_closure_and_goal(tmp_path):
    # honest epoch = argmax val_acc over epochs >= 1; adamw picks epoch 2, learned epoch 1
    _tune(tmp_path / "adamw", tl_by_epoch=[0.1, 0.3, 0.4], nf_by_epoch=[0.8, 0.6, 0.5], val_by_epoch=[0.1, 0.2, 0.5])
    _tune(tmp_path / "learned", tl_by_epoch=[0.1, 0.45, 0.3], nf_by_epoch=[0.8, 0.7, 0.4], val_by_epoch=[0.1, 0.6, 0.2])
    _run(tmp_path / "oracle", tl_by_epoch=[0.1, 0.5, 0.6], nf_by_epoch=[0.8, 0.6, 0.55], val_by_epoch=[0.1, 0.2, 0.7])
    out = tmp_path / "table"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "lo_v2_report.py"), "--out", str(out),
                    f"adamw={tmp_path / 'adamw'}", f"learned={tmp_path / 'learned'}", f"oracle={tmp_path / 'oracle'}"],
                   check=True, capture_output=True, text=True)
    s = json.loads((out / "summary.json").read_text())
    rows = {r["row"]: r for r in s["rows"]["honest"]}
    assert abs(rows["learned"]["tl_minus_adamw"] - 0.05) < 1e-9 and abs(rows["learned"]["nf_minus_adamw"] - 0.2) < 1e-9
    assert abs(rows["learned"]["closure"] - 0.05 / 0.2) < 1e-9 and rows["oracle"]["closure"] == 1.0
    assert s["goal"]["tl_ok"] and s["goal"]["nf_ok"] and s["goal"]["met"]
    assert (out / "tune" / "adamw.json").is_file() and (out / "plot.png").is_file()
    assert "closure" in (out / "table.md").read_text()
