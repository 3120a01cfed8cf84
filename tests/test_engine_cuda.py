"""Engine paths that behave differently on an accelerator, run on `METACL_TEST_DEVICE`.

Why a device variable: no CUDA machine runs CI, so these tests run on CPU everywhere (where
they check the same properties) and on CUDA when `experiments/gpu_check.sh --device cuda`
sets METACL_TEST_DEVICE=cuda. What differs on CUDA: `per_example=True` picks `vmap` (not the
CPU loop), the AdamW backward always applies its v' < tiny mask (no host sync), the CUDA RNG
is replayed by checkpointing, and bf16 autocast runs real bf16 matmuls.
"""

from __future__ import annotations

import os

import pytest
import torch

from engine_fixtures import TinyTransformer, lm_batch, tiny_llama
from metacl.engine import adamw, lm_loss, sgd, unroll

DEV = os.environ.get("METACL_TEST_DEVICE", "cpu")
if DEV.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"METACL_TEST_DEVICE={DEV} but torch sees no CUDA device", allow_module_level=True)


def rel_err(a, b) -> float:
    num = sum(((x - y).double() ** 2).sum() for x, y in zip(a, b)) ** 0.5
    den = sum((y.double() ** 2).sum() for y in b) ** 0.5
    return float(num / den)


def setup(M=None, K=2, dtype=torch.float64, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    model = TinyTransformer(vocab=24).to(device=DEV, dtype=dtype)
    if dropout:
        model.blocks.insert(0, torch.nn.Dropout(dropout))
    gen = torch.Generator().manual_seed(seed)
    lead = () if M is None else (M,)
    batches = [{k: v.to(DEV) for k, v in lm_batch(16, 2, 8, gen, lead).items()} for _ in range(K)]
    query = {k: v.to(DEV) for k, v in lm_batch(16, 2, 8, gen, lead).items()}
    w = (torch.rand(*lead, K, 2, 8, generator=gen, dtype=dtype) + 0.5).to(DEV).requires_grad_(True)
    for i, b in enumerate(batches):
        b["token_weights"] = w[..., i, :, :]
    return model, batches, query, w


def test_per_example_auto_vmap_and_loop_agree_on_device():
    M = 3
    model, batches, query, w = setup(M)
    params = {k: v.detach() for k, v in model.named_parameters()}
    out = {}
    for impl in (True, "loop", "vmap"):
        pK, _ = unroll(model, params, lm_loss, batches, optimizer=adamw(lr=0.01, eps=1e-3), per_example=impl)
        loss = sum(lm_loss(model, {k: v[m] for k, v in pK.items()}, {k: v[m] for k, v in query.items()}) for m in range(M))
        out[impl] = torch.autograd.grad(loss, w)[0]
    assert rel_err([out["loop"]], [out["vmap"]]) < 1e-10
    assert rel_err([out[True]], [out["vmap"]]) < 1e-10
    assert float(out["vmap"].abs().sum()) > 0


def test_checkpoint_replay_with_dropout_replays_the_rng():
    """Dropout inside the inner loss: replayed steps must draw the same masks (CPU and CUDA RNG)."""
    model, batches, query, w = setup(K=4, dropout=0.3)
    model.train()
    params = dict(model.named_parameters())
    res = {}
    for ck in (False, 2, 4):
        torch.manual_seed(123)
        pK, _ = unroll(model, params, lm_loss, batches, optimizer=adamw(lr=0.01, eps=1e-3), checkpoint=ck)
        # the model stays in train mode: recomputation in backward runs the module as it is then
        res[ck] = torch.autograd.grad(lm_loss(model, pK, query), [w, *params.values()])
    assert rel_err(res[2], res[False]) < 1e-12
    assert rel_err(res[4], res[False]) < 1e-12


def test_bf16_autocast_second_order_meta_step_is_finite_and_close_to_fp32():
    """HF Llama, eager attention switched on by unroll, bf16 autocast: a usable meta-gradient (SGD inner:
    through AdamW's near-sign first steps the meta-gradient is dominated by rounding at bf16)."""
    model = tiny_llama(dtype=torch.float32).to(DEV)
    gen = torch.Generator().manual_seed(0)
    doc = {k: v.to(DEV) for k, v in lm_batch(64, 2, 12, gen).items()}
    query = {k: v.to(DEV) for k, v in lm_batch(64, 2, 12, gen).items()}
    w = torch.rand(2, 12, generator=gen).to(DEV).requires_grad_(True)
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = {}
    for prec in ("fp32", "bf16"):
        with torch.autocast(device_type=torch.device(DEV).type, dtype=torch.bfloat16, enabled=prec == "bf16"):
            pK, _ = unroll(model, params, lm_loss, [dict(doc, token_weights=w)] * 2, optimizer=sgd(lr=0.5))
            loss = lm_loss(model, pK, query)
        grads[prec] = torch.autograd.grad(loss, w)[0]
    assert torch.isfinite(grads["bf16"]).all()
    cos = torch.nn.functional.cosine_similarity(grads["bf16"].flatten().double(), grads["fp32"].flatten().double(), dim=0)
    assert cos > 0.9, float(cos)


def test_learned_optimizer_step_on_device():
    from metacl.optim import LearnedOptimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(DEV)
    opt = LearnedOptimizer.pretrained(model.parameters(), total_steps=20)
    x, y = torch.randn(64, 8, device=DEV), torch.randn(64, 1, device=DEV)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    assert all(p.device.type == torch.device(DEV).type for p in model.parameters())
