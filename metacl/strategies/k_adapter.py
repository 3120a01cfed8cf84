"""K-Adapter (Wang et al., Findings of ACL 2021): knowledge learned by adapters *outside* a frozen LM.

The pre-trained LM is frozen and never modified; beside it sits a stack of K adapter layers, each
plugged into one intermediate layer l_k of the LM:

    a_0 = 0
    a_k = a_{k-1} + Up_k( Blocks_k( Down_k( [h_{l_k} ; a_{k-1}] ) ) )      k = 1..K
    logits = lm_head( h_L + F a_K )          (F zero-initialised)

h_l is the output hidden state of LM layer l (read without a graph: the LM is only a feature
extractor), [. ; .] concatenation, Down: 2d -> m, Blocks: --k-adapter-depth causal transformer
layers of width m, Up: m -> d, with the skip connection across the two projections. As in the
paper the adapters tap the first, middle and last LM layers by default (their 0, 11, 23 of 24).
K-Adapter concatenates [h_L ; a_K] and feeds a task head; for a causal LM the task head is the
LM's own head, so the concatenation goes through a linear map whose h_L block is the identity
and whose a_K block F starts at zero: the wrapped model computes exactly the base model's
predictions before training, and every answer that changes afterwards changed through the
adapters. Why outside and not inside: the LM's hidden states, and so everything the pre-trained
model computes, stay bit-for-bit what they were; the knowledge lives in a separate module.

Adapted to CKL: one knowledge adapter (K-Adapter trains one per kind of knowledge); later tasks
of a sequence keep training the same adapter.

Hyperparameters: --k-adapter-rank (adapter width m), --k-adapter-depth (transformer layers per
adapter layer, 2 in the paper), --k-adapter-taps (how many LM layers feed adapter layers, evenly
spaced from the first to the last).
"""

from __future__ import annotations


import torch
from torch import nn

from metacl.errors import MetaclError
from metacl.strategies._side_network import (
    CausalBlock, causal_mask, frozen_hidden_states, heads_for, init_module_, inner_model, lm_output,
)
from metacl.strategies.base import Option, Strategy, TrainContext, register


def tap_layers(n_layers: int, n_taps: int) -> list[int]:
    """`n_taps` LM layer indices evenly spaced from the first to the last (0, 11, 23 for 3 of 24, the paper's)."""
    if n_taps == 1:
        return [n_layers - 1]
    return sorted({(i * (n_layers - 1)) // (n_taps - 1) for i in range(n_taps)})


class AdapterLayer(nn.Module):
    """One K-Adapter layer: concat(LM feature, previous adapter output) -> down -> blocks -> up, plus skip."""

    def __init__(self, d_model: int, width: int, depth: int):
        super().__init__()
        self.down = nn.Linear(2 * d_model, width)
        self.blocks = nn.ModuleList(CausalBlock(width, heads_for(width)) for _ in range(depth))
        self.up = nn.Linear(width, d_model)

    def forward(self, h: torch.Tensor, a_prev: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.down(torch.cat([h, a_prev], dim=-1))
        for blk in self.blocks:
            x = blk(x, mask)
        return a_prev + self.up(x)


class KAdapterLM(nn.Module):
    """A frozen causal LM plus a K-Adapter stack fed by its intermediate hidden states."""

    side_network = True   # a wrapper around a frozen LM (see _side_network.inner_model)

    def __init__(self, base: nn.Module, width: int, depth: int, n_taps: int, generator: torch.Generator | None = None):
        super().__init__()
        cfg = getattr(base, "config", None)
        d = getattr(cfg, "hidden_size", None)
        n_layers = getattr(cfg, "num_hidden_layers", None)
        inner_model(base)  # a causal LM with a decoder stack, or a one-line error
        if d is None or n_layers is None:
            raise MetaclError("k_adapter needs model.config.hidden_size and num_hidden_layers; use a Hugging Face causal LM")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.config = cfg
        self.taps = tap_layers(int(n_layers), min(int(n_taps), int(n_layers)))
        self.adapters = nn.ModuleList(AdapterLayer(d, width, depth) for _ in self.taps)
        self.fuse = nn.Linear(d, d, bias=False)
        init_module_(self.adapters, generator)
        nn.init.zeros_(self.fuse.weight)
        ref = next(base.parameters())
        self.adapters.to(device=ref.device, dtype=ref.dtype)
        self.fuse.to(device=ref.device, dtype=ref.dtype)

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **_):
        hs = frozen_hidden_states(self.base, input_ids, attention_mask, position_ids)
        B, T = input_ids.shape
        mask = causal_mask(attention_mask, B, T, input_ids.device)
        a = torch.zeros_like(hs[-1])
        for layer, adapter in zip(self.taps, self.adapters):
            a = adapter(hs[layer + 1], a, mask)                 # hs[l + 1] = output of LM layer l
        logits = self.base.get_output_embeddings()(hs[-1] + self.fuse(a))
        return lm_output(logits, labels)


@register
class KAdapter(Strategy):
    name = "k_adapter"
    description = ("K-Adapter: frozen LM, knowledge learned by an outside adapter stack fed by the LM's "
                   "intermediate hidden states")

    def __init__(self, k_adapter_rank: int = 64, k_adapter_depth: int = 2, k_adapter_taps: int = 3):
        for flag, v in (("--k-adapter-rank", k_adapter_rank), ("--k-adapter-depth", k_adapter_depth),
                        ("--k-adapter-taps", k_adapter_taps)):
            if int(v) < 1:
                raise MetaclError(f"{flag} must be >= 1, got {v}; pass e.g. {flag} 2")
        self.rank, self.depth, self.taps = int(k_adapter_rank), int(k_adapter_depth), int(k_adapter_taps)

    options = {
        "k_adapter_rank": Option("adapter width m (hidden size of the adapter layers)"),
        "k_adapter_depth": Option("transformer layers inside each adapter layer"),
        "k_adapter_taps": Option("adapter layers, fed by this many evenly spaced LM layers (first ... last)"),
    }

    def before_task(self, ctx: TrainContext) -> None:
        if not isinstance(ctx.model, KAdapterLM):
            ctx.model = KAdapterLM(ctx.model, self.rank, self.depth, self.taps, ctx.generator)
            ctx.scratch.setdefault(self.name, {})["taps"] = list(ctx.model.taps)
