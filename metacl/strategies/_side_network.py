"""Pieces for strategies that put trainable networks *beside* a frozen causal LM (K-Adapter,
progressive networks): run the frozen LM once and read its hidden states, small causal
transformer blocks for the side network, and an HF-like output.

Why a separate module: both methods keep the pre-trained LM bit-for-bit unchanged and learn in
a network that reads its intermediate hidden states, so they need the same three things. The
side blocks use their own causal self-attention (no positional encoding of their own: the LM's
hidden states already carry position), and every position may always attend to itself, so a
left-padded probe row never has an all-masked attention row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metacl.errors import MetaclError


def inner_model(lm: nn.Module) -> nn.Module:
    """The decoder stack of an HF causal LM (`model.model` for Llama), the part that returns hidden states."""
    if getattr(lm, "side_network", False):
        raise MetaclError(f"the model is already wrapped by {type(lm).__name__}: k_adapter and progressive each put a "
                          "network beside the frozen LM and cannot be composed; run them as separate strategies")
    prefix = getattr(lm, "base_model_prefix", None)
    inner = getattr(lm, prefix, None) if prefix else None
    if inner is None or lm.get_output_embeddings() is None:
        raise MetaclError(f"{type(lm).__name__} is not a Hugging Face causal LM with a decoder stack and an LM head; "
                          "use a Llama/GPT-style model")
    return inner


def frozen_hidden_states(lm: nn.Module, input_ids, attention_mask=None, position_ids=None) -> tuple[torch.Tensor, ...]:
    """All hidden states of the frozen LM, without a graph: (embeddings, after layer 1, ..., final normed).

    Entry l (l < L) is the input of decoder layer l; the last entry is the final-norm output the LM
    head reads (HF's convention, checked for Llama in the tests).
    """
    kw = {"attention_mask": attention_mask, "output_hidden_states": True, "use_cache": False}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    with torch.no_grad():
        out = inner_model(lm)(input_ids=input_ids, **kw)
    return tuple(out.hidden_states)


def causal_mask(attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """(B, 1, T, T) bool: query t sees keys <= t that are not padding, and always itself."""
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    if attention_mask is None:
        return causal.expand(B, 1, T, T)
    keys = attention_mask.bool().view(B, 1, 1, T)
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return (causal & keys) | eye


class CausalBlock(nn.Module):
    """A pre-norm transformer block (causal self-attention + MLP), the unit of a side network."""

    def __init__(self, width: int, n_heads: int, mlp_ratio: int = 2):
        super().__init__()
        if width % n_heads:
            raise MetaclError(f"side-network width {width} is not divisible by its {n_heads} heads; pick a multiple of 16")
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, mlp_ratio * width), nn.Linear(mlp_ratio * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_heads, W // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, W))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def heads_for(width: int) -> int:
    """Heads of 16 dimensions where the width allows it, else a single head."""
    return width // 16 if width >= 16 and width % 16 == 0 else 1


def lm_output(logits: torch.Tensor, labels: torch.Tensor | None):
    """An HF-style output (`.logits`, `.loss` when labels are given: mean next-token NLL, -100 ignored)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    return CausalLMOutputWithPast(loss=loss, logits=logits)


def init_linear_(lin: nn.Linear, generator: torch.Generator | None) -> nn.Linear:
    """PyTorch's default Linear init, drawn from `generator` (reproducible per run seed)."""
    bound = 1.0 / math.sqrt(lin.in_features)
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound, generator=generator)
        if lin.bias is not None:
            lin.bias.uniform_(-bound, bound, generator=generator)
    return lin


def init_module_(module: nn.Module, generator: torch.Generator | None) -> nn.Module:
    """Re-draw every Linear of `module` from `generator`; LayerNorms stay at (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            init_linear_(m, generator)
    return module
