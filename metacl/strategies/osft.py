"""OSFT: orthogonal-subspace full fine-tuning with adaptive SVD (Nayak et al., 2025).

Why: the top singular directions of a pretrained weight matrix carry most of what it computes.
Training only in their orthogonal complement lets a model learn new facts with full fine-tuning
and no extra inference parameters, while the dominant directions, and with them most old
behaviour, stay fixed.

At the start of each task, for every attention and MLP matrix W (out x in) of decoder layer l:

    W = U S V^T,  r(l) = round(full_rank * (mrr + I(l) * (trr - mrr)))      (adaptive)
                  r(l) = round(full_rank * fixed_ratio)                      (--osft-rank-mode fixed)
    P(G) = G - U_r U_r^T G - G V_r V_r^T + U_r U_r^T G V_r V_r^T  =  (I - U_r U_r^T) G (I - V_r V_r^T)

I(l) = mean cosine similarity between the hidden state entering and leaving layer l, over the
tokens of (up to --osft-docs of) the current task's documents, clipped to [0, 1]; a layer that
barely changes its input gets a larger frozen subspace, as in the paper's rule. mrr = 0.1 and
trr = 0.8 are fractions of the full rank min(out, in).

Our choice, documented: the gradient is projected in `before_step` (so Adam's moments only see
the complement) and, because Adam's per-coordinate scaling and weight decay would leak part of
the step back into the frozen subspace, the *step* itself is projected again in `after_step`:
W <- W_before + P(W - W_before). The update then has no component in span(U_r) on the left or
span(V_r) on the right, whatever the optimizer. Embeddings, norms and the LM head train freely.

Hyperparameters: --osft-rank-mode adaptive|fixed, --osft-mrr, --osft-trr, --osft-fixed-ratio,
--osft-docs.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from metacl.core.batching import doc_batches
from metacl.engine.losses import label_mask
from metacl.errors import MetaclError
from metacl.strategies.base import Strategy, TrainContext, register
from metacl.strategies.memory import sample_indices

MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Modules that hold both `self_attn` and `mlp`: the decoder layers of a Llama-style LM."""
    layers = [m for _, m in model.named_modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]
    if not layers:
        raise MetaclError("OSFT found no decoder layers with self_attn and mlp; use a Llama-style Hugging Face model")
    return layers


def layer_matrices(layer: nn.Module) -> list[nn.Linear]:
    out = []
    for parent in (layer.self_attn, layer.mlp):
        for name in MATRICES:
            lin = getattr(parent, name, None)
            if isinstance(lin, nn.Linear):
                out.append(lin)
    return out


