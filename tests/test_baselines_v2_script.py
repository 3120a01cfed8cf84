"""experiments/baselines_v2.sh end to end on a tiny world: tune per strategy, final seeds, compare, records."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ckl_fixtures import make_tiny_ckl_world

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "baselines_v2.sh"


def test_script_tunes_each_strategy_runs_the_choice_on_seeds_and_compares(tmp_path):
    root, model = make_tiny_ckl_world(tmp_path, old_corpus=True)  # ewc estimates its Fisher on old text
    docs = tmp_path / "docs"
    env = dict(os.environ, METACL=f"{sys.executable} -m metacl", LRS="6e-2", EPOCHS="2", PATIENCE="1", SEEDS="0 1",
               DOCS=str(docs), OMP_NUM_THREADS="1",
               EXTRA="--batch-size 3 --max-length 10 --no-exact-match --device cpu --ewc-fisher-docs 4")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "runs"), str(root / "world"), str(model), "smoke",
                           "finetune", "ewc"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (docs / "table.md").read_text()
    for name in ("finetune", "ewc"):
        assert f"| {name} | honest (epoch by tl_val) |" in table and f"| {name} | paper (best TL test epoch) |" in table
        tune = json.loads((docs / name / "tune.json").read_text())
        assert tune["chosen"] is not None and tune["tuning_seeds"] == [0]
        assert json.loads((docs / name / "summary.json").read_text())["seeds"] == [0, 1]
    ewc = json.loads((docs / "ewc" / "tune.json").read_text())
    assert ewc["grid"] == {"lr": [0.06], "ewc_lambda": [100.0, 1000.0]}  # the script's table row for ewc
    assert json.loads((docs / "finetune" / "tune.json").read_text())["grid"] == {"lr": [0.06]}
    final = tmp_path / "runs" / "smoke" / "ewc" / "final" / "config.json"
    assert json.loads(final.read_text())["config"]["strategy_options"]["ewc_lambda"] == ewc["chosen_values"]["ewc_lambda"]
    assert "EPOCHS=2" in (docs / "command.txt").read_text()


def test_script_runs_a_strategy_with_the_learned_optimizer_over_its_multiplier(tmp_path):
    root, model = make_tiny_ckl_world(tmp_path)
    docs = tmp_path / "docs"
    env = dict(os.environ, METACL=f"{sys.executable} -m metacl", LEARNED_LRS="1,4", EPOCHS="2", PATIENCE="1",
               SEEDS="0", DOCS=str(docs), OMP_NUM_THREADS="1",
               EXTRA="--batch-size 3 --max-length 10 --no-exact-match --device cpu")
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "runs"), str(root / "world"), str(model), "smoke",
                           "finetune+learned"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tune = json.loads((docs / "finetune+learned" / "tune.json").read_text())
    assert tune["grid"] == {"learned_lr": [1.0, 4.0]}  # the multiplier replaces AdamW's lr axis
    cfg = json.loads((tmp_path / "runs" / "smoke" / "finetune+learned" / "final" / "config.json").read_text())["config"]
    assert cfg["strategies"] == ["finetune"] and cfg["optimizer"] == "learned"
    assert cfg["learned_lr"] == tune["chosen_values"]["learned_lr"]
    assert "| finetune [learned] | honest (epoch by tl_val) |" in (docs / "table.md").read_text()
