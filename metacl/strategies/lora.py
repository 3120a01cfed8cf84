"""`lora`: learn the new documents in low-rank adapters, with the base model frozen.

    W x  →  W0 x + (alpha / r) · B A x        A: r × d_in, B: d_out × r (B starts at 0)

Why it is a baseline for knowledge learning: freezing W0 limits how far the model can drift
(less forgetting), at the price of capacity for new facts. Adapters go on every linear
projection of attention and MLP blocks (for Llama: q/k/v/o and gate/up/down; for GPT-2 style
models the fused Conv1D projections), found by walking the model, so any HF causal LM works.
Built with PEFT; the loop then trains exactly the adapter parameters (the only ones left with
`requires_grad=True`).
"""

from __future__ import annotations

from torch import nn

from metacl.errors import MetaclError
from metacl.strategies.base import Option, Strategy, TrainContext, register

# Output heads and embeddings are not projections inside a block: they stay frozen.
_SKIP = ("lm_head", "embed_out", "score", "wte", "wpe", "embed_tokens", "embed_positions")


def lora_target_modules(model: nn.Module) -> list[str]:
    """Short names of the linear layers inside the transformer blocks (PEFT matches suffixes)."""
    try:
        from transformers.pytorch_utils import Conv1D
        kinds: tuple[type, ...] = (nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover
        kinds = (nn.Linear,)
    names = set()
    for full, mod in model.named_modules():
        short = full.rsplit(".", 1)[-1]
        if isinstance(mod, kinds) and short not in _SKIP:
            names.add(short)
    if not names:
        raise MetaclError(f"strategy lora found no linear projections in {type(model).__name__}; "
                          "use --strategy finetune for this model")
    return sorted(names)


@register
class LoRA(Strategy):
    name = "lora"
    description = "frozen base model + PEFT LoRA adapters on every attention and MLP projection"

    def __init__(self, lora_r: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0):
        if lora_r < 1:
            raise MetaclError(f"--lora-r must be a positive integer, got {lora_r}; pass e.g. --lora-r 8")
        if lora_alpha <= 0:
            raise MetaclError(f"--lora-alpha must be positive, got {lora_alpha}; pass e.g. --lora-alpha 16")
        if not 0 <= lora_dropout < 1:
            raise MetaclError(f"--lora-dropout must be in [0, 1), got {lora_dropout}")
        self.r, self.alpha, self.dropout = int(lora_r), float(lora_alpha), float(lora_dropout)

    options = {
        "lora_r": Option('LoRA rank r'),
        "lora_alpha": Option('LoRA scale alpha; the update is alpha/r * BA'),
        "lora_dropout": Option('dropout on the LoRA input'),
    }

    def before_task(self, ctx: TrainContext) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(ctx.model, PeftModel):  # a later task keeps training the same adapters
            return
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=lora_target_modules(ctx.model), bias="none", task_type="CAUSAL_LM")
        ctx.model = get_peft_model(ctx.model, config)
        n = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
        ctx.scratch.setdefault(self.name, {})["trainable_parameters"] = n