def layer_importance(model: nn.Module, batches) -> list[float]:
    """Mean cosine similarity between each decoder layer's input and output hidden states."""
    layers = decoder_layers(model)
    sums, counts = [0.0] * len(layers), [0] * len(layers)
    current_mask: list[torch.Tensor] = []

    def hook(i):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(x.float(), y.float(), dim=-1)          # (B, T)
            m = current_mask[0].to(cos.dtype)
            sums[i] += float((cos * m).sum())
            counts[i] += int(m.sum())
        return fn

    handles = [L.register_forward_hook(hook(i), with_kwargs=True) for i, L in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                current_mask[:] = [b["attention_mask"]]
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [min(1.0, max(0.0, s / c)) if c else 0.0 for s, c in zip(sums, counts)]


def adaptive_rank(importance: float, full_rank: int, mrr: float, trr: float) -> int:
    """r = round(full_rank * (mrr + I (trr - mrr))): the frozen rank grows with layer importance."""
    return int(round(full_rank * (mrr + importance * (trr - mrr))))


def project(g: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """(I - U U^T) g (I - V V^T): remove every component in span(U) (left) or span(V) (right)."""
    g = g - U @ (U.T @ g)
    return g - (g @ V) @ V.T


@register
class OSFT(Strategy):
    name = "osft"
    description = "OSFT / adaptive SVD: full fine-tuning orthogonal to each matrix's top singular directions"

    def __init__(self, osft_rank_mode: str = "adaptive", osft_mrr: float = 0.1, osft_trr: float = 0.8,
                 osft_fixed_ratio: float = 0.5, osft_docs: int = 32):
        if osft_rank_mode not in ("adaptive", "fixed"):
            raise MetaclError(f"--osft-rank-mode must be adaptive or fixed, got {osft_rank_mode!r}")
        for flag, v in (("--osft-mrr", osft_mrr), ("--osft-trr", osft_trr), ("--osft-fixed-ratio", osft_fixed_ratio)):
            if not 0.0 <= float(v) <= 1.0:
                raise MetaclError(f"{flag} must be a fraction of the full rank in [0, 1], got {v}; pass e.g. {flag} 0.5")
        if float(osft_mrr) > float(osft_trr):
            raise MetaclError(f"--osft-mrr ({osft_mrr}) must not exceed --osft-trr ({osft_trr}); swap them")
        self.mode, self.mrr, self.trr = osft_rank_mode, float(osft_mrr), float(osft_trr)
        self.fixed_ratio, self.n_docs = float(osft_fixed_ratio), int(osft_docs)
        self.bases: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ranks: list[list[int]] = []        # per layer, per matrix (for logs and tests)
        self.importance: list[float] = []
        self._before: dict[nn.Parameter, torch.Tensor] = {}

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--osft-rank-mode", choices=["adaptive", "fixed"], default="adaptive",
                            help="frozen rank per layer from layer importance (adaptive) or a fixed ratio")
        parser.add_argument("--osft-mrr", type=float, default=0.1, help="minimum frozen rank ratio (adaptive)")
        parser.add_argument("--osft-trr", type=float, default=0.8, help="maximum frozen rank ratio (adaptive)")
        parser.add_argument("--osft-fixed-ratio", type=float, default=0.5, help="frozen rank ratio (fixed mode)")
        parser.add_argument("--osft-docs", type=int, default=32, help="documents for the layer importance")

    def before_task(self, ctx: TrainContext) -> None:
        layers = decoder_layers(ctx.model)
        if self.mode == "adaptive":
            texts = list(ctx.train_docs) or list(ctx.old_corpus)
            idx = sample_indices(len(texts), min(self.n_docs, len(texts)), ctx.generator)
            batches = doc_batches(ctx.tokenizer, [texts[i] for i in idx], ctx.batch_size, ctx.max_length, ctx.device)
            self.importance = layer_importance(ctx.model, batches)
        else:
            self.importance = [float("nan")] * len(layers)
        self.bases.clear()
        self.ranks = []
        for L, imp in zip(layers, self.importance):
            ranks = []
            for lin in layer_matrices(L):
                W = lin.weight.detach().float()
                full = min(W.shape)
                r = adaptive_rank(imp, full, self.mrr, self.trr) if self.mode == "adaptive" else int(round(full * self.fixed_ratio))
                r = max(0, min(full, r))
                ranks.append(r)
                if r == 0:
                    continue
                U, _, Vh = torch.linalg.svd(W, full_matrices=False)
                self.bases[lin.weight] = (U[:, :r].to(W.dtype).contiguous(), Vh[:r].T.contiguous())
            self.ranks.append(ranks)

    def _project_(self, p: nn.Parameter, t: torch.Tensor) -> torch.Tensor:
        U, V = self.bases[p]
        return project(t.float(), U.to(t.device), V.to(t.device)).to(t.dtype)

    def before_step(self, ctx: TrainContext) -> None:
        with torch.no_grad():
            self._before = {}
            for p in self.bases:
                if not p.requires_grad:
                    continue
                if p.grad is not None:
                    p.grad.copy_(self._project_(p, p.grad))
                self._before[p] = p.detach().clone()

    def after_step(self, ctx: TrainContext) -> None:
        with torch.no_grad():
            for p, w0 in self._before.items():
                p.copy_(w0 + self._project_(p, p - w0))
        self._before = {}
