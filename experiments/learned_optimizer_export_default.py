"""Copy a meta-training run's weights into the package as the shipped default.

    python experiments/learned_optimizer_export_default.py runs/lo_default

Writes metacl/optim/weights/default.safetensors + default.json. The JSON keeps the run's
provenance (command, seed, git commit, held-out evaluation) so `LearnedOptimizer.pretrained()`
weights can always be traced back to the command that made them.
"""

import sys
from pathlib import Path

from metacl.optim.learned import WEIGHTS_DIR, load_meta, save_meta


def main(argv=None) -> int:
    run = Path((argv or sys.argv[1:])[0])
    meta, cfg, info = load_meta(run)
    info = dict(info, source_run=str(run))
    save_meta(WEIGHTS_DIR, meta, cfg, info=info, stem="default")
    print(f"wrote {WEIGHTS_DIR}/default.safetensors ({sum(v.numel() for v in meta.values())} meta-parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
