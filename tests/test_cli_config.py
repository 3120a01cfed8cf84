"""`--config YAML` works for every command, and each run folder records the resolved config."""

import yaml

from metacl.cli.main import build_parser, main


def _leaves(parser, prefix=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, p in subs[0].choices.items():
        yield from _leaves(p, prefix + (name,))


def test_every_command_takes_config_and_shows_its_defaults():
    for cmd, p in _leaves(build_parser()):
        if p.get_default("func") is None:
            continue
        flags = {s for a in p._actions for s in a.option_strings}
        assert "--config" in flags, f"metacl {' '.join(cmd)} has no --config"
        defaults = p.get_default("_config_spec")[0]  # the real defaults, kept aside by metacl.cli.config
        for a in p._actions:
            d = defaults.get(a.dest)
            if d is not None and not isinstance(d, bool) and a.option_strings:
                assert "default" in (a.help or ""), f"metacl {' '.join(cmd)} {a.option_strings[0]}: no default in --help"


def test_yaml_gives_options_typed_flags_win_and_the_folder_records_the_result(tmp_path):
    out = tmp_path / "w"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {out}\nentities: 30\nseed: 5\noverwrite-fraction: 0.5\n")
    assert main(["data", "world", "--config", str(cfg), "--seed", "3"]) == 0  # --out from the file
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["entities"] == 30 and resolved["seed"] == 3 and resolved["overwrite_fraction"] == 0.5
    assert resolved["paraphrases"] == 4  # a default, recorded too
    again = tmp_path / "w2"
    resolved["out"] = str(again)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(resolved))
    assert main(["data", "world", "--config", str(tmp_path / "r.yaml")]) == 0  # the recorded config repeats the run
    for f in ("tl.jsonl", "nf.jsonl", "pretrain_corpus.jsonl"):
        assert (out / f).read_text() == (again / f).read_text()


def test_config_mistakes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("entites: 30\n")
    assert main(["data", "world", "--out", str(tmp_path / "x"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'entites'" in err[0] and "did you mean entities" in err[0]
    assert not (tmp_path / "x").exists()
    bad.write_text("steps: many\n")
    assert main(["meta-train", "optimizer", "--out", str(tmp_path / "y"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "steps must be an integer" in err[0]
    assert main(["data", "world", "--config", str(tmp_path / "empty.yaml")]) == 2  # missing file
    assert "does not exist" in capsys.readouterr().err
    assert main(["visualize", "--predictor", str(tmp_path), "--out", str(tmp_path / "v.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--text" in err[0]
