"""TaSL: task skill localisation and consolidation (Feng et al., ACL 2024), for full fine-tuning.

Why: fine-tuning on a new task rewrites parts of the model that earlier tasks rely on, but only
some parts. TaSL scores "skill units" for the old and the new task and, after training, builds
the model unit by unit: units only the old tasks need keep their old weights, units only the new
task needs keep the new ones, and units both need are merged.

Skill units: each decoder layer's attention block and MLP block; everything else (embeddings,
norms, LM head) is one more unit. Importance of unit u on documents D (first-order Taylor
sensitivity, as in the paper):

    s_u(D) = mean over the unit's parameters of |theta * dL_D/dtheta|,   normalised to s / max_u s

The old importance s_old is measured at task start on a sample of everything learned before:
earlier tasks' documents (`ctx.seen_docs`) and the pre-training text (`ctx.old_corpus`), so in
one-shot LAMA-ckl pre-training is the "old task"; the new importance s_new at task end on the
current documents. A unit is important for a side when its score is in that side's top
--tasl-top fraction of units. After each task, with theta_old the parameters at task start:

    old only  -> theta_u = theta_old_u
    new only  -> theta_u = theta_new_u
    otherwise -> theta_u = (s_old theta_old_u + s_new theta_new_u) / (s_old + s_new)   (shared)

When: `--tasl-consolidate task` (the paper) merges once, in `after_task`; per-epoch probes
during the task then see the unmerged model, which is fine for the task-sequence benchmark (it
evaluates after `after_task`) but makes one-shot LAMA-ckl rows equal to fine-tuning. `epoch`
merges at the end of every epoch against the same task-start weights, so every probed epoch is
a consolidated model (our variant for LAMA-ckl; it also acts as a per-epoch pull towards the old
weights).

Hyperparameters: --tasl-top (fraction of units called task-specific per side), --tasl-docs,
--tasl-consolidate task|epoch.
"""

from __future__ import annotations

import torch
from torch import nn

from metacl.core.batching import doc_batches
from metacl.errors import MetaclError
from metacl.strategies.base import Option, Strategy, TrainContext, register
from metacl.strategies.importance import gradient_importance
from metacl.strategies.memory import sample_indices

REST = "rest"


def skill_units(model: nn.Module) -> dict[str, list[str]]:
    """Unit name -> parameter names. Units: `layer{i}.attn`, `layer{i}.mlp`, and `rest`."""
    layer_prefixes = []
    for name, mod in model.named_modules():
        if hasattr(mod, "self_attn") and hasattr(mod, "mlp"):
            layer_prefixes.append(name)
    if not layer_prefixes:
        raise MetaclError("TaSL found no decoder layers (modules with self_attn and mlp); use a Llama-style model")
    units: dict[str, list[str]] = {}
    for pname, _ in model.named_parameters():
        unit = REST
        for i, pre in enumerate(layer_prefixes):
            if pname.startswith(pre + ".self_attn."):
                unit = f"layer{i}.attn"
            elif pname.startswith(pre + ".mlp."):
                unit = f"layer{i}.mlp"
        units.setdefault(unit, []).append(pname)
    return units


def unit_scores(model: nn.Module, units: dict[str, list[str]], batches, desc: str) -> dict[str, float]:
    """s_u = mean |theta * grad| over the unit's parameters, normalised by the largest unit."""
    named = [(n, p) for n, p in model.named_parameters()]
    grads = gradient_importance(model, named, batches, reduce="raw", per_example=False, progress=desc)
    params = dict(named)
    raw = {}
    for u, names in units.items():
        tot = sum(float((params[n].detach().float() * grads[n]).abs().sum()) for n in names)
        cnt = sum(params[n].numel() for n in names)
        raw[u] = tot / max(cnt, 1)
    top = max(raw.values()) if raw else 0.0
    return {u: (v / top if top > 0 else 0.0) for u, v in raw.items()}


