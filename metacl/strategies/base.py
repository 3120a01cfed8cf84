"""The strategy interface: a small set of hooks the training loop calls.

Why hooks and not subclasses of a trainer: continual-learning methods differ in *where* they
act (the batch, the per-token weights, an extra loss term, the gradient, the end of a task),
and several can act at once (`--strategy taalm recadam`). The training loop in
`metacl.ckl.train` owns the order; each strategy implements only the hooks it needs and the
loop composes them:

    for each task:          before_task(ctx)          # wrap model, snapshot, importance, ...
      for each epoch:
        for each batch:
          batch = train_batch(ctx, batch)             # mix in replay / pre-training text
          nll   = per-token NLL of ctx.model on batch (B, T), 0 on padding
          w     = product of token_weights(ctx, batch, nll) (default: the label mask)
          loss  = sum(w * nll) / sum(w) + sum(extra_loss(ctx, batch, out))
                  # / n_tokens instead of / sum(w) if a strategy's token_weight_norm is "tokens"
          loss.backward()
          before_step(ctx)                            # edit .grad: A-GEM, SPG, OSFT, ...
          optimizer.step(); after_step(ctx)
        after_epoch(ctx)                              # then TL/NF probes are evaluated
      after_task(ctx)                                 # Fisher, importance, freeze columns

The loop stores the combined weights `w` in `ctx.token_weights` before the `extra_loss` hooks, so a
loss term can act where the other strategies' weights are low (`lwf --lwf-tokens complement`).
`check_composition(strategies)` runs once when a run builds its strategies and refuses a
composition that cannot work, before anything is written.

A strategy that must not train at all (in-context learning) sets `trains = False` and
provides `probe_prefix`. Old data reaches a strategy only through `ctx.old_corpus` (the
pre-training text) and `ctx.seen_docs` (documents of earlier tasks): never the probe sets.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from metacl.core.batching import Batch  # noqa: E402,F401  (input_ids, attention_mask, labels; strategies import it from here)


@dataclass
class TrainContext:
    """Everything a strategy may read or change while the loop runs.

    `model` may be replaced in `before_task` (LoRA and adapters wrap it); the loop builds the
    optimizer *after* `before_task`, over the parameters with `requires_grad=True`.
    """

    model: nn.Module
    tokenizer: Any
    device: torch.device
    train_docs: list[str]                       # documents of the current task
    old_corpus: list[str] = field(default_factory=list)  # pre-training text (for replay-like methods)
    seen_docs: list[str] = field(default_factory=list)   # documents of earlier tasks
    optimizer: torch.optim.Optimizer | None = None
    task_index: int = 0
    epoch: int = 0
    step: int = 0
    total_steps: int = 1
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0
    generator: torch.Generator | None = None
    last_loss: float = float("nan")
    scratch: dict[str, Any] = field(default_factory=dict)  # per-strategy state, keyed by strategy name
    # the batch's combined token weights (label mask x every strategy's token_weights), detached; the loop
    # sets it before the extra_loss hooks, so a loss term can act where the weights are low (lwf's complement)
    token_weights: torch.Tensor | None = None
    _reference: nn.Module | None = None

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def reference_model(self) -> nn.Module:
        """A frozen copy of the model as it was when the current task began (LwF, RHO-1, ...)."""
        if self._reference is None:
            ref = copy.deepcopy(self.model).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self._reference = ref
        return self._reference

    def reset_reference(self) -> None:
        self._reference = None


@dataclass(frozen=True)
class Option:
    """One strategy option: its help line (and, when the default does not say it, its type).

    The default is declared once, in the strategy's `__init__` signature; `Strategy.add_args`
    turns `name -> Option` into the flag `--name-with-dashes` with that default, and
    `metacl.cli.config` shows it in `--help`.
    """

    help: str
    type: Callable[[str], Any] | None = None      # default: the type of the default value (str when None)
    choices: tuple[Any, ...] | None = None
    nargs: str | None = None
    metavar: str | None = None


class Strategy:
    """Base class with no-op hooks. Subclasses override what they need.

    Class attributes: `name` (CLI name), `description` (one line for `metacl ckl strategies`),
    `trains` (False for methods that never update weights), `needs_old_corpus`, `options` (`{init keyword: Option}`,
    prefixed with the strategy name, e.g. `ewc_lambda` -> `--ewc-lambda`). The constructor
    receives the parsed options as keyword arguments (unknown ones ignored by `from_args`).
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    options: ClassVar[dict[str, Option]] = {}
    # True for methods whose first task needs `ctx.old_corpus` (rehearsal, an importance estimate
    # on old data): a single-task `ckl run` without old text refuses them instead of silently
    # rehearsing only the new documents (or doing nothing)
    needs_old_corpus: ClassVar[bool] = False
    # how the loop normalises the token-weighted NLL: "weights" = sum(w*nll)/sum(w); "tokens" =
    # sum(w*nll)/n_tokens (weights used unnormalised; taalm sets it for a weighter meta-trained so)
    token_weight_norm: str = "weights"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        """Add this strategy's options: one flag per entry of `options`, its default read from `__init__`."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        for key, opt in cls.options.items():
            if key not in params or params[key].default is inspect.Parameter.empty:
                raise TypeError(f"strategy {cls.name}: option {key!r} needs a keyword with a default in __init__")
            default = params[key].default
            kw: dict[str, Any] = {"default": default, "help": opt.help}
            if opt.choices is not None:
                kw["choices"] = list(opt.choices)
            if opt.nargs is not None:
                kw["nargs"] = opt.nargs
            if opt.metavar is not None:
                kw["metavar"] = opt.metavar
            typ = opt.type or (type(default) if default is not None and opt.nargs is None else None)
            if typ is not None and typ is not str:
                kw["type"] = typ
            parser.add_argument("--" + key.replace("_", "-"), **kw)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Strategy":
        import inspect

        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in vars(args).items() if k in params and v is not None}
        return cls(**kwargs)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "Strategy":
        """The strategy built from an options mapping (a run's `strategy_options`, a YAML file)."""
        return cls.from_args(argparse.Namespace(**options))

    # --- hooks, in the order the loop calls them -------------------------------------
    def before_task(self, ctx: TrainContext) -> None: ...
    def train_batch(self, ctx: TrainContext, batch: Batch) -> Batch:
        return batch
    def token_weights(self, ctx: TrainContext, batch: Batch, nll: torch.Tensor) -> torch.Tensor | None:
        """(B, T) non-negative weights for the per-token NLL, or None to leave them alone."""
        return None

    def check_composition(self, strategies: "list[Strategy]") -> None:
        """Raise MetaclError if this strategy cannot act in this composition (it is one of `strategies`).

        Called once when a run builds its strategies, before anything is written."""

    def weights_tokens(self) -> bool:
        """Whether this strategy overrides `token_weights` (reweights the NLL)."""
        return type(self).token_weights is not Strategy.token_weights
    def extra_loss(self, ctx: TrainContext, batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
        return None
    def before_step(self, ctx: TrainContext) -> None: ...
    def after_step(self, ctx: TrainContext) -> None: ...
    def after_epoch(self, ctx: TrainContext) -> None: ...
    def after_task(self, ctx: TrainContext) -> None: ...
    def preflight(self, model_path: str) -> None:
        """Check this strategy's own inputs (files, paths) against the base LM before a run writes
        anything, raising a one-line MetaclError; e.g. taalm refuses a predictor built for another
        tokenizer. Default: nothing to check."""

    def probe_prefix(self, ctx: TrainContext, item: Any) -> str | None:
        """Text put before a probe at evaluation time (in-context learning); None = nothing."""
        return None

    # --- mid-task checkpoints (optional) ----------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What this strategy changes *during* a task (tensors, numbers, strings, lists, dicts).

        A resumed run rebuilds the strategy, reruns `before_task` on the fresh base model and
        then calls `load_state_dict` with this. So only state that evolves after `before_task`
        (step counters, running statistics) belongs here; what `before_task` computes from the
        base model (snapshots, Fisher, wrappers) is recomputed identically. Default: nothing.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what `state_dict` returned (after `before_task` ran again)."""


def probe_prefix_fn(strategies: list[Strategy], ctx: TrainContext) -> Callable[[Any], str | None] | None:
    """Every strategy's `probe_prefix` joined by newlines (in-context learning); None when no strategy defines one."""
    own = [s for s in strategies if type(s).probe_prefix is not Strategy.probe_prefix]
    if not own:
        return None

    def fn(item):
        parts = [p for p in (s.probe_prefix(ctx, item) for s in own) if p]
        return "\n".join(parts) if parts else None

    return fn


REGISTRY: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by `cls.name` on the CLI."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_strategy(name: str) -> type[Strategy]:
    from metacl.errors import MetaclError
    import metacl.strategies  # noqa: F401  (registers every built-in strategy)

    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise MetaclError(f"unknown strategy {name!r}; choose from: {known} (see `metacl ckl strategies`)")
    return REGISTRY[name]
