"""The GPU check script runs end to end as a CPU dry run (`--device cpu --tiny`).

Why: the GPU check is run on a short lease with no internet; a broken flag, import or
report there costs the whole lease. The dry run goes through every section with tiny sizes
and must leave a JSON and a markdown report whose sections all say ok.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(tmp_path),
                           "--budget-s", "1200"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["sections"]) == {"env", "tests", "bench_engine_5m", "meta_134m", "lo_100m"}
    assert all(s["status"] == "ok" for s in report["sections"].values()), report["sections"]
    be = report["sections"]["bench_engine_5m"]["result"]
    assert {"hf_plain_step", "hf_meta2_k1", "hf_per_example_m8"} <= set(be)
    assert all(r["seconds_min"] > 0 and r["precision"] == "bf16" for r in be.values())
    meta = report["sections"]["meta_134m"]["result"]
    assert [r["row"] for r in meta["rows"]] == ["plain", "meta2_k2"] and meta["rows"][1]["fraction_of_plain"] > 0
    assert report["sections"]["lo_100m"]["result"]["learned"]["step_s_min"] > 0
    assert "passed" in report["sections"]["tests"]["result"]["summary"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| bench_engine_5m | ok |" in md and "fraction of plain" in md


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--device", "cuda", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "sees no CUDA device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "gpu_check.json").exists()
