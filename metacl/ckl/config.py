"""The options of one `metacl ckl run`, as a dataclass, plus its identity hash.

Why a hash: `--out DIR` must never silently mix two different experiments (a rerun with a
different learning rate appending to the same metrics.jsonl would corrupt both). The hash
covers every option that changes results (not the output folder, the device or progress bars);
a run refuses an output folder whose stored hash differs, and resumes one whose hash matches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from metacl.errors import MetaclError

# Options that do not change the numbers a run produces. `seeds` is left out on purpose: each
# seed's rows depend only on the other options, so a finished run can be extended with more
# seeds (`--seeds 0 1 2` after `--seeds 0`) in the same folder.
_NOT_HASHED = {"out", "device", "progress", "eval_batch_size", "seeds", "ckpt_every", "max_bad_steps", "plot_full_axis"}
# Options added later that do change results: hashed only when not at their default, so the
# folders of runs made before they existed keep their hash and still resume.
_HASHED_IF_NOT_DEFAULT = {"precision": "fp32", "patience": None}


@dataclass
class CklConfig:
    model: str = ""
    out: str = ""
    data: str | None = None
    tl: str | None = None
    nf: str | None = None
    tl_val: str | None = None
    old_corpus: str | None = None        # file of pre-training text; default: <data>/pretrain_corpus.jsonl
    strategies: list[str] = field(default_factory=lambda: ["finetune"])
    strategy_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    seeds: list[int] = field(default_factory=lambda: [0])
    optimizer: str = "adamw"
    optimizer_path: str | None = None
    learned_lr: float = 1.0
    learned_anchor_lr: float | None = None  # the learned optimizer's pull to the start at this multiplier; None = learned_lr
    learned_prime_docs: int = 0          # learned optimizer: measure its old-task importance on N old-corpus docs first
    learned_pull_scale: float | None = None  # learned optimizer meta-trained with imp_pull: factor on that pull (None = 1)
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 8
    max_length: int = 256
    eval_batch_size: int = 32
    exact_match: bool = True
    max_items: int | None = None         # use only the first N TL and NF items (quick runs)
    tl_val_fraction: float = 0.1         # carved from TL when no tl_val split exists
    device: str | None = None
    progress: bool = True
    ckpt_every: int | None = None        # training steps between mid-seed checkpoints; None = once per epoch, 0 = off
    max_bad_steps: int = 10              # stop after this many skipped (non-finite) steps; 0 = never stop
    precision: str = "fp32"              # fp32 | bf16 (autocast around forward passes, fp32 weights)
    plot_full_axis: bool = False         # plot.png accuracy panels on [0, 1] instead of zoomed to the data
    patience: int | None = None          # stop a seed when tl_val has not improved for this many epochs; None = off

    def validate(self) -> "CklConfig":
        if not self.model:
            raise MetaclError("no model given; pass --model PATH (a folder written by save_pretrained)")
        if not self.out:
            raise MetaclError("no output folder given; pass --out DIR")
        if self.data is None and (self.tl is None or self.nf is None):
            raise MetaclError("no data given; pass --data DIR, or --tl FILE and --nf FILE")
        if int(self.epochs) < 1:
            raise MetaclError(f"--epochs must be >= 1, got {self.epochs}; pass e.g. --epochs 30")
        if not self.seeds:
            raise MetaclError("no seeds given; pass e.g. --seeds 0 1 2")
        if not self.strategies:
            raise MetaclError("no strategy given; pass e.g. --strategy finetune (see `metacl ckl strategies`)")
        twice = sorted({s for s in self.strategies if list(self.strategies).count(s) > 1})
        if twice:  # `--strategy taalm taalm` would apply taalm's weights twice, silently
            raise MetaclError(f"--strategy lists {', '.join(twice)} more than once; give each strategy once "
                              f"(they compose: --strategy {' '.join(dict.fromkeys(self.strategies))})")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise MetaclError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.max_items is not None and self.max_items < 2:
            raise MetaclError(f"--max-items must be at least 2, got {self.max_items}")
        if self.optimizer in ("adamw", "sgd") and not float(self.lr) > 0:
            raise MetaclError(f"--lr must be > 0, got {self.lr}; pass e.g. --lr 1e-4")
        if self.optimizer == "learned" and not float(self.learned_lr) > 0:
            raise MetaclError(f"--learned-lr must be > 0, got {self.learned_lr}; pass e.g. --learned-lr 1")
        check_learned_anchor_lr(self.optimizer, self.learned_anchor_lr)
        if self.learned_pull_scale is not None:
            if self.optimizer != "learned":
                raise MetaclError(f"--learned-pull-scale applies to --optimizer learned only (this run uses {self.optimizer}); leave it out")
            if not float(self.learned_pull_scale) >= 0:
                raise MetaclError(f"--learned-pull-scale must be >= 0, got {self.learned_pull_scale}")
        if int(self.learned_prime_docs) != 0:
            if self.optimizer != "learned":
                raise MetaclError(f"--learned-prime-docs applies to --optimizer learned only (this run uses {self.optimizer}); leave it out")
            if int(self.learned_prime_docs) < 0:
                raise MetaclError(f"--learned-prime-docs must be >= 0 documents, got {self.learned_prime_docs}")
        if int(self.max_length) < 2:
            raise MetaclError(f"--max-length must be >= 2 tokens, got {self.max_length}")
        from metacl.ckl.optimizers import OPTIMIZERS

        if self.optimizer not in OPTIMIZERS:
            raise MetaclError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not 0 < self.tl_val_fraction < 1:
            raise MetaclError(f"tl_val_fraction must be in (0, 1), got {self.tl_val_fraction}")
        if self.ckpt_every is not None and int(self.ckpt_every) < 0:
            raise MetaclError(f"--ckpt-every must be >= 0 training steps (0 = no checkpoints), got {self.ckpt_every}")
        if int(self.max_bad_steps) < 0:
            raise MetaclError(f"--max-bad-steps must be >= 0 (0 = never stop), got {self.max_bad_steps}")
        if self.patience is not None and (isinstance(self.patience, bool) or int(self.patience) < 1):
            raise MetaclError(f"--patience must be >= 1 epochs (or left out: no early stop), got {self.patience}")
        from metacl.precision import check_precision

        check_precision(self.precision)
        return self

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _NOT_HASHED:
            d.pop(k, None)
        for k, default in _HASHED_IF_NOT_DEFAULT.items():
            if d.get(k) == default:
                d.pop(k, None)
        for k in ("model", "data", "tl", "nf", "tl_val", "old_corpus", "optimizer_path"):
            if d[k] is not None:
                d[k] = str(Path(d[k]).resolve())
        return d

    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def check_learned_anchor_lr(optimizer: str, value: float | None) -> None:
    """--learned-anchor-lr: only with the learned optimizer, and >= 0 (shared by `ckl run` and `ckl sequence`)."""
    if value is None:
        return
    if optimizer != "learned":
        raise MetaclError(f"--learned-anchor-lr applies to --optimizer learned only (this run uses {optimizer}); leave it out")
    if not float(value) >= 0:
        raise MetaclError(f"--learned-anchor-lr must be >= 0, got {value}; pass e.g. --learned-anchor-lr 1")
