"""Copy a meta-training run's weights into the package as the shipped default.

    python experiments/learned_optimizer_export_default.py runs/lo_default [--allow-dirty]

Writes metacl/optim/weights/default.safetensors + default.json. The JSON keeps the run's
provenance (command, seed, held-out evaluation) plus the git state of this repository at export
time: `git_commit` (`git rev-parse HEAD`) and `dirty` (whether `git status --porcelain` lists
anything). Why refuse by default: weights are only reproducible from a *committed* tree, so the
export stops if the tree is dirty or if HEAD is not the commit the run itself recorded when it
finished; `--allow-dirty` exports anyway and writes `dirty: true` so nobody mistakes it.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from metacl.errors import MetaclError
from metacl.optim.learned import WEIGHTS_DIR, load_meta, save_meta

REPO = Path(__file__).resolve().parent.parent


def git_state(repo: Path = REPO) -> tuple[str, bool]:
    """(HEAD commit, dirty?) of `repo`; git-ignored files (runs/) do not count as dirty."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=repo, capture_output=True, text=True, check=True).stdout
    try:
        return git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.CalledProcessError) as e:
        raise MetaclError(f"cannot read the git state of {repo} ({e}); export from a git checkout of metacl") from e


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="meta-training run directory (has optimizer.safetensors/.json and summary.json)")
    ap.add_argument("--allow-dirty", action="store_true", help="export from an uncommitted tree, recorded as dirty: true")
    args = ap.parse_args(argv)
    run = Path(args.run)
    meta, cfg, info = load_meta(run)
    head, dirty = git_state()
    trained_at = info.get("git_commit")
    problems = []
    if dirty:
        problems.append(f"the tree {REPO} has uncommitted changes (git status --porcelain is not empty)")
    if trained_at != head:
        problems.append(f"the run recorded commit {trained_at} but HEAD is {head}")
    if info.get("git_dirty") is not False:  # True, or not recorded (runs from before it was)
        problems.append(f"the run does not record a clean tree at its start (git_dirty: {info.get('git_dirty')})")
    if problems and not args.allow_dirty:
        raise SystemExit("refusing to export: " + "; ".join(problems) + ". Commit, re-run meta-training from that "
                         "commit and export again, or pass --allow-dirty to export with dirty: true")
    seed = info.get("seed")
    summary = run / "summary.json"
    command = json.loads(summary.read_text()).get("command") if summary.is_file() else info.get("command")
    info = dict(info, command=command, seed=seed, source_run=str(run), git_commit=head, train_git_commit=trained_at,
                dirty=bool(problems))
    save_meta(WEIGHTS_DIR, meta, cfg, info=info, stem="default")
    print(f"wrote {WEIGHTS_DIR}/default.safetensors ({sum(v.numel() for v in meta.values())} meta-parameters), "
          f"commit {head}, dirty {bool(problems)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
