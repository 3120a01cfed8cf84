"""A strategy that needs old text refuses a single-task run that has none (issue 20's official track:
the LAMA-ckl folder has no pre-training corpus, and replay silently rehearsed the new documents)."""

import pytest

from metacl.cli.main import main
from tests.ckl_fixtures import ckl_args, make_tiny_ckl_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_tiny_ckl_world(tmp_path_factory.mktemp("oldc"), old_corpus=False)


@pytest.mark.parametrize("strategy", ["replay", "mix_review", "ewc"])
def test_needs_old_corpus_is_one_line_and_writes_nothing(world, strategy, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(ckl_args(world, out, "--strategy", strategy)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"strategy {strategy} needs old text" in err[0] and "--old-corpus" in err[0]
    assert not out.exists()


def test_old_corpus_file_makes_it_run_and_finetune_never_asks(world, tmp_path):
    root, _ = world
    old = tmp_path / "old.jsonl"
    old.write_text('{"text": "Ada Quill lives in Lisbon ."}\n')
    assert main(ckl_args(world, tmp_path / "r", "--strategy", "replay", "--old-corpus", str(old), "--epochs", "1")) == 0
    assert main(ckl_args(world, tmp_path / "f", "--strategy", "finetune", "--epochs", "1")) == 0
