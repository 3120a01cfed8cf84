"""DAS: unit-level soft masking of attention heads and FFN neurons (Ke et al., ICLR 2023).

Why units and not parameters: knowledge in a transformer lives in heads and neurons; slowing a
whole unit keeps its function intact, while SPG's per-parameter masks can half-protect it.

Virtual masks. For every decoder layer, a vector m_head (one entry per attention head) is
multiplied into the head outputs (the input of `o_proj`), and m_ffn (one entry per FFN neuron)
into the FFN activations (the input of `down_proj`). All entries are 1, so the model is
unchanged; their gradients say how much the loss depends on each unit:

    g_u      = mean over batches of dL/dm_u           (signed; first-order effect of removing u)
    imp_t    = |tanh((g - mean_l g) / std_l g)|       standardised per layer and unit type
    imp      = max(imp, imp_t)                        accumulated over tasks
    grad(theta_u) <- (1 - imp_u) * grad(theta_u)      for all parameters of unit u

A head's parameters are its rows of q/k/v_proj (a key/value head shared by a group of query
heads takes the group's largest importance) and its columns of o_proj; a neuron's parameters are
its rows of gate_proj/up_proj and its column of down_proj.

First domain: the knowledge already in the LM has no loss to differentiate, so DAS uses a proxy:
the KL divergence between the next-token distributions of two forward passes with dropout
(p = --das-dropout) applied to the unit activations. Robust units give a small KL gradient.
As in the paper the proxy runs on the current domain's documents (--das-proxy-source current);
`old` uses a sample of the pre-training text instead. Llama has no dropout layers of its own,
which is why the dropout sits in the mask hooks.

As for SPG (see `metacl.strategies.spg`), Adam cancels a constant per-coordinate gradient
scale, so `--das-mask step` (default) scales each unit's optimizer step by (1 - imp_u) instead;
`--das-mask grad` scales the gradient as written above.

Hyperparameters: --das-docs (documents per estimate), --das-dropout, --das-proxy-source,
--das-mask step|grad.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metacl.core.batching import doc_batches
from metacl.engine.losses import label_mask
from metacl.errors import MetaclError
from metacl.strategies.base import Strategy, TrainContext, register
from metacl.strategies.importance import mean_nll
from metacl.strategies.memory import sample_indices


@dataclass
class UnitLayer:
    """The attention and MLP modules of one decoder layer, with the unit counts."""

    attn: nn.Module
    mlp: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_neurons: int


def unit_layers(model: nn.Module) -> list[UnitLayer]:
    """Decoder layers of a Llama-style model (q/k/v/o_proj attention, gate/up/down_proj MLP)."""
    cfg = getattr(model, "config", None)
    n_heads = getattr(cfg, "num_attention_heads", None)
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    layers = []
    for _, mod in model.named_modules():
        attn, mlp = getattr(mod, "self_attn", None), getattr(mod, "mlp", None)
        if attn is None or mlp is None or not all(hasattr(attn, k) for k in ("q_proj", "k_proj", "v_proj", "o_proj")):
            continue
        if not all(hasattr(mlp, k) for k in ("gate_proj", "up_proj", "down_proj")):
            continue
        if n_heads is None:
            raise MetaclError("DAS needs model.config.num_attention_heads; use a Llama-style Hugging Face model")
        layers.append(UnitLayer(attn, mlp, n_heads, n_kv, attn.o_proj.in_features // n_heads, mlp.down_proj.in_features))
    if not layers:
        raise MetaclError("DAS found no Llama-style decoder layers (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj); "
                          "use a Llama/Mistral/Qwen-style model or another strategy")
    return layers


class VirtualMasks:
    """Ones-valued masks multiplied into head outputs and FFN activations via forward pre-hooks."""

    def __init__(self, layers: list[UnitLayer], device, dropout: float = 0.0):
        self.layers, self.dropout = layers, dropout
        self.head = [torch.ones(L.n_heads, device=device, requires_grad=True) for L in layers]
        self.ffn = [torch.ones(L.n_neurons, device=device, requires_grad=True) for L in layers]
        self._handles: list = []

    def _hook(self, mask: torch.Tensor, repeat: int):
        def pre(module, args):
            x = args[0]
            m = mask.repeat_interleave(repeat) if repeat > 1 else mask
            x = x * m.to(x.dtype)
            if self.dropout > 0:
                x = F.dropout(x, self.dropout, training=True)
            return (x,) + tuple(args[1:])
        return pre

    def __enter__(self) -> "VirtualMasks":
        for L, mh, mf in zip(self.layers, self.head, self.ffn):
            self._handles.append(L.attn.o_proj.register_forward_pre_hook(self._hook(mh, L.head_dim)))
            self._handles.append(L.mlp.down_proj.register_forward_pre_hook(self._hook(mf, 1)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def zero_grad(self) -> None:
        for m in self.head + self.ffn:
            m.grad = None


def _standardised_tanh(v: torch.Tensor) -> torch.Tensor:
    if v.numel() < 2 or v.std() == 0:
        return torch.zeros_like(v)
    return torch.tanh((v - v.mean()) / v.std()).abs()


def proxy_kl_loss(model: nn.Module, batch) -> torch.Tensor:
    """KL(p1 || p2) between two dropout passes, averaged over next-token positions."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    lp1 = F.log_softmax(model(**kw).logits[:, :-1].float(), -1)
    lp2 = F.log_softmax(model(**kw).logits[:, :-1].float(), -1)
    kl = (lp1.exp() * (lp1 - lp2)).sum(-1)
    m = label_mask(batch)[:, 1:]
    return (kl * m).sum() / m.sum().clamp_min(1.0)


