"""experiments/taalm_retention_choose.py: both rules, from run folders and from an earlier choice JSON."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "taalm_retention_choose.py"


def _run(tmp_path, name, tl, nf):
    d = tmp_path / "tune" / name
    d.mkdir(parents=True)
    honest = {"tl_acc": {"mean": tl, "values": [tl] * 3}, "val_acc": {"mean": tl, "values": [tl] * 3},
              "nf_acc": {"mean": nf, "values": [nf] * 3}, "epoch": {"mean": 5.0, "values": [5] * 3}}
    (d / "summary.json").write_text(json.dumps({"aggregate": {"honest": honest}}))


def _choose(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(Path(args[args.index("--json") + 1]).read_text())


def test_max_nf_takes_the_strongest_allowed_and_cheapest_the_least_costly_that_meets_the_nf_bar(tmp_path):
    _run(tmp_path, "taalm", 0.60, 0.40)
    _run(tmp_path, "strong", 0.58, 0.60)   # ratio 0.967, gain +0.20
    _run(tmp_path, "mild", 0.61, 0.52)     # ratio 1.017, gain +0.12
    _run(tmp_path, "weak", 0.63, 0.45)     # ratio 1.05,  gain +0.05 (below the 0.10 bar)
    _run(tmp_path, "costly", 0.50, 0.80)   # ratio 0.83: never eligible under max_nf
    first = _choose(tmp_path / "tune", "--metric", "tl_acc", "--json", tmp_path / "a.json")
    assert first["chosen"] == "strong" and not first["candidates"]["costly"]["eligible"]
    second = _choose(tmp_path / "tune", "--metric", "tl_acc", "--rule", "cheapest", "--json", tmp_path / "b.json")
    assert second["chosen"] == "mild" and not second["candidates"]["weak"]["eligible"]
    again = _choose("--from-json", tmp_path / "a.json", "--rule", "cheapest", "--json", tmp_path / "c.json")
    assert again["chosen"] == "mild" and again["metric"] == "tl_acc" and again["from"].endswith("a.json")
    assert again["candidates"]["mild"]["val_ratio"] == second["candidates"]["mild"]["val_ratio"]
