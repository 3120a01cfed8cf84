"""OSFT: orthogonal-subspace full fine-tuning with adaptive SVD (Nayak et al., 2025).

Why: the top singular directions of a pretrained weight matrix carry most of what it computes.
Training only in their orthogonal complement lets a model learn new facts with full fine-tuning
and no extra inference parameters, while the dominant directions, and with them most old
behaviour, stay fixed.

At the start of each task, for every attention and MLP matrix W (out x in) of decoder layer l:

    W = U S V^T,  r(W) = round(full_rank * (mrr + I(l) * (trr - mrr)))      (adaptive)
                  r(W) = round(full_rank * fixed_ratio)                      (--osft-rank-mode fixed)
    P(G) = G - U_r U_r^T G - G V_r V_r^T + U_r U_r^T G V_r V_r^T  =  (I - U_r U_r^T) G (I - V_r V_r^T)

I(l) = mean over tokens of cos(X_l, Y_l), the cosine similarity between layer l's input
activations X_l and its output activations Y_l, clipped to [0, 1]; a layer whose output stays
close to its input gets a larger frozen subspace, the paper's rule. The layers whose matrices are
decomposed are the attention and the MLP sublayers of each decoder block (X = the normed hidden
state the sublayer reads, Y = what it adds to the residual stream): q/k/v/o take the attention
sublayer's I, gate/up/down the MLP's. The residual path is left out on purpose: cos(x, x + f(x))
is close to 1 for every block of a deep residual LM and would give every matrix nearly the same
rank. The activations come from *previous-task* data, the knowledge the frozen subspace must
keep: the pre-training text (ctx.old_corpus) plus the documents of earlier tasks (ctx.seen_docs),
up to --osft-docs of them; only when a run has neither does it fall back to the current task's
documents (recorded in scratch as importance_source). mrr = 0.1 and trr = 0.8 are fractions of
the full rank min(out, in).

Our choice, documented: the gradient is projected in `before_step` (so Adam's moments only see
the complement) and, because Adam's per-coordinate scaling and weight decay would leak part of
the step back into the frozen subspace, the *step* itself is projected again in `after_step`:
W <- W_before + P(W - W_before). The update then has no component in span(U_r) on the left or
span(V_r) on the right, whatever the optimizer. Embeddings, norms and the LM head train freely.

Hyperparameters: --osft-rank-mode adaptive|fixed, --osft-mrr, --osft-trr, --osft-fixed-ratio,
--osft-docs.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from metacl.core.batching import doc_batches
from metacl.engine.losses import label_mask
from metacl.errors import MetaclError
from metacl.strategies.base import Option, Strategy, TrainContext, register
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


def layer_parts(layer: nn.Module) -> list[tuple[nn.Linear, str]]:
    """(matrix, "attn" | "mlp") for every decomposed matrix of a decoder layer, in layer_matrices' order."""
    out = []
    for part, parent in (("attn", layer.self_attn), ("mlp", layer.mlp)):
        for name in MATRICES:
            lin = getattr(parent, name, None)
            if isinstance(lin, nn.Linear):
                out.append((lin, part))
    return out


def layer_importance(model: nn.Module, batches) -> list[dict[str, float]]:
    """Per decoder layer {"attn": I, "mlp": I}: mean cosine similarity between each sublayer's
    input and output activations over the non-padding tokens of `batches`, clipped to [0, 1]."""
    layers = decoder_layers(model)
    sums = [{"attn": 0.0, "mlp": 0.0} for _ in layers]
    counts = [{"attn": 0, "mlp": 0} for _ in layers]
    current_mask: list[torch.Tensor] = []

    def hook(i, part):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(x.float(), y.float(), dim=-1)          # (B, T)
            m = current_mask[0].to(cos.dtype)
            sums[i][part] += float((cos * m).sum())
            counts[i][part] += int(m.sum())
        return fn

    handles = []
    for i, L in enumerate(layers):
        handles.append(L.self_attn.register_forward_hook(hook(i, "attn"), with_kwargs=True))
        handles.append(L.mlp.register_forward_hook(hook(i, "mlp"), with_kwargs=True))
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
    return [{p: (min(1.0, max(0.0, s[p] / c[p])) if c[p] else 0.0) for p in ("attn", "mlp")}
            for s, c in zip(sums, counts)]


def previous_task_texts(ctx: TrainContext) -> tuple[list[str], str]:
    """The text OSFT measures importance on, and where it came from."""
    texts = list(ctx.old_corpus) + list(ctx.seen_docs)
    if texts:
        return texts, "previous"
    import warnings

    warnings.warn("osft: no previous-task text (no --old-corpus, no earlier task), so the layer importance is "
                  "measured on the current task's documents; pass --old-corpus for the paper's rule", stacklevel=2)
    return list(ctx.train_docs), "current (no previous-task text)"


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
        self.importance: list[dict[str, float]] = []   # per layer, per sublayer ("attn", "mlp")
        self._before: dict[nn.Parameter, torch.Tensor] = {}

    options = {
        "osft_rank_mode": Option("frozen rank per layer from layer importance (adaptive) or a fixed ratio",
                                 choices=("adaptive", "fixed")),
        "osft_mrr": Option("minimum frozen rank ratio (adaptive)"),
        "osft_trr": Option("maximum frozen rank ratio (adaptive)"),
        "osft_fixed_ratio": Option("frozen rank ratio (fixed mode)"),
        "osft_docs": Option("previous-task documents (pre-training text, earlier tasks) for the layer importance"),
    }

    def before_task(self, ctx: TrainContext) -> None:
        layers = decoder_layers(ctx.model)
        if self.mode == "adaptive":
            texts, source = previous_task_texts(ctx)
            ctx.scratch.setdefault(self.name, {})["importance_source"] = source
            idx = sample_indices(len(texts), min(self.n_docs, len(texts)), ctx.generator)
            batches = doc_batches(ctx.tokenizer, [texts[i] for i in idx], ctx.batch_size, ctx.max_length, ctx.device)
            self.importance = layer_importance(ctx.model, batches)
        else:
            self.importance = [{"attn": float("nan"), "mlp": float("nan")} for _ in layers]
        self.bases.clear()
        self.ranks = []
        for L, imp in zip(layers, self.importance):
            ranks = []
            for lin, part in layer_parts(L):
                W = lin.weight.detach().float()
                full = min(W.shape)
                r = (adaptive_rank(imp[part], full, self.mrr, self.trr) if self.mode == "adaptive"
                     else int(round(full * self.fixed_ratio)))
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
