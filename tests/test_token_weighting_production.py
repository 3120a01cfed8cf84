"""The production inner loop (the defaults of `meta-train token-weighting`: AdamW, K = 2, lr 1e-3), not only SGD.

Two properties the SGD tests in test_token_weighting_meta.py do not cover:
- a short meta-training with that inner loop moves weight onto the planted key's value;
- its meta-gradient matches finite differences in float64.

Why the finite-difference test patches two functions: HF Llama computes the attention softmax
and the RMSNorm variance in float32 even in a float64 model. Through AdamW that float32 noise is
amplified (d/dg of g / (|g| + 1e-8) is up to 1e8 near g = 0), and the meta-objective is smooth
only on a scale of about 1e-7 in the weighter's parameters (steps of 1e-4 or 1e-5 cross kinks of
coordinates whose inner gradient changes sign), so the check needs a real float64 model and a
step of 1e-8.
"""

from __future__ import annotations

import random

import pytest
import torch

from metacl.meta.token_weighting import TokenWeighter
from metacl.meta.train_token_weighting import MetaConfig, MetaTrainer, meta_objective
from test_token_weighting_meta import _value_vs_filler, fresh_model, planted, toy  # noqa: F401  (fixture)


def test_meta_config_defaults_are_the_cli_defaults():
    """What these tests call 'production' is what a user gets from the command line (the command's own
    argparse defaults, read from its `register` on a bare parser)."""
    import argparse
    import importlib

    from metacl.cli.meta_train import SUBCOMMANDS

    bare = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[0]).register(bare.add_subparsers())
    args = bare.parse_args(["token-weighting", "--model", "m", "--data", "d", "--out", "o"])
    cfg = MetaConfig()
    assert (args.inner_optimizer, args.inner_steps, args.inner_lr, args.truncate) == \
        (cfg.inner_optimizer, cfg.inner_steps, cfg.inner_lr, cfg.truncate) == ("adamw", 2, 1e-3, None)


def test_production_inner_loop_moves_weight_onto_the_planted_key(toy, tmp_path):  # noqa: F811
    """64 meta-steps, outer lr 3e-3 (the experiments' and the demo's): the value after 'key' is the only
    token the query asks about; its weight must end above the filler's (the normalised inner loss
    only sees relative weights, so the filler falling is the same as the value rising).

    Why four seeds and a mean: with the AdamW inner loop the outcome of one seed is fragile. The
    meta-objective is smooth only on a scale of about 1e-7 (see the module docstring), so float32
    rounding alone (the fused AdamW step of issue 18 gives meta-gradients within 1e-7 of the plain
    ops) moved seed 0's final margin from above 0.1 to 0.003. Measured margins (value - filler) with
    the fused step: seed 0 0.003, seed 1 0.471, seed 2 0.058, seed 3 0.052. The property asserted is
    what holds across seeds: the value never ends below the filler, and on average it ends >0.1 above.
    That the margin is small in 3 of 4 seeds is itself a finding for issue 19 (the production inner
    loop learns this toy weakly)."""
    path, tok = toy
    margins = []
    for seed in range(4):
        torch.manual_seed(seed)
        rng = random.Random(seed)
        train = [planted(rng)[0] for _ in range(64)]
        cfg = MetaConfig(meta_batch=8, outer_lr=3e-3, steps=64, val_every=0, max_length=32)
        assert (cfg.inner_optimizer, cfg.inner_steps, cfg.inner_lr) == ("adamw", 2, 1e-3)
        tr = MetaTrainer(fresh_model(path), tok, train, tmp_path / f"run{seed}", cfg, progress=False)
        v0, f0 = _value_vs_filler(tr.weighter, tok)
        assert abs(v0 - f0) < 0.01
        tr.run()
        v1, f1 = _value_vs_filler(tr.weighter, tok)
        margins.append(v1 - f1)
    assert min(margins) > 0 and sum(margins) / len(margins) > 0.1, margins


def _float64_everywhere(monkeypatch):
    import torch.nn.functional as F
    from transformers.models.llama import modeling_llama

    softmax = F.softmax

    def softmax64(x, dim=None, _stacklevel=3, dtype=None):
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype)

    def rms_norm64(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(F, "softmax", softmax64)
    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm64)


def test_production_meta_gradient_matches_finite_differences(toy, monkeypatch):  # noqa: F811
    _float64_everywhere(monkeypatch)
    path, tok = toy
    torch.manual_seed(0)
    model = fresh_model(path).double()
    tw = TokenWeighter.from_base_lm(model, tok).double()
    with torch.no_grad():  # away from the saturated start so every parameter matters
        tw.head.weight.normal_(0, 0.3)
        tw.head.bias.zero_()
    rng = random.Random(0)
    ex = [planted(rng)[0] for _ in range(2)]
    probes = [("key", "red"), ("key", "blue"), ("apple", "river"), ("stone", "cloud")]
    cfg = MetaConfig(retention=0.5, retention_probes=2, meta_batch=2, max_length=32)  # default inner loop
    for p in model.parameters():
        p.requires_grad_(False)

    def loss() -> torch.Tensor:
        return meta_objective(tw, model, tok, ex, cfg, probes)["loss"]

    tw.zero_grad()
    loss().backward()
    grads = {n: p.grad.clone() for n, p in tw.named_parameters()}
    assert sum(g.abs().sum() for n, g in grads.items() if n.startswith("backbone.")) > 0
    g = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in tw.named_parameters()}
    analytic = sum((grads[n] * d).sum() for n, d in direction.items()).item()
    eps = 1e-8
    with torch.no_grad():
        vals = []
        for sign in (1, -1):
            for n, p in tw.named_parameters():
                p.add_(sign * eps * direction[n])
            vals.append(loss().item())
            for n, p in tw.named_parameters():
                p.sub_(sign * eps * direction[n])
    numeric = (vals[0] - vals[1]) / (2 * eps)
    assert abs(analytic) > 1e-3
    assert numeric == pytest.approx(analytic, rel=1e-5)