def unit_importance(model: nn.Module, layers: list[UnitLayer], batches, proxy: bool, dropout: float):
    """Per-layer (head, neuron) importance in [0, 1) from virtual-mask gradients."""
    masks = VirtualMasks(layers, next(model.parameters()).device, dropout if proxy else 0.0)
    g_head = [torch.zeros(L.n_heads) for L in layers]
    g_ffn = [torch.zeros(L.n_neurons) for L in layers]
    was_training = model.training
    model.eval()
    n = 0
    with masks, torch.enable_grad():
        for b in batches:
            loss = proxy_kl_loss(model, b) if proxy else mean_nll(model, b)
            grads = torch.autograd.grad(loss, masks.head + masks.ffn, allow_unused=True)
            for i in range(len(layers)):
                if grads[i] is not None:
                    g_head[i] += grads[i].detach().cpu()
                if grads[len(layers) + i] is not None:
                    g_ffn[i] += grads[len(layers) + i].detach().cpu()
            n += 1
    model.train(was_training)
    n = max(n, 1)
    return [_standardised_tanh(g / n) for g in g_head], [_standardised_tanh(g / n) for g in g_ffn]


def unit_param_scales(layers: list[UnitLayer], imp_head, imp_ffn) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, broadcastable 1 - importance) pairs covering every parameter of every unit."""
    out = []
    for L, ih, iff in zip(layers, imp_head, imp_ffn):
        keep_q = (1 - ih).repeat_interleave(L.head_dim)                       # one per q/o row/column
        group = L.n_heads // L.n_kv_heads
        ikv = ih.view(L.n_kv_heads, group).amax(1) if group > 1 else ih
        keep_kv = (1 - ikv).repeat_interleave(L.head_dim)
        keep_f = 1 - iff
        a, m = L.attn, L.mlp
        for lin, keep, dim in ((a.q_proj, keep_q, 0), (a.k_proj, keep_kv, 0), (a.v_proj, keep_kv, 0),
                               (a.o_proj, keep_q, 1), (m.gate_proj, keep_f, 0), (m.up_proj, keep_f, 0),
                               (m.down_proj, keep_f, 1)):
            w = lin.weight
            out.append((w, keep.view(-1, 1) if dim == 0 else keep.view(1, -1)))
            if dim == 0 and getattr(lin, "bias", None) is not None:
                out.append((lin.bias, keep))
    return out


@register
class DAS(Strategy):
    name = "das"
    description = "DAS: soft-mask attention heads and FFN neurons by importance from virtual-mask gradients"

    def __init__(self, das_docs: int = 64, das_dropout: float = 0.1, das_proxy_source: str = "current",
                 das_mask: str = "step"):
        if das_mask not in ("step", "grad"):
            raise MetaclError(f"--das-mask must be step or grad, got {das_mask!r}")
        self.mask = das_mask
        self._before: list[torch.Tensor] = []
        if int(das_docs) < 1:
            raise MetaclError(f"--das-docs must be >= 1, got {das_docs}; pass e.g. --das-docs 64")
        if not 0.0 < float(das_dropout) < 1.0:
            raise MetaclError(f"--das-dropout must be in (0, 1), got {das_dropout}; pass e.g. --das-dropout 0.1")
        if das_proxy_source not in ("current", "old"):
            raise MetaclError(f"--das-proxy-source must be current or old, got {das_proxy_source!r}")
        self.n_docs, self.dropout, self.proxy_source = int(das_docs), float(das_dropout), das_proxy_source
        self.imp_head: list[torch.Tensor] | None = None
        self.imp_ffn: list[torch.Tensor] | None = None
        self._scales: list[tuple[nn.Parameter, torch.Tensor]] = []

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--das-docs", type=int, default=64, help="documents per DAS importance estimate")
        parser.add_argument("--das-dropout", type=float, default=0.1, help="dropout of the two proxy-KL passes")
        parser.add_argument("--das-proxy-source", choices=["current", "old"], default="current",
                            help="documents for the first-domain proxy: current task (paper) or pre-training text")
        parser.add_argument("--das-mask", choices=["step", "grad"], default="step",
                            help="scale each unit's optimizer step (default; works with Adam) or its gradient")

    def _batches(self, ctx: TrainContext, texts):
        idx = sample_indices(len(texts), min(self.n_docs, len(texts)), ctx.generator)
        return doc_batches(ctx.tokenizer, [texts[i] for i in idx], ctx.batch_size, ctx.max_length, ctx.device)

    def set_importance(self, layers, imp_head, imp_ffn) -> None:
        """Accumulate by elementwise max and rebuild the per-parameter gradient scales."""
        if self.imp_head is None:
            self.imp_head, self.imp_ffn = [h.clone() for h in imp_head], [f.clone() for f in imp_ffn]
        else:
            self.imp_head = [torch.maximum(a, b) for a, b in zip(self.imp_head, imp_head)]
            self.imp_ffn = [torch.maximum(a, b) for a, b in zip(self.imp_ffn, imp_ffn)]
        self._scales = [(p, s.to(p.device, p.dtype)) for p, s in unit_param_scales(layers, self.imp_head, self.imp_ffn)]

    def before_task(self, ctx: TrainContext) -> None:
        if self.imp_head is not None:
            return
        texts = list(ctx.old_corpus) if self.proxy_source == "old" and ctx.old_corpus else list(ctx.train_docs)
        if texts:
            layers = unit_layers(ctx.model)
            self.set_importance(layers, *unit_importance(ctx.model, layers, self._batches(ctx, texts), True, self.dropout))

    def before_step(self, ctx: TrainContext) -> None:
        with torch.no_grad():
            if self.mask == "grad":
                for p, keep in self._scales:
                    if p.grad is not None:
                        p.grad.mul_(keep)
            else:
                self._before = [p.detach().clone() for p, _ in self._scales]

    def after_step(self, ctx: TrainContext) -> None:
        if not self._before:
            return
        with torch.no_grad():
            for (p, keep), w0 in zip(self._scales, self._before):
                p.copy_(w0 + keep * (p - w0))
        self._before = []

    def after_task(self, ctx: TrainContext) -> None:
        if ctx.train_docs:
            layers = unit_layers(ctx.model)
            imp = unit_importance(ctx.model, layers, self._batches(ctx, list(ctx.train_docs)), False, 0.0)
            self.set_importance(layers, *imp)


@contextlib.contextmanager
def fixed_unit_masks(model: nn.Module, head_masks, ffn_masks):
    """Run `model` with given (not learned) unit masks: used by tests and analysis."""
    layers = unit_layers(model)
    vm = VirtualMasks(layers, next(model.parameters()).device)
    vm.head, vm.ffn = [m.float() for m in head_masks], [m.float() for m in ffn_masks]
    with vm:
        yield vm
