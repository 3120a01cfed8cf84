"""Using `LearnedOptimizer` under the Hugging Face `Trainer` without breaking its schedule.

    from metacl.optim.hf import LearnedOptimizerCallback, trainer_optimizers
    opt, sched = trainer_optimizers(model.parameters(), args)        # constant multiplier
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, sched),
                      callbacks=[LearnedOptimizerCallback()])       # total_steps from Trainer

Why: the learned optimizer's step size is meta-learned; its `lr` is only a multiplier (1.0) and
its "fraction of training done" feature needs `total_steps`. `Trainer(optimizers=(opt, None))`
attaches Trainer's default linear decay, which scales the multiplier to 0 over the run, so the
optimizer takes ever smaller steps than it was meta-trained to take (issue 15 measured the loss
falling far less under the decay; tests/test_lo_hf_trainer.py checks it). `trainer_optimizers`
returns the optimizer with a constant schedule; `total_steps` is taken from `args.max_steps` when
it is set and not given, and `LearnedOptimizerCallback` sets it from `TrainerState.max_steps` at
the start of training (which also covers epoch-based runs, where `max_steps` is computed by
Trainer) and warns when the schedule attached would decay the multiplier.

This module imports `transformers` (for `TrainerCallback`); `metacl.optim` itself does not import
this module, so the optimizer works without transformers installed.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch

from metacl.errors import MetaclError
from metacl.optim.learned import LearnedOptimizer, load_optimizer

def constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that keeps every group's lr (the learned optimizer's multiplier) where it is."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def trainer_optimizers(params: Iterable, args: Any = None, total_steps: int | None = None,
                       weights: str | None = None, **kwargs) -> tuple[LearnedOptimizer, torch.optim.lr_scheduler.LambdaLR]:
    """`(optimizer, scheduler)` to pass as `Trainer(optimizers=...)`.

    params: the model's parameters (or param groups). args: the `TrainingArguments` (optional),
    read for `max_steps`. total_steps: steps per task; None = `args.max_steps` if > 0, else set by
    `LearnedOptimizerCallback` when training starts. weights: a directory written by
    `save_pretrained`, or a shipped name (`digits`); None = the shipped default weights. kwargs go to
    `LearnedOptimizer`.
    """
    if total_steps is not None and total_steps < 1:
        raise MetaclError(f"trainer_optimizers(total_steps={total_steps}): pass the expected number of steps (>= 1) or None")
    from_trainer = total_steps is None
    if from_trainer and args is not None and getattr(args, "max_steps", -1) and args.max_steps > 0:
        total_steps = int(args.max_steps)
    kw = dict(kwargs, total_steps=total_steps)
    opt = load_optimizer(weights, params, **kw)
    opt.total_steps_given = not from_trainer  # taken from args: Trainer's own count still wins at train start
    return opt, constant_schedule(opt)


def _unwrap(opt: Any) -> Any:
    """accelerate wraps the optimizer (AcceleratedOptimizer.optimizer); find the LearnedOptimizer."""
    seen = 0
    while opt is not None and not isinstance(opt, LearnedOptimizer) and hasattr(opt, "optimizer") and seen < 4:
        opt, seen = opt.optimizer, seen + 1
    return opt


def _callback_base():
    try:
        from transformers import TrainerCallback
    except ImportError as e:  # pragma: no cover - transformers is a dependency of metacl
        raise MetaclError("LearnedOptimizerCallback needs transformers; pip install transformers") from e
    return TrainerCallback


class LearnedOptimizerCallback(_callback_base()):
    """Sets `total_steps` from Trainer's `max_steps` (unless given) and warns about decaying schedules.

    At `on_train_begin` Trainer has computed `state.max_steps` (from `max_steps` or from epochs x
    batches), so this is the first moment the number of steps is known for an epoch-based run.
    An optimizer built with an explicit `total_steps` (`LearnedOptimizer(..., total_steps=N)` or
    `trainer_optimizers(..., total_steps=N)`) keeps it.
    """

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        opt = _unwrap(optimizer)
        if not isinstance(opt, LearnedOptimizer):
            return control
        if not opt.total_steps_given and state.max_steps and state.max_steps > 0:
            opt.total_steps = int(state.max_steps)
        lambdas = getattr(lr_scheduler, "lr_lambdas", None)
        if lambdas and state.max_steps and state.max_steps > 1:
            start, end = float(lambdas[0](0)), float(lambdas[0](state.max_steps - 1))
            if start > 0 and end < 0.5 * start:
                warnings.warn(
                    f"the lr schedule attached to LearnedOptimizer takes its step multiplier from {start:.3g} to "
                    f"{end:.3g}: the meta-learned step shrinks with it; pass optimizers=trainer_optimizers(...) "
                    "or lr_scheduler_type='constant' unless the decay is wanted", stacklevel=2)
        return control
