"""Composition rules of the hook loop (metacl.ckl.train), batching, optimizers, tl_val carving."""

import math
from types import SimpleNamespace

import pytest
import torch

from metacl.core.batching import DocBatches, encode_docs
from metacl.ckl.optimizers import build_optimizer
from metacl.ckl.protocol import carve_tl_val
from metacl.ckl.train import combined_weights, label_mask, step_loss, train_task
from metacl.engine.losses import nll_from_logits as token_nll
from metacl.errors import MetaclError
from metacl.strategies.base import Strategy, TrainContext

DOCS = ["Ada Quill works for Northwind Labs.", "Marco Vell was born in Lisbon and plays the violin.",
        "Paris is the capital of France.", "The novel Silent Harbor was written by Ada Quill."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.models.pretrain import tiny_model_for_tests

    path = tiny_model_for_tests(tmp_path_factory.mktemp("tiny"), texts=DOCS)
    return path, load_model_and_tokenizer


def make_ctx(tiny, **kw):
    path, load = tiny
    model, tok = load(path, device="cpu")
    return TrainContext(model=model, tokenizer=tok, device=torch.device("cpu"), train_docs=DOCS, batch_size=2,
                        max_length=64, generator=torch.Generator().manual_seed(0), **kw)


class ConstWeight(Strategy):
    name = "constw"

    def __init__(self, value):
        self.value = value

    def token_weights(self, ctx, batch, nll):
        return torch.full_like(nll, self.value)


class FirstHalf(Strategy):
    name = "firsthalf"

    def token_weights(self, ctx, batch, nll):
        w = torch.zeros_like(nll)
        w[:, : nll.shape[1] // 2] = 1.0
        return w


class ConstLoss(Strategy):
    name = "constloss"

    def __init__(self, value):
        self.value = value

    def extra_loss(self, ctx, batch, logits):
        return torch.tensor(self.value)


def first_batch(ctx):
    return next(iter(DocBatches(ctx.tokenizer, ctx.train_docs, 2, 64, torch.Generator().manual_seed(0))))


def test_token_weights_multiply_and_extra_losses_add(tiny):
    ctx = make_ctx(tiny)
    batch = first_batch(ctx)
    with torch.no_grad():
        logits = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll = token_nll(logits, batch["labels"])
        w = combined_weights([ConstWeight(0.5), FirstHalf()], ctx, batch, nll)
        expected = label_mask(batch["labels"]) * 0.5
        expected[:, nll.shape[1] // 2:] = 0
        assert torch.equal(w, expected)
        base = step_loss([FirstHalf()], ctx, batch)
        # A constant weight rescales numerator and denominator alike: the weighted mean is unchanged.
        assert float(step_loss([ConstWeight(0.5), FirstHalf()], ctx, batch)) == pytest.approx(float(base), rel=1e-5)
        manual = float((expected * nll).sum() / expected.sum())
        assert float(base) == pytest.approx(manual, rel=1e-5)
        both = step_loss([FirstHalf(), ConstLoss(2.0), ConstLoss(3.0)], ctx, batch)
        assert float(both) == pytest.approx(float(base) + 5.0, rel=1e-5)


class Recorder(Strategy):
    name = "recorder"

    def __init__(self, log, tag):
        self.log, self.tag = log, tag

    def before_task(self, ctx):
        self.log.append((self.tag, "before_task"))
        # Freeze everything except the final norm: the optimizer must only see that parameter.
        for n, p in ctx.model.named_parameters():
            p.requires_grad_(n == "model.norm.weight")

    def train_batch(self, ctx, batch):
        self.log.append((self.tag, "train_batch"))
        return batch

    def before_step(self, ctx):
        self.log.append((self.tag, "before_step"))

    def after_step(self, ctx):
        self.log.append((self.tag, "after_step"))

    def after_epoch(self, ctx):
        self.log.append((self.tag, "after_epoch"))

    def after_task(self, ctx):
        self.log.append((self.tag, "after_task"))


def test_hook_order_and_optimizer_built_after_before_task(tiny):
    ctx = make_ctx(tiny)
    log, seen = [], []
    epochs_seen = []

    def make_opt(params):
        seen.extend(params)
        log.append(("loop", "make_optimizer"))
        return torch.optim.SGD(params, lr=0.1)

    stats = train_task(ctx, [Recorder(log, "a"), Recorder(log, "b")], 2, make_opt,
                       on_epoch_end=lambda e, s: epochs_seen.append(e), progress=False)
    assert [id(p) for p in seen] == [id(ctx.model.model.norm.weight)]
    assert log[:3] == [("a", "before_task"), ("b", "before_task"), ("loop", "make_optimizer")]
    step = [("a", "train_batch"), ("b", "train_batch"), ("a", "before_step"), ("b", "before_step"),
            ("a", "after_step"), ("b", "after_step")]
    assert log[3:9] == step
    assert log[-2:] == [("a", "after_task"), ("b", "after_task")]
    assert log.count(("a", "after_epoch")) == 2 and epochs_seen == [1, 2]
    assert stats["steps"] == 2 * 2 and stats["skipped_steps"] == 0  # 4 docs, batch 2, 2 epochs


class NaNOnce(Strategy):
    name = "nanonce"

    def __init__(self):
        self.calls = 0

    def extra_loss(self, ctx, batch, logits):
        self.calls += 1
        return torch.tensor(float("nan")) if self.calls == 1 else None


def test_nan_loss_skips_the_step_and_counts_it(tiny):
    ctx = make_ctx(tiny)
    ctx.train_docs = DOCS[:2]  # one batch per epoch
    before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    snaps = []
    stats = train_task(ctx, [NaNOnce()], 2, lambda ps: torch.optim.SGD(ps, lr=0.1),
                       on_epoch_end=lambda e, s: snaps.append({n: p.detach().clone() for n, p in ctx.model.named_parameters()}),
                       progress=False)
    assert stats["skipped_steps"] == 1 and stats["steps"] == 2
    assert all(torch.equal(before[n], snaps[0][n]) for n in before)       # epoch 1: skipped, untouched
    assert any(not torch.equal(before[n], snaps[1][n]) for n in before)   # epoch 2: trained
    assert all(torch.isfinite(p).all() for p in ctx.model.parameters())
    assert math.isnan(stats["losses"][0])


def test_epochs_must_be_positive(tiny):
    with pytest.raises(MetaclError, match="epochs"):
        train_task(make_ctx(tiny), [], 0, lambda ps: torch.optim.SGD(ps, lr=0.1), progress=False)


def test_lora_trains_only_adapters(tiny):
    from metacl.strategies.lora import LoRA

    ctx = make_ctx(tiny)
    base = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    train_task(ctx, [LoRA(lora_r=2, lora_alpha=4.0)], 1, lambda ps: torch.optim.AdamW(ps, lr=1e-2), progress=False)
    trained = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    targets = {n.split(".")[-4] for n in trained if n.endswith("lora_A.default.weight")}
    assert {"q_proj", "v_proj", "o_proj", "down_proj", "up_proj"} <= targets
    frozen_now = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                  for n, p in ctx.model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base[n], frozen_now[n]) for n in base)


def test_batching_windows_and_seeded_shuffle(tiny):
    ctx = make_ctx(tiny)
    tok = ctx.tokenizer
    windows = encode_docs(tok, DOCS, 8)
    total = sum(len(tok(d)["input_ids"]) + 1 for d in DOCS)
    assert sum(len(w) for w in windows) == total and max(len(w) for w in windows) <= 8
    a = [b["input_ids"] for b in DocBatches(tok, DOCS, 3, 8, torch.Generator().manual_seed(5))]
    b = [b["input_ids"] for b in DocBatches(tok, DOCS, 3, 8, torch.Generator().manual_seed(5))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    batch = next(iter(DocBatches(tok, DOCS, 3, 8, torch.Generator().manual_seed(5))))
    assert ((batch["labels"] == -100) == (batch["attention_mask"] == 0)).all()


def test_build_optimizer():
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(build_optimizer("adamw", p, 1e-3), torch.optim.AdamW)
    assert isinstance(build_optimizer("sgd", p, 1e-3), torch.optim.SGD)
    with pytest.raises(MetaclError, match="unknown optimizer"):
        build_optimizer("adam2", p, 1e-3)
    with pytest.raises(MetaclError, match="--lr"):
        build_optimizer("sgd", p, 0.0)


def test_carve_tl_val_is_deterministic_and_disjoint():
    items = [SimpleNamespace(uuid=f"id{i}") for i in range(25)]
    test1, val1 = carve_tl_val(items, 0.1)
    test2, val2 = carve_tl_val(list(reversed(items)), 0.1)
    assert len(val1) == 3 and {x.uuid for x in val1} == {x.uuid for x in val2}
    assert not {x.uuid for x in val1} & {x.uuid for x in test1} and len(test1) + len(val1) == 25
