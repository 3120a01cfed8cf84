"""Contract tests for metacl.optim.LearnedOptimizer (the torch.optim side) and its functional twin."""

import copy
import io

import pytest
import torch
from torch import nn

from metacl.errors import CheckpointError, MetaclError
from metacl.optim import LearnedFunctional, LearnedOptimizer, NetConfig, init_meta


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(64, 6)
    y = torch.sin(x[:, :1]) + x[:, 1:2]
    return model, x, y


def _loss(model, x, y):
    return (model(x) - y).pow(2).mean()


def _random_meta(seed=1):
    """Meta-params with a non-trivial MLP and context path, so tests exercise all of the network."""
    cfg = NetConfig(init_lr=1e-2)
    meta = init_meta(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    meta["mlp2.w"] = torch.randn(meta["mlp2.w"].shape, generator=g) * 0.2
    meta["ctx_s.w"] = torch.randn(meta["ctx_s.w"].shape, generator=g) * 0.2
    return meta, cfg


def test_plain_loop_decreases_loss_and_closure_returns_loss():
    model, x, y = _problem()
    opt = LearnedOptimizer(model.parameters(), config=NetConfig(init_lr=1e-2))
    first = _loss(model, x, y).item()
    for _ in range(60):
        def closure():
            opt.zero_grad()
            loss = _loss(model, x, y)
            loss.backward()
            return loss
        out = opt.step(closure)
    assert torch.is_tensor(out)
    assert _loss(model, x, y).item() < 0.3 * first


def test_param_groups_lr_and_params_without_grad_are_skipped():
    model, x, y = _problem()
    frozen = nn.Parameter(torch.ones(3))  # never receives a gradient
    opt = LearnedOptimizer(
        [{"params": model[0].parameters(), "lr": 0.0}, {"params": list(model[2].parameters()) + [frozen]}],
        config=NetConfig(init_lr=1e-2),
    )
    before = copy.deepcopy(model.state_dict())
    _loss(model, x, y).backward()
    opt.step()
    assert torch.equal(model[0].weight, before["0.weight"])        # lr 0 group: no change
    assert not torch.equal(model[2].weight, before["2.weight"])    # default group moved
    assert torch.equal(frozen, torch.ones(3)) and len(opt.state[frozen]) == 0
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip_gives_identical_next_step():
    meta, cfg = _random_meta()
    model, x, y = _problem()
    opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, total_steps=10)
    for i in range(4):
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step()
        if i == 1:
            opt.consolidate()
    # round trip through bytes with weights_only=True (what HF Trainer's resume does)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    model2 = copy.deepcopy(model)
    opt2 = LearnedOptimizer(model2.parameters())  # fresh meta: must be replaced by the loaded one
    opt2.load_state_dict(sd)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad(); _loss(m, x, y).backward(); o.step()
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p1, p2)


def test_functional_and_torch_optim_agree_with_chunking_and_consolidate():
    meta, cfg = _random_meta(2)
    model, x, y = _problem(3)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    f = LearnedFunctional(meta, cfg, total_steps=5)
    st = f.init(params)
    opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg, total_steps=5, chunk_size=7)
    for i in range(4):
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = (torch.func.functional_call(model, leaves, (x,)) - y).pow(2).mean()
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        params, st = f.update(params, grads, st, i)
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step()
        if i == 1:
            st = f.consolidate(params, st)
            opt.consolidate()
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), params[k], rtol=1e-5, atol=1e-6)


def test_save_and_load_pretrained(tmp_path):
    meta, cfg = _random_meta()
    model, x, y = _problem()
    opt = LearnedOptimizer(model.parameters(), meta=meta, config=cfg)
    opt.save_pretrained(tmp_path / "w", info={"note": "test"})
    opt2 = LearnedOptimizer.from_pretrained(tmp_path / "w", model.parameters())
    for k in meta:
        assert torch.equal(opt2.meta[k], opt.meta[k])
    assert opt2.cfg == cfg
    with pytest.raises(CheckpointError):
        LearnedOptimizer.from_pretrained(tmp_path / "missing", model.parameters())
    with pytest.raises(MetaclError):
        LearnedOptimizer(model.parameters(), lr=-1.0)


# The digits weights halve this toy's loss in 50 steps (1.61 -> 0.20). The LM-trained default is damped:
# at multiplier 1 it goes 1.61 -> 1.54 where Adam at lr 1e-3 (its nominal step) reaches 1.06, and at the
# multiplier world v2's tl_val chose (4) 1.61 -> 1.37 (seeds 5 6 7: x0.85 / 0.83 / 0.87); see
# docs/results/lo_v2.md. So the default is only asked to learn steadily here, not fast.
@pytest.mark.parametrize("name, lr, at_most", [("digits", 1.0, 0.5), ("default", 4.0, 0.9)])
def test_pretrained_weights_train_a_fresh_model(name, lr, at_most):
    model, x, y = _problem(5)
    opt = LearnedOptimizer.pretrained(model.parameters(), name=name, total_steps=50, lr=lr)
    first = _loss(model, x, y).item()
    losses = []
    for _ in range(50):
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step()
        losses.append(_loss(model, x, y).item())
    assert losses[-1] < at_most * first
    assert max(losses[25:]) < losses[0]  # no blow-up along the way


def test_meta_gradient_reaches_every_meta_parameter_through_unroll():
    from metacl.engine import unroll

    meta, cfg = _random_meta(4)
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    model, x, y = _problem()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    f = LearnedFunctional(meta, cfg, total_steps=4)

    def loss_fn(m, p, b):
        return (torch.func.functional_call(m, p, (b[0],)) - b[1]).pow(2).mean()

    batches = [(x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]) for i in range(4)]
    pK, st = unroll(model, params, loss_fn, batches[:2], optimizer=f, first_order=True)
    st = f.consolidate(pK, st)  # so the old-task features are live too
    pK, _ = unroll(model, pK, loss_fn, batches[2:], optimizer=f, first_order=True, state=st, start_step=2)
    loss_fn(model, pK, (x, y)).backward()
    no_grad = [k for k, v in meta.items() if v.grad is None or v.grad.abs().sum() == 0]
    assert no_grad == [], f"meta-parameters without meta-gradient: {no_grad}"


def test_works_inside_hf_trainer(tmp_path):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg)
    ids = torch.arange(8).repeat(8, 1) % 32  # one easy pattern, repeated: the loss must fall fast
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = LearnedOptimizer(model.parameters(), config=NetConfig(init_lr=1e-2), total_steps=8)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8, logging_steps=1,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())
