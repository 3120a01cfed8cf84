"""Progressive networks (Rusu et al., 2016): a new column per task, lateral connections, old columns frozen.

Column 0 is the pre-trained LM, frozen. Task k adds column k: a stack of L causal transformer
blocks of width w (one per LM layer), whose layer l reads its own previous layer and, through
lateral connections, layer l-1 of *every* earlier column:

    s^k_0     = 0
    s^k_{l+1} = Block^k_l( s^k_l + sum_{j<k} A^k_{l,j} s^j_l )        l = 0..L-1
    s^0_l     = the LM's hidden state entering its layer l (s^0_0 = the embeddings)

    o^0 = the LM's final hidden state,   o^k = o^{k-1} + U^k LN(s^k_L),   logits = lm_head(o^K)

A^k_{l,j} are linear laterals (d -> w from the LM, w -> w from earlier columns), U^k starts at
zero. At task k only column k (its blocks, laterals and U^k) trains; the LM and columns
1..k-1 are frozen and stay bit-identical, so what an earlier column computes can never be
overwritten, only reused through the laterals.

Adapted to LMs and task-free CKL probes: a column is a narrow side network (width w) rather
than a full copy of the LM, and it predicts through the frozen LM head; the probes read the
newest column, whose output starts as the previous column's output (o^{k-1} enters o^k through
a fixed identity lateral), so adding a column changes no answer until it has learned something.

Hyperparameters: --progressive-width (width w of each new column).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from metacl.errors import MetaclError
from metacl.strategies._side_network import (
    CausalBlock, causal_mask, frozen_hidden_states, heads_for, init_module_, inner_model, lm_output,
)
from metacl.strategies.base import Option, Strategy, TrainContext, register


class Column(nn.Module):
    """One task's column: L blocks, laterals from every earlier column's previous layer, an output map."""

    def __init__(self, d_model: int, width: int, n_layers: int, n_earlier: int):
        super().__init__()
        self.blocks = nn.ModuleList(CausalBlock(width, heads_for(width)) for _ in range(n_layers))
        # laterals[l][j]: column j's layer-l state -> this column's layer l (j = 0 is the LM)
        self.laterals = nn.ModuleList(
            nn.ModuleList(nn.Linear(d_model if j == 0 else width, width, bias=False) for j in range(n_earlier))
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, d_model, bias=False)

    def forward(self, earlier: list[list[torch.Tensor]], mask: torch.Tensor) -> list[torch.Tensor]:
        """States s_0..s_L of this column, given each earlier column's states (earlier[j][l])."""
        s = torch.zeros(*earlier[0][0].shape[:2], self.norm.normalized_shape[0],
                        dtype=earlier[0][0].dtype, device=earlier[0][0].device)
        states = [s]
        for l, (blk, lats) in enumerate(zip(self.blocks, self.laterals)):
            x = s
            for j, lat in enumerate(lats):
                x = x + lat(earlier[j][l])
            s = blk(x, mask)
            states.append(s)
        return states


class ProgressiveLM(nn.Module):
    """The frozen LM as column 0 plus progressive columns; predictions come from the newest column."""

    side_network = True   # a wrapper around a frozen LM (see _side_network.inner_model)

    def __init__(self, base: nn.Module, width: int):
        super().__init__()
        cfg = getattr(base, "config", None)
        inner_model(base)
        if getattr(cfg, "hidden_size", None) is None or getattr(cfg, "num_hidden_layers", None) is None:
            raise MetaclError("progressive needs model.config.hidden_size and num_hidden_layers; use a Hugging Face causal LM")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base, self.config, self.width = base, cfg, int(width)
        self.d_model, self.n_layers = int(cfg.hidden_size), int(cfg.num_hidden_layers)
        self.columns = nn.ModuleList()

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def add_column(self, generator: torch.Generator | None = None) -> Column:
        """Freeze every existing column and append a new trainable one (silent: U = 0)."""
        for p in self.columns.parameters():
            p.requires_grad_(False)
        col = Column(self.d_model, self.width, self.n_layers, 1 + len(self.columns))
        init_module_(col, generator)
        nn.init.zeros_(col.out.weight)
        ref = next(self.base.parameters())
        col.to(device=ref.device, dtype=ref.dtype)
        self.columns.append(col)
        return col

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, **_):
        hs = frozen_hidden_states(self.base, input_ids, attention_mask, position_ids)
        B, T = input_ids.shape
        mask = causal_mask(attention_mask, B, T, input_ids.device)
        states = [list(hs[: self.n_layers])]      # column 0: the input of each LM layer
        o = hs[-1]                                # the LM's final (normed) hidden state
        for k, col in enumerate(self.columns):
            frozen = k < len(self.columns) - 1
            with torch.no_grad() if frozen else contextlib.nullcontext():
                s = col(states, mask)
                o = o + col.out(col.norm(s[-1]))
            states.append(s[: self.n_layers])
        return lm_output(self.base.get_output_embeddings()(o), labels)


@register
class Progressive(Strategy):
    name = "progressive"
    description = ("progressive networks: a new column per task beside the frozen LM, lateral connections from "
                   "every earlier column; LM and old columns frozen")

    def __init__(self, progressive_width: int = 32):
        if int(progressive_width) < 1:
            raise MetaclError(f"--progressive-width must be >= 1, got {progressive_width}; pass e.g. --progressive-width 32")
        self.width = int(progressive_width)

    options = {"progressive_width": Option("width of each new column")}

    def before_task(self, ctx: TrainContext) -> None:
        if not isinstance(ctx.model, ProgressiveLM):
            ctx.model = ProgressiveLM(ctx.model, self.width)
        ctx.model.add_column(ctx.generator)
        ctx.scratch.setdefault(self.name, {})["columns"] = len(ctx.model.columns)
