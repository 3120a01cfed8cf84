"""`metacl demo` with tiny sizes: every step runs, writes its outputs, and a rerun skips them."""

from metacl.cli.main import main


def test_demo_tiny_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--entities", "20", "--epochs", "1", "--size", "tiny", "--pretrain-steps", "3",
            "--meta-steps", "2"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    for f in ("world/tl.jsonl", "base_lm/config.json", "runs/finetune/summary.json", "runs/lora/summary.json",
              "runs/taalm/summary.json", "table.md", "plot.png"):
        assert (out / f).is_file(), f
    assert "| finetune |" in first and "| lora |" in first and "| taalm |" in first
    import json
    assert json.loads((out / "world" / "world.json").read_text())["world_version"] == 2  # the default world, as `data world`
    assert main(argv) == 0
    second = capsys.readouterr().out
    # world, base_lm, token_weighter, finetune, lora, taalm; compare always reruns
    assert second.count("done already") == 6
    assert "| lora |" in second


def test_demo_rejects_bad_epochs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