def top_set(scores: dict[str, float], frac: float) -> set[str]:
    """Units in the top `frac` fraction by score (at least one unit when frac > 0)."""
    if frac <= 0 or not scores:
        return set()
    k = max(1, int(round(frac * len(scores))))
    return set(sorted(scores, key=lambda u: -scores[u])[:k])


def consolidate(new_model: nn.Module, old_params: dict[str, torch.Tensor], units: dict[str, list[str]],
                s_old: dict[str, float], s_new: dict[str, float], frac: float) -> dict[str, str]:
    """Rewrite `new_model` in place unit by unit; returns unit -> 'old' | 'new' | 'merged'."""
    imp_old, imp_new = top_set(s_old, frac), top_set(s_new, frac)
    params = dict(new_model.named_parameters())
    decision = {}
    with torch.no_grad():
        for u, names in units.items():
            if u in imp_old and u not in imp_new:
                decision[u] = "old"
                for n in names:
                    params[n].copy_(old_params[n])
            elif u in imp_new and u not in imp_old:
                decision[u] = "new"
            else:
                a, b = s_old.get(u, 0.0), s_new.get(u, 0.0)
                wa, wb = (0.5, 0.5) if a + b <= 0 else (a / (a + b), b / (a + b))
                decision[u] = "merged"
                for n in names:
                    params[n].copy_(wa * old_params[n].to(params[n].dtype) + wb * params[n])
    return decision


@register
class TaSL(Strategy):
    name = "tasl"
    description = "TaSL: per-task skill-unit importance; keep task-specific units, merge shared ones after each task"

    def __init__(self, tasl_top: float = 0.25, tasl_docs: int = 32, tasl_consolidate: str = "task"):
        if not 0.0 <= float(tasl_top) <= 1.0:
            raise MetaclError(f"--tasl-top must be a fraction in [0, 1], got {tasl_top}; pass e.g. --tasl-top 0.25")
        if tasl_consolidate not in ("task", "epoch"):
            raise MetaclError(f"--tasl-consolidate must be task or epoch, got {tasl_consolidate!r}")
        self.when = tasl_consolidate
        self.frac, self.n_docs = float(tasl_top), int(tasl_docs)
        self.s_old: dict[str, float] = {}
        self.old_params: dict[str, torch.Tensor] = {}
        self.last_decision: dict[str, str] = {}

    options = {
        "tasl_top": Option('fraction of units that are task-specific per side'),
        "tasl_docs": Option('documents per importance estimate'),
        "tasl_consolidate": Option('merge after the task (paper) or after every epoch (so LAMA-ckl probes see it)', choices=('task', 'epoch')),
    }

    def _batches(self, ctx: TrainContext, texts: list[str]):
        idx = sample_indices(len(texts), min(self.n_docs, len(texts)), ctx.generator)
        return doc_batches(ctx.tokenizer, [texts[i] for i in idx], ctx.batch_size, ctx.max_length, ctx.device)

    def before_task(self, ctx: TrainContext) -> None:
        units = skill_units(ctx.model)
        old_texts = list(ctx.seen_docs) + list(ctx.old_corpus)
        self.s_old = unit_scores(ctx.model, units, self._batches(ctx, old_texts), "tasl importance (old)") if old_texts else {}
        self.old_params = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}

    def _consolidate(self, ctx: TrainContext) -> None:
        if not self.s_old or not ctx.train_docs:
            return
        units = skill_units(ctx.model)
        s_new = unit_scores(ctx.model, units, self._batches(ctx, list(ctx.train_docs)), "tasl importance (new)")
        self.last_decision = consolidate(ctx.model, self.old_params, units, self.s_old, s_new, self.frac)

    def after_epoch(self, ctx: TrainContext) -> None:
        if self.when == "epoch":
            self._consolidate(ctx)

    def after_task(self, ctx: TrainContext) -> None:
        if self.when == "task":
            self._consolidate(ctx)
        self.old_params = {}

    # s_old and old_params come from the base model in before_task: recomputed on resume.
    def state_dict(self) -> dict:
        return {"last_decision": dict(self.last_decision)}

    def load_state_dict(self, state: dict) -> None:
        self.last_decision = dict(state.get("last_decision", {}))
