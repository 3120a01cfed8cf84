"""Optimizee family `lm`: a tiny Llama learning new facts of a generated world, task after task.

Why this family: the learned optimizer is deployed on `metacl ckl run`, where a *pretrained* LM
reads documents that each hide one new fact and is scored on probe sentences of those facts (TL)
and of facts it already knew (NF). Digit MLPs share none of that: not the loss landscape of a
language model, not "learn a fact from a document, keep the old ones". This family is the same
setting in miniature, small enough to unroll on a CPU:

- the world: `metacl.data.world.generate_world(LMFamily.entities, seed)`, built in memory
  (no files, cached per process);
- the optimizee: a 2-layer Llama (hidden 32/48/64, sampled per episode), *briefly pretrained*
  with AdamW on the world's pre-training corpus (old facts). Why pretrained and not random:
  (1) the deployed optimizee is pretrained, and a learned optimizer that only ever saw
  random-init gradients (large, all tensors moving together) meets very different statistics
  there; (2) retention of the old world is only measurable if the model knows some of it.
  Each size is pretrained once per process (seconds) and every episode starts from a copy;
- task i = `docs_per_task` new-fact documents (`evidence`) of the world's meta people; inner
  steps = causal-LM loss on batches of those documents (cycled, as CKL epochs do);
- held-out batch of task i = the *probe sentences* of those facts, loss on the object tokens
  only (the tokens `metacl.core.probes` scores), plus the same object-token loss on old-world
  probes (`meta_nf`: facts of the same people from pre-training, i.e. what CKL calls NF).

With `metacl.optim.meta_train.episode_loss` the meta-loss is therefore
    sum_i [TL_i + NF](after task i) + retention * mean_{j<n} [TL_j + NF](after the last task),
i.e. learn each task's facts, don't forget the old world while doing so, and keep the facts of
earlier tasks. `pool="meta"` draws facts from the world's `meta_train` people, any other pool
from the disjoint `meta_val` people (held-out facts for evaluation).

`digits+lm` mixes both families: each episode is an lm episode with probability `LM.mix_lm`,
otherwise a digits episode (the shipped weights' distribution).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from metacl.core.batching import collate
from metacl.engine import lm_loss
from metacl.optim.episodes import Episode, digits_episode


@dataclass(frozen=True)
class LMFamily:
    """Knobs of the `lm` family. Module-level (`LM`, frozen: it keys the per-process caches) so tests
    can swap in a smaller one without new CLI flags."""

    entities: int = 120            # generated-world size (meta_train: 60 new facts, meta_val: 36)
    world_seed: int = 0
    vocab_size: int = 512
    hidden_sizes: tuple[int, ...] = (32, 48, 64)
    layers: int = 2
    pretrain_steps: int = 300      # brief AdamW pretraining on the old world (per size, per process)
    pretrain_batch: int = 16
    pretrain_lr: float = 3e-3
    block_size: int = 96           # max tokens per document / window
    docs_per_task: int = 8
    batch_docs: int = 4            # documents per inner step
    old_probes: int = 8            # old-world probes in every held-out batch
    mix_lm: float = 0.5            # share of lm episodes in `digits+lm`
    world: str = "v1"              # v1: metacl.data.world; v2: metacl.data.world_v2 (hard sentences, overwrites)
    distractors: tuple[int, int] = (1, 2)   # v2 only: hard sentences around each new-fact document's fact


LM = LMFamily()
# `lm2`: the same family on a world v2 (documents that hide their fact among hard sentences, 40% of
# the new facts overwrite an old employer or city, paraphrased corpus), the world the CKL tables of
# issues 15/16/19 are judged on. Its own world seed (11: the tables use worlds 0 and 1), so no
# evaluation world or base LM is ever seen in meta-training. Why 1-2 distractors and 160 tokens:
# with 3-5 the documents run to a median of 227 tokens (max 326) under this 512-token vocabulary,
# doubling every inner step; with 1-2 the median is 85 and the longest (150) still fits whole.
LM2 = LMFamily(entities=120, world_seed=11, world="v2", block_size=160, distractors=(1, 2))


# ----------------------------------------------------------------------------- world, tokenizer, base LMs
@lru_cache(maxsize=4)
def _world_of(entities: int, seed: int, version: str = "v1", distractors: tuple[int, int] = (1, 2)) -> dict[str, list]:
    if version == "v2":
        from metacl.data.world_v2 import generate_world_v2

        return generate_world_v2(entities, seed, n_distractors=distractors)
    from metacl.data.world import generate_world

    return generate_world(entities, seed)


def _world(s: LMFamily) -> dict[str, list]:
    return _world_of(s.entities, s.world_seed, s.world, s.distractors)


@lru_cache(maxsize=4)
def _tokenizer_of(entities: int, seed: int, vocab_size: int, version: str = "v1", distractors: tuple[int, int] = (1, 2)):
    from metacl.models.pretrain import train_tokenizer

    corpus = _world_of(entities, seed, version, distractors)["pretrain_corpus"]
    return train_tokenizer([r["text"] for r in corpus], vocab_size)


def _tokenizer(s: LMFamily):
    return _tokenizer_of(s.entities, s.world_seed, s.vocab_size, s.world, s.distractors)


def doc_batch(tokenizer, texts: list[str], block_size: int) -> dict[str, Tensor]:
    """Causal-LM batch of whole documents (`<s> text </s>`, cut at `block_size`)."""
    enc = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return collate([(list(ids) + [tokenizer.eos_token_id])[:block_size] for ids in enc], tokenizer.pad_token_id)


def probe_batch(tokenizer, rows: list[dict]) -> dict[str, Tensor]:
    """Probe sentences `prefix + " " + object` with labels on the object tokens only.

    Same split and token positions as the CKL metric (`metacl.core.probes`), so the held-out loss
    is the smooth version of what `ckl run` reports as TL / NF accuracy.
    """
    from metacl.core.probes import object_token_positions, split_probe

    fulls, spans = [], []
    for r in rows:
        p, o = split_probe(r)
        full = f"{p} {o}" if p else o
        fulls.append(full)
        spans.append((len(full) - len(o), len(full)))
    enc = tokenizer(fulls, return_offsets_mapping=True, add_special_tokens=True)
    batch = collate([list(s) for s in enc["input_ids"]], tokenizer.pad_token_id)
    labels = torch.full_like(batch["input_ids"], -100)
    for i, (s, e) in enumerate(spans):
        pos = [t for t in object_token_positions(enc["offset_mapping"][i], s, e) if t >= 1]
        labels[i, pos] = batch["input_ids"][i, pos]
    batch["labels"] = labels
    return batch


@lru_cache(maxsize=8)
def _base_state(hidden: int, settings: LMFamily) -> tuple[nn.Module, dict[str, Tensor], float]:
    """(model, pretrained state, final pretraining loss) for one size: built and pretrained once per process."""
    from metacl.models.pretrain import PRESETS, build_model

    tok = _tokenizer(settings)
    heads = 2 if hidden <= 32 else 4
    preset = replace(PRESETS["tiny"], hidden_size=hidden, num_layers=settings.layers, num_heads=heads,
                     intermediate_size=2 * hidden, block_size=settings.block_size)
    model = build_model(preset, tok, seed=1000 + hidden)
    docs = [r["text"] for r in _world(settings)["pretrain_corpus"]]
    g = torch.Generator().manual_seed(hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr, weight_decay=0.0)
    model.train()
    final = float("nan")
    for _ in range(settings.pretrain_steps):
        idx = torch.randint(0, len(docs), (settings.pretrain_batch,), generator=g).tolist()
        b = doc_batch(tok, [docs[i] for i in idx], settings.block_size)
        loss = model(**b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        final = loss.item()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    return model, state, final


@lru_cache(maxsize=8)
def _old_importance(hidden: int, settings: LMFamily, n_batches: int) -> dict[str, Tensor]:
    """Mean |grad * p| of the pretrained base LM on `n_batches` pre-training batches (its old task).

    Fixed batches (seeded by the size), computed once per process: what `LearnedOptimizer.prime` measures
    at deployment on the base LM's own corpus.
    """
    model, state, _ = _base_state(hidden, settings)
    tok = _tokenizer(settings)
    docs = [r["text"] for r in _world(settings)["pretrain_corpus"]]
    g = torch.Generator().manual_seed(7000 + hidden)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in state.items()}
    acc = {k: torch.zeros_like(v) for k, v in state.items()}
    for _ in range(n_batches):
        idx = torch.randint(0, len(docs), (settings.pretrain_batch,), generator=g).tolist()
        grads = torch.autograd.grad(lm_loss(model, params, doc_batch(tok, [docs[i] for i in idx], settings.block_size)),
                                    list(params.values()), allow_unused=True)
        for (k, p), gr in zip(params.items(), grads):
            if gr is not None:
                acc[k] += (gr * p.detach()).abs()
    return {k: v / n_batches for k, v in acc.items()}


def base_lm(hidden: int, settings: LMFamily | None = None) -> tuple[nn.Module, Any, float]:
    """(model, tokenizer, pretraining loss) of the cached pretrained base LM of this size."""
    s = settings or LM
    model, _, final = _base_state(hidden, s)
    return model, _tokenizer(s), final


# ----------------------------------------------------------------------------- episodes
def _lm_loss(model: nn.Module, params: dict[str, Tensor], batch) -> Tensor:
    """Inner steps get a document batch (dict); held-out batches are (probes, old probes)."""
    if isinstance(batch, tuple):
        new, old = batch
        return lm_loss(model, params, new) + lm_loss(model, params, old)
    return lm_loss(model, params, batch)


def _tl_loss(model: nn.Module, params: dict[str, Tensor], batch) -> Tensor:
    """The new-fact part of a held-out batch (probes of this task's facts), for the plasticity term."""
    return lm_loss(model, params, batch[0])


def lm_episode(rng: random.Random, cfg, pool: str = "meta", settings: LMFamily | None = None):
    """A pretrained tiny Llama learning `cfg.tasks_per_episode` tasks of new-fact documents."""
    s = settings or LM
    world = _world(s)
    tok = _tokenizer(s)
    hidden = rng.choice(list(s.hidden_sizes))
    model, state, _ = _base_state(hidden, s)
    facts = list(world["meta_train" if pool == "meta" else "meta_val"])
    old = list(world["meta_nf" if pool == "meta" else "nf"])
    rng.shuffle(facts)
    n_tasks = cfg.tasks_per_episode
    per = min(s.docs_per_task, max(1, len(facts) // n_tasks))
    old_batch = probe_batch(tok, rng.sample(old, min(s.old_probes, len(old))))
    tasks = []
    for i in range(n_tasks):
        rows = facts[i * per : (i + 1) * per]
        order = list(range(len(rows)))
        batches = []
        while len(batches) < cfg.inner_steps:   # cycle through the task's documents, reshuffled each pass
            rng.shuffle(order)
            for j in range(0, len(order), s.batch_docs):
                if len(batches) < cfg.inner_steps:
                    batches.append(doc_batch(tok, [rows[k]["evidence"] for k in order[j : j + s.batch_docs]],
                                             s.block_size))
        tasks.append((batches, (probe_batch(tok, rows), old_batch)))
    params = {k: v.clone() for k, v in state.items()}
    n_prime = int(getattr(cfg, "prime_batches", 0) or 0)
    old_imp = _old_importance(hidden, s, n_prime) if n_prime > 0 else None
    return Episode(model, params, tasks, _lm_loss, tl_loss_fn=_tl_loss, old_importance=old_imp)


def lm2_episode(rng: random.Random, cfg, pool: str = "meta"):
    """`lm2`: an lm episode on the world-v2 settings `LM2`."""
    return lm_episode(rng, cfg, pool, LM2)


def digits_lm_episode(rng: random.Random, cfg, pool: str = "meta"):
    """`digits+lm`: an lm episode with probability `LM.mix_lm`, else a digits episode."""
    return lm_episode(rng, cfg, pool) if rng.random() < LM.mix_lm else digits_episode(rng, cfg, pool)


def settings_dict(family: str = "lm") -> dict:
    """The family settings, for run summaries."""
    from dataclasses import asdict

    return asdict(LM2 if family == "lm2" else LM)


__all__ = ["LM", "LM2", "LMFamily", "lm_episode", "lm2_episode", "digits_lm_episode", "base_lm", "doc_batch", "probe_batch", "settings_dict"]

# Merged into metacl.optim.meta_train.FAMILIES (this module must not import meta_train at load time).
FAMILIES = {"lm": lm_episode, "lm2": lm2_episode, "digits+lm": digits_lm_episode}
