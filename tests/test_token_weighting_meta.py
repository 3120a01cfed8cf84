"""Meta-training of the TokenWeighter: meta-gradient vs finite differences, a planted-key toy, resume."""

from __future__ import annotations

import random

import pytest
import torch

from metacl.errors import CheckpointError, MetaclError
from metacl.meta.token_weighting import TokenWeighter
from metacl.meta.train_token_weighting import MetaConfig, MetaExample, MetaTrainer, meta_objective
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests

FILL = "apple river stone cloud paper window garden silver candle forest music honey summer ladder rocket".split()
VALS = "red blue green black white pink gold gray".split()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny random LM whose tokenizer has one token per toy word (so 'the value token' is well defined)."""
    texts = [" ".join(random.Random(i).sample(FILL + VALS + ["key"], 24)) for i in range(30)]
    path = tiny_model_for_tests(tmp_path_factory.mktemp("toylm"), texts=texts, vocab_size=360)
    model, tok = load_model_and_tokenizer(path)
    for w in FILL + VALS + ["key"]:
        assert len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1, w
    return path, tok


def planted(rng: random.Random) -> tuple[MetaExample, str]:
    """Eight filler words with 'key <value>' planted at a random place; the query asks for the value."""
    f, v = rng.sample(FILL, 8), rng.choice(VALS)
    i = rng.randrange(1, 7)
    return MetaExample(" ".join(f[:i] + ["key", v] + f[i:]) + ".", "key", v), v


def fresh_model(path):
    return load_model_and_tokenizer(path)[0]


def test_meta_gradient_matches_finite_differences(toy):
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
    cfg = MetaConfig(inner_steps=2, inner_lr=0.5, inner_optimizer="sgd", retention=0.5, retention_probes=2,
                     meta_batch=2, max_length=32)
    for p in model.parameters():
        p.requires_grad_(False)

    def loss() -> torch.Tensor:
        return meta_objective(tw, model, tok, ex, cfg, probes)["loss"]

    tw.zero_grad()
    loss().backward()
    grads = {n: p.grad.clone() for n, p in tw.named_parameters()}
    assert grads["head.weight"].abs().sum() > 0
    backbone_norm = sum(g.abs().sum() for n, g in grads.items() if n.startswith("backbone."))
    assert backbone_norm > 0, "the meta-gradient must reach the weighter's backbone too"
    g = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in tw.named_parameters()}
    analytic = sum((grads[n] * d).sum() for n, d in direction.items()).item()
    eps = 1e-5
    with torch.no_grad():
        vals = []
        for sign in (1, -1):
            for n, p in tw.named_parameters():
                p.add_(sign * eps * direction[n])
            vals.append(loss().item())
            for n, p in tw.named_parameters():
                p.sub_(sign * eps * direction[n])
    numeric = (vals[0] - vals[1]) / (2 * eps)
    assert abs(analytic) > 1e-6
    assert numeric == pytest.approx(analytic, rel=1e-4, abs=1e-9)


def _value_vs_filler(tw, tok, n=24, seed=123):
    rng = random.Random(seed)
    wv, wf = [], []
    with torch.no_grad():
        for _ in range(n):
            e, v = planted(rng)
            ids = tok(e.document)["input_ids"]
            w = tw(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
            vid = tok(" " + v, add_special_tokens=False)["input_ids"][0]
            for i, t in enumerate(ids[1:], 1):
                (wv if t == vid else wf).append(float(w[i]))
    return sum(wv) / len(wv), sum(wf) / len(wf)


def test_planted_key_gets_the_weight(toy, tmp_path):
    """Only the value after 'key' is asked about: meta-training must move weight onto it.

    Why validation: on this toy the outer loss has a cliff. As the filler weights fall, the
    weight-normalised inner step on the value token grows until one outer step overshoots and
    every weight drops together (seen at step 16 with one thread, then recovered by step 18).
    Which step hits the cliff moves with the float path (thread count, CPU), so the claim is
    made the way the product is used: `best/`, kept by held-out query NLL, is what deploys.
    Over seeds 0-7 at one thread the kept best's value-filler gap was 0.22-0.50 and the last one's 0.18-0.50
    (docs/results/tw_planted_toy/seeds_val4.json, experiments/tw_planted_seeds.py).
    """
    path, tok = toy
    torch.manual_seed(0)
    rng = random.Random(0)
    train = [planted(rng)[0] for _ in range(64)]
    held_out = [planted(random.Random(1000))[0] for _ in range(16)]
    cfg = MetaConfig(inner_steps=2, inner_lr=1.0, inner_optimizer="sgd", meta_batch=8, outer_lr=1e-2,
                     steps=20, val_every=4, max_length=32)

    def validate(weighter, _candidate):
        return {"score": -float(meta_objective(weighter, tr.model, tok, held_out, cfg, (), tr.params)["query_nll"])}

    tr = MetaTrainer(fresh_model(path), tok, train, tmp_path / "run", cfg, validate=validate, progress=False)
    v0, f0 = _value_vs_filler(tr.weighter, tok)
    assert abs(v0 - f0) < 0.01  # untrained: every token ~0.98
    tr.meta_step()  # a step taken by hand, then run() goes on from it
    tr.run(resume=True)
    assert tr.step == cfg.steps and tr.best["step"] > 0, "validation must prefer a trained weighter to the untrained one"
    best = TokenWeighter.from_pretrained(tmp_path / "run" / "best", tok)
    v1, f1 = _value_vs_filler(best, tok)
    assert v1 - f1 > 0.15, (v1, f1, tr.best)
    rows = [r for r in map(__import__("json").loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    val = [r["score"] for r in rows if r.get("kind") == "val"]
    assert max(val) > val[0], "the held-out query NLL after the update went down"


def test_resume_equals_uninterrupted(toy, tmp_path):
    path, tok = toy
    rng = random.Random(1)
    train = [planted(rng)[0] for _ in range(16)]
    probes = [("key", v) for v in VALS]

    def trainer(out, steps):
        torch.manual_seed(0)
        cfg = MetaConfig(inner_steps=2, inner_lr=1e-2, meta_batch=2, steps=steps, val_every=2, retention=0.3,
                         retention_probes=1, max_length=32)
        return MetaTrainer(fresh_model(path), tok, train, out, cfg, probes, progress=False)

    full = trainer(tmp_path / "a", 4)
    full.run()
    half = trainer(tmp_path / "b", 2)
    half.run()
    with pytest.raises(MetaclError, match="--resume"):
        trainer(tmp_path / "b", 4).run()
    resumed = trainer(tmp_path / "b", 4)
    resumed.run(resume=True)
    assert resumed.step == full.step == 4
    for (n, a), (_, b) in zip(full.weighter.state_dict().items(), resumed.weighter.state_dict().items()):
        assert torch.equal(a, b), n
    sa, sb = full.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in __import__("json").loads(r).items() if k != "seconds"} for r in rows]
    assert strip(la) == strip(lb)
    # another configuration must not silently continue this checkpoint
    torch.manual_seed(0)
    other = MetaTrainer(fresh_model(path), tok, train, tmp_path / "b",
                        MetaConfig(inner_steps=3, meta_batch=2, steps=6, max_length=32), progress=False)
    with pytest.raises(CheckpointError, match="inner_steps"):
        other.run(resume=True)


def test_cli_meta_train_then_deploy_with_taalm(tmp_path, capsys):
    """`metacl meta-train token-weighting` on a generated world, then `ckl run --strategy taalm` with its output."""
    import json

    from metacl.cli.main import main
    from metacl.data.world import write_world

    world = tmp_path / "world"
    write_world(world, 20, seed=0)
    texts = [json.loads(l)["text"] for l in (world / "pretrain_corpus.jsonl").read_text().splitlines()[:200]]
    lm = tiny_model_for_tests(tmp_path / "lm", texts=texts, vocab_size=360)
    out = tmp_path / "tw"
    args = ["meta-train", "token-weighting", "--model", str(lm), "--data", str(world), "--out", str(out),
            "--steps", "2", "--meta-batch", "2", "--val-every", "2", "--val-epochs", "1", "--val-items", "4",
            "--retention", "0.5", "--max-length", "64", "--device", "cpu"]
    assert main(args) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("kind") == "val"] == [0, 2]
    assert all(r["retention_nll"] > 0 for r in rows if "retention_nll" in r)
    assert (out / "best" / "head.safetensors").is_file() and (out / "checkpoint" / "state.json").is_file()
    assert main(args) == 2  # existing checkpoint without --resume: one-line error
    assert "--resume" in capsys.readouterr().err
    assert main(args[:-2] + ["--resume", "--device", "cpu"]) == 0  # already at --steps: nothing to redo
    run = tmp_path / "ckl"
    assert main(["ckl", "run", "--model", str(lm), "--data", str(world), "--strategy", "taalm", "oracle",
                 "--taalm-predictor", str(out), "--oracle-data", str(world / "tl.jsonl"), "--epochs", "1",
                 "--max-items", "4", "--out", str(run), "--device", "cpu", "--no-exact-match"]) == 0
    assert json.loads((run / "summary.json").read_text())["strategies"] == ["taalm", "oracle"]
    bad = main(["meta-train", "token-weighting", "--model", str(lm), "--data", str(tmp_path), "--out", str(tmp_path / "x")])
    assert bad == 2 and "meta_train.jsonl" in capsys.readouterr().err


def test_lora_mode_updates_only_adapters_and_still_reaches_the_weighter(toy, tmp_path):
    path, tok = toy
    torch.manual_seed(0)
    rng = random.Random(2)
    train = [planted(rng)[0] for _ in range(4)]
    cfg = MetaConfig(mode="lora", lora_rank=2, inner_steps=2, inner_lr=1e-2, meta_batch=2, max_length=32)
    tr = MetaTrainer(fresh_model(path), tok, train, tmp_path / "lora", cfg, progress=False)
    assert tr.params and all("lora_" in n for n in tr.params)
    tr.meta_step()
    assert tr.weighter.head.weight.grad.abs().sum() > 0
