"""Meta-train a TokenWeighter: which tokens of a document should an LM learn from?

One meta-step, for a batch of M meta-examples (a document + a query about its fact):

    w        = weighter(document)                          # (M, T), differentiable
    theta_K  = unroll(base LM, theta_0, weighted doc loss, K steps)   # per example, in parallel
    meta     = NLL(query object | theta_K)                 # did the update teach the fact?
             + lambda * NLL(old-fact probes | theta_K)     # ... without breaking old ones?
    meta.backward()  ->  weighter.step()

The gradient reaches the weighter *through* the inner update (second order), via
`metacl.engine.unroll(..., per_example=True)`: the M examples run as one batched computation,
not one at a time with gradient accumulation (TAALM's way). theta_0 is the same for every step
(the base LM as given), like TAALM; the inner parameters are either all of the base LM's
(`full`, what the `taalm` strategy later fine-tunes) or LoRA adapters (`lora`, cheaper).

Why K > 1 by default: with AdamW as the inner optimizer the *first* step is
`lr * g / (|g| + eps)`, i.e. almost exactly `lr * sign(g)`, whose derivative with respect to
the token weights is ~0. A single AdamW step gives the weighter no signal at all; TAALM works
around it with a detached warm-up step. Here the K steps are all differentiated (or the first
`K - truncate` detached with `--truncate`); see docs/results/taalm.md for the choice of K.

Optionally (`--span-supervision`, `--span-share`, `--span-warmup`; `metacl.meta.options`) the
meta-loss also tells the weighter which tokens of each meta-train document spell its probe's
answer. Why: through AdamW the bilevel meta-gradient is smooth only within ~1e-6 of the weights, so
on its own it barely moves a saturated weighter; with the answer spans of the meta-training data
(never the documents it is scored on) the weighter closes the oracle's gap on world v2
(docs/results/taalm_v2.md).

Validation every `val_every` steps, and always at the last step, runs the real CKL protocol
(`metacl.ckl.protocol.run_ckl`) with the `taalm` strategy on held-out documents and keeps the
predictor with the best TL Top Acc + NF (TAALM's "total knowledge"); when that is still the
step-0 (untrained) weighter, `run()` returns a warning (`best_is_untrained`). Checkpoints hold
the weighter, the outer optimizer and the counters; meta-batches are drawn from a generator
seeded by (seed, step), so a resumed run is the same computation as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from metacl.errors import CheckpointError, MetaclError
from metacl.meta.token_weighting import TokenWeighter

CKPT_DIR = "checkpoint"
BEST_DIR = "best"
LAST_DIR = "last"
METRICS = "metrics.jsonl"
LOG_LR = "meta.log_inner_lr"  # checkpoint key of a meta-learned inner learning rate


@dataclass
class MetaConfig:
    """Everything that defines a meta-training run (saved in checkpoints; resume refuses a mismatch)."""

    inner_steps: int = 2          # K differentiated inner steps on the weighted document loss
    inner_lr: float = 1e-3
    inner_optimizer: str = "adamw"  # adamw | sgd
    mode: str = "full"            # full: all base-LM params; lora: LoRA adapters only
    lora_rank: int = 4
    truncate: int | None = None   # backprop through only the last `truncate` inner steps
    retention: float = 0.0        # lambda: weight of old-fact probe NLL after the update
    retention_probes: int = 4     # old-fact probes per meta-example
    meta_batch: int = 4           # M meta-examples per meta-step (batched, per_example=True)
    outer_lr: float = 3e-4
    outer_weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_length: int = 128
    seed: int = 0
    steps: int = 100              # may grow on --resume
    val_every: int = 50
    val_at_start: bool = True     # validate the untrained weighter too (the plain-fine-tuning reference)
    extra: dict = field(default_factory=dict)
    ckpt_every: int | None = None  # checkpoint every N steps (None: at validations and every min(val_every, 25))
    max_bad_steps: int = 10       # stop after this many skipped (non-finite) meta-steps
    precision: str = "fp32"       # fp32 | bf16 (autocast the forward passes; fp32 master weights)
    compile: bool = False         # the inner loop + queries as one compiled function (same math, faster on CPU)
    # hypotheses of issue 19, off by default (metacl.meta.options explains each)
    inner_norm: str = "weights"   # weights: sum(w*nll)/sum(w) | tokens: sum(w*nll)/n_tokens
    weight_head: str = "sigmoid"  # sigmoid | softplus
    temperature: float = 1.0      # weights = act(z / T)
    sparsity: float = 0.0         # + sparsity * mean weight in the meta-loss
    learn_inner_lr: bool = False  # the inner lr is a meta-parameter
    span_supervision: float = 0.0  # + lambda * BCE(w, answer-token mask) on meta-train documents
    span_share: float = 0.0       # + lambda * -log(share of weight mass on the answer tokens)
    span_warmup: int = 0          # the first N steps train only the span terms (no inner loop)

    # what must agree between a checkpoint and the run that resumes it
    def identity(self) -> dict[str, Any]:
        from metacl.meta import options

        d = asdict(self)
        for k in ("steps", "val_every", "val_at_start", "extra", "ckpt_every", "max_bad_steps", "compile", *options.DEFAULTS):
            d.pop(k)
        if d["precision"] == "fp32":  # checkpoints from before --precision existed stay resumable
            d.pop("precision")
        d.update(options.non_default(self))  # so do those from before the options
        return d


@dataclass
class MetaExample:
    """A document and a query about the fact it states (query = prefix + ' ' + object)."""

    document: str
    prefix: str
    object: str


def examples_from_items(items: Sequence[Any]) -> list[MetaExample]:
    """LAMA-schema items (evidence + task_descriptive) -> meta-examples."""
    from metacl.core.probes import item_field, split_probe

    out = []
    for it in items:
        prefix, obj = split_probe(it)
        out.append(MetaExample(str(item_field(it, "evidence")), prefix, obj))
    return out


# --------------------------------------------------------------------------- tokenization

def encode_document(tokenizer, text: str, max_length: int) -> tuple[list[int], list[int]]:
    """Document -> (ids, labels), tokenized as the CKL loop does (`<bos> doc <eos>`), first window only.

    Every token is a label (lm_loss shifts; position 0 is never predicted).
    """
    from metacl.core.batching import encode_docs

    ids = encode_docs(tokenizer, [text], max_length)[0]
    return ids, list(ids)


def encode_probe(tokenizer, prefix: str, obj: str) -> tuple[list[int], list[int]]:
    """Probe -> (ids, labels) with labels only on the object's tokens.

    Tokenized exactly like the CKL metric (`prefix + " " + object` once, object tokens located by
    character offsets), so the meta-objective is the loss of the tokens the metric scores.
    """
    from metacl.core.probes import object_token_positions

    full = f"{prefix} {obj}" if prefix else obj
    enc = tokenizer(full, return_offsets_mapping=True)
    ids = enc["input_ids"]
    pos = [t for t in object_token_positions(enc["offset_mapping"], len(full) - len(obj), len(full)) if t >= 1]
    labels = [-100] * len(ids)
    for t in pos:
        labels[t] = ids[t]
    return ids, labels


def pad(rows: list[tuple[list[int], list[int]]], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad (ids, labels) pairs into a batch dict of (N, T >= length) tensors (`metacl.core.batching.collate`)."""
    from metacl.core.batching import collate

    return collate([i for i, _ in rows], pad_id, labels=[l for _, l in rows], length=length)


# --------------------------------------------------------------------------- the meta-objective

def inner_params(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The tensors the inner loop updates: all parameters (full) or the LoRA adapters (lora)."""
    if mode == "lora":
        ps = {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}
        if not ps:
            raise MetaclError("mode lora: the base model has no LoRA adapters; wrap it with add_lora() first")
        return ps
    return {n: p.detach() for n, p in model.named_parameters()}


def add_lora(model: nn.Module, rank: int, seed: int) -> nn.Module:
    """Wrap the base LM with LoRA adapters on every linear layer of the attention and MLP.

    lora_B starts at zero (standard), so the wrapped model computes exactly the base model;
    seeded so that the adapters' A matrices are the same across runs.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    from metacl.models.loading import quiet_peft_wrap

    with quiet_peft_wrap():
        return get_peft_model(model, cfg)


def _inner_optimizer(cfg: MetaConfig, lr: torch.Tensor | None = None):
    """The inner optimizer; `lr` (a tensor) replaces cfg.inner_lr when the rate is meta-learned."""
    from metacl import engine

    lr = cfg.inner_lr if lr is None else lr
    if cfg.inner_optimizer == "adamw":
        return engine.adamw(lr=lr)
    if cfg.inner_optimizer == "sgd":
        return engine.sgd(lr=lr)
    raise MetaclError(f"--inner-optimizer {cfg.inner_optimizer!r} is unknown; use adamw or sgd")


def weighted_doc_loss(model, params, batch):
    """The inner loss: `sum(w * nll) / sum(w)` with the weighter's weights carried in the batch."""
    from metacl.engine import lm_loss

    b = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    return lm_loss(model, params, b, token_weights=batch["token_weights"])


def meta_objective(weighter: TokenWeighter, model: nn.Module, tokenizer, examples: Sequence[MetaExample],
                   cfg: MetaConfig, nf_probes: Sequence[tuple[str, str]] = (),
                   params: dict[str, torch.Tensor] | None = None,
                   log_inner_lr: torch.Tensor | None = None, span_only: bool = False) -> dict[str, torch.Tensor]:
    """Differentiable meta-loss of one meta-batch (see the module docstring).

    Returns a dict with `loss` (differentiable w.r.t. the weighter and `log_inner_lr`, the log
    of a meta-learned inner rate), `query_nll`, `retention_nll` (per-batch means, detached) and
    `mean_weight`. The `cfg` options of `metacl.meta.options` change the inner loss and add the
    sparsity term. `span_only` (the `span_warmup` steps) skips the inner loop: the loss is the
    span terms alone and `query_nll` is NaN (not measured).
    """
    from metacl.engine import input_embedding_rows, lm_loss, second_order_attention, unroll
    from metacl.meta.options import doc_loss

    dev = next(weighter.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # --compile: documents padded to max_length, so that every meta-batch has the shape it was compiled for
    docs = pad([encode_document(tokenizer, e.document, cfg.max_length) for e in examples], pad_id,
               length=cfg.max_length if cfg.compile else None)
    docs = {k: v.to(dev) for k, v in docs.items()}
    label_mask = (docs["labels"] != -100).to(next(weighter.parameters()).dtype)
    label_mask[:, 0] = 0
    w = weighter(docs["input_ids"], docs["attention_mask"]) * label_mask          # (M, T)
    if span_only:
        return _span_terms(w, tokenizer, docs, label_mask, examples, cfg, torch.zeros((), device=dev), {
            "query_nll": torch.full((), float("nan"), device=dev), "retention_nll": torch.zeros((), device=dev)})
    if params is None:
        params = inner_params(model, cfg.mode)
    if cfg.compile:
        return _compiled_objective(w, model, tokenizer, docs, label_mask, examples, cfg, nf_probes, params, log_inner_lr)
    inner = {k: v[:, None] for k, v in docs.items()}                             # (M, 1, T)
    inner["token_weights"] = w[:, None]
    with second_order_attention(model):
        inner_lr = None if log_inner_lr is None else log_inner_lr.exp()
        opt = _inner_optimizer(cfg, inner_lr)
        # embedding rows of tokens no document reads get no inner gradient: leave them out (exact, see engine.active_rows)
        rows = input_embedding_rows(model, params, [inner]) if opt.weight_decay == 0 else {}
        per_m, _ = unroll(model, params, doc_loss(cfg.inner_norm), [inner] * cfg.inner_steps,
                          optimizer=opt, first_order=False, truncate=cfg.truncate,
                          per_example=True, return_state=False, active_rows=rows, stack=False)
        q_losses, r_losses = [], []
        for m, e in enumerate(examples):
            p_m = per_m[m]  # one param dict per example (stack=False: no copy into and out of an (M, ...) stack)
            q = pad([encode_probe(tokenizer, e.prefix, e.object)], pad_id)
            q_losses.append(lm_loss(model, p_m, {k: v.to(dev) for k, v in q.items()}))
            if cfg.retention > 0 and nf_probes:
                r = pad([encode_probe(tokenizer, p, o) for p, o in _retention_probes(nf_probes, m, cfg)], pad_id)
                r_losses.append(lm_loss(model, p_m, {k: v.to(dev) for k, v in r.items()}))
    q_nll = torch.stack(q_losses).mean()
    r_nll = torch.stack(r_losses).mean() if r_losses else None
    return _meta_loss(w, q_nll, r_nll, tokenizer, docs, label_mask, examples, cfg)


def _retention_probes(nf_probes: Sequence[tuple[str, str]], m: int, cfg: MetaConfig) -> Sequence[tuple[str, str]]:
    """Example m's old-fact probes: its own `retention_probes` of them, or the first ones when the list runs out."""
    R = cfg.retention_probes
    return nf_probes[m * R:(m + 1) * R] or nf_probes[:R]


def _meta_loss(w, q_nll, r_nll, tokenizer, docs, label_mask, examples, cfg: MetaConfig) -> dict[str, torch.Tensor]:
    """Query NLL + retention (r_nll None: none) + sparsity + span terms: the result dict of meta_objective."""
    loss = q_nll
    if r_nll is not None:
        loss = loss + cfg.retention * r_nll
    else:
        r_nll = torch.zeros((), device=w.device)
    if cfg.sparsity > 0:
        loss = loss + cfg.sparsity * (w.sum() / label_mask.sum().clamp(min=1))
    return _span_terms(w, tokenizer, docs, label_mask, examples, cfg, loss,
                       {"query_nll": q_nll.detach(), "retention_nll": r_nll.detach()})


_COMPILED: dict[tuple, Any] = {}  # (model, inner settings) -> compiled per-example meta-loss (compiles once per shape)


PROBE_BUCKET = 32  # --compile pads probes to a multiple of this: one shape (one compile) for probes up to 32 tokens


def _probe_stack(groups: list[list[tuple[list[int], list[int]]]], n: int, pad_id: int, dev) -> dict[str, torch.Tensor]:
    """(M, n, L) probe tensors, one group of `n` probes per example, L a multiple of PROBE_BUCKET.

    Missing probes are padding rows (no labels, so no loss): the mean over the labelled tokens
    is what the eager path computes on the shorter list.
    """
    groups = [list(g) + [([pad_id], [-100])] * (n - len(g)) for g in groups]
    longest = max(len(ids) for g in groups for ids, _ in g)
    width = -(-longest // PROBE_BUCKET) * PROBE_BUCKET
    batches = [pad(g, pad_id, length=width) for g in groups]
    return {k: torch.stack([b[k] for b in batches]).to(dev) for k in batches[0]}


def _compiled_objective(w, model, tokenizer, docs, label_mask, examples, cfg: MetaConfig, nf_probes, params,
                        log_inner_lr) -> dict[str, torch.Tensor]:
    """`meta_objective` with the inner loop and the probe losses as one compiled function (`--compile`).

    Why: the same mathematics (tests/test_compiled_unroll.py, tests/test_token_weighting_compiled.py)
    at a fraction of the per-op overhead on CPU (docs/results/meta_throughput_issue18/). Shapes are
    static so that it compiles once per run: documents padded to `max_length` (by meta_objective),
    probes to a multiple of `PROBE_BUCKET` tokens, `retention_probes` probes per example, the
    embedding rows in the inner loop padded to M * max_length.
    """
    from metacl.engine import input_embedding_rows, lm_loss
    from metacl.engine.active_rows import fixed_size
    from metacl.engine.compiled_unroll import compiled_unroll_loss
    from metacl.meta.options import doc_loss

    if cfg.truncate is not None:
        raise MetaclError("--compile differentiates every inner step: drop --truncate, or drop --compile")
    M, T = docs["input_ids"].shape
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    inner = {**{k: v[:, None] for k, v in docs.items()}, "token_weights": w[:, None]}       # (M, 1, T)
    outer = _probe_stack([[encode_probe(tokenizer, e.prefix, e.object)] for e in examples], 1, pad_id, w.device)
    retain = cfg.retention > 0 and bool(nf_probes)
    if retain:
        nf = _probe_stack([[encode_probe(tokenizer, p, o) for p, o in _retention_probes(nf_probes, m, cfg)]
                           for m in range(M)], cfg.retention_probes, pad_id, w.device)
        outer.update({f"nf_{k}": v for k, v in nf.items()})                                  # (M, R, Lr)
    opt = _inner_optimizer(cfg)
    key = (id(model), cfg.inner_norm, cfg.inner_steps, cfg.inner_optimizer, cfg.inner_lr, retain)
    if key not in _COMPILED:
        def outer_loss(model, p, b):
            q = lm_loss(model, p, {k: b[k] for k in ("input_ids", "attention_mask", "labels")})
            if not retain:
                return q
            return torch.stack([q, lm_loss(model, p, {k: b[f"nf_{k}"] for k in ("input_ids", "attention_mask", "labels")})])
        _COMPILED[key] = compiled_unroll_loss(model, doc_loss(cfg.inner_norm), outer_loss, opt, steps=cfg.inner_steps)
    rows = input_embedding_rows(model, params, [inner]) if opt.weight_decay == 0 else {}
    rows = fixed_size(rows, params, M * T) if rows else None
    lr = None if log_inner_lr is None else log_inner_lr.exp()
    losses = _COMPILED[key](params, inner, outer, lr=lr, active_rows=rows)                # (M, 1 or 2)
    return _meta_loss(w, losses[:, 0].mean(), losses[:, 1].mean() if retain else None,
                      tokenizer, docs, label_mask, examples, cfg)


def _span_terms(w, tokenizer, docs, label_mask, examples, cfg: MetaConfig, loss: torch.Tensor,
                out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the answer-span terms (`span_supervision`, `span_share`) to `loss`; the result dict of meta_objective."""
    if cfg.span_supervision > 0 or cfg.span_share > 0:
        from metacl.meta.options import answer_masks, span_bce, span_share_loss

        target = answer_masks(tokenizer, docs["input_ids"], docs["attention_mask"], [e.object for e in examples])
        bce = span_bce(w, target, label_mask)
        share = span_share_loss(w, target, label_mask)
        loss = loss + cfg.span_supervision * bce + cfg.span_share * share
        out = {**out, "span_bce": bce.detach(), "span_share": share.detach()}
    return {"loss": loss, **out, "mean_weight": (w.detach().sum() / label_mask.sum().clamp(min=1))}


# --------------------------------------------------------------------------- checkpoints

def _opt_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten torch optimizer state into named tensors + JSON (no pickle)."""
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "scalars": {}}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            key = f"opt.{names[idx]}.{k}"
            if torch.is_tensor(v):
                tensors[key] = v
            else:
                meta["scalars"][key] = v
    return tensors, meta


def _load_opt(opt: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for idx, name in names.items():
        st = {}
        for key, v in tensors.items():
            if key.startswith(f"opt.{name}."):
                st[key[len(f"opt.{name}."):]] = v
        for key, v in meta["scalars"].items():
            if key.startswith(f"opt.{name}."):
                st[key[len(f"opt.{name}."):]] = v
        if st:
            state[idx] = st
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------- the loop

class MetaTrainer:
    """Holds the weighter, base LM, data and outer optimizer; `run()` trains with checkpoints."""

    def __init__(self, model: nn.Module, tokenizer, train: Sequence[MetaExample], out_dir: str | Path,
                 cfg: MetaConfig, nf_probes: Sequence[tuple[str, str]] = (),
                 weighter: TokenWeighter | None = None,
                 validate: Callable[[TokenWeighter, Path], dict[str, float]] | None = None,
                 progress: bool = True):
        if len(train) == 0:
            raise MetaclError("meta-training needs at least one meta-example (document + query); check --data")
        if cfg.inner_steps < 1:
            raise MetaclError(f"--inner-steps {cfg.inner_steps} must be >= 1; pass e.g. --inner-steps 2")
        if cfg.retention > 0 and not nf_probes:
            raise MetaclError("--retention > 0 needs old-fact probes (meta_nf.jsonl in --data); add them or use --retention 0")
        self.cfg, self.tokenizer, self.train = cfg, tokenizer, list(train)
        self.nf = list(nf_probes)
        self.out = Path(out_dir)
        self.validate = validate
        self.progress = progress
        model.eval()  # no dropout: the inner loop must be a deterministic function of the weights
        for p in model.parameters():
            p.requires_grad_(False)
        from metacl.meta import options

        options.check(cfg)
        self.weighter = weighter if weighter is not None else TokenWeighter.from_base_lm(
            model, tokenizer, **options.head_kwargs(cfg))
        if (self.weighter.activation, self.weighter.temperature) != (cfg.weight_head, cfg.temperature):
            raise MetaclError(f"the given weighter has head {self.weighter.activation}/T={self.weighter.temperature}, the "
                              f"config asks for {cfg.weight_head}/T={cfg.temperature}; build it with options.head_kwargs(cfg)")
        self.weighter.loss_norm = cfg.inner_norm  # deployment divides the way meta-training did
        self.weighter.tokenizer = self.weighter.tokenizer or tokenizer
        self.model = add_lora(model, cfg.lora_rank, cfg.seed) if cfg.mode == "lora" else model
        if cfg.mode == "lora":
            self.model.eval()
        self.params = inner_params(self.model, cfg.mode)
        named = list(self.weighter.named_parameters())
        self.log_inner_lr = options.inner_lr_parameter(cfg, next(self.weighter.parameters()))
        if self.log_inner_lr is not None:
            named.append((LOG_LR, self.log_inner_lr))
        self._names = {i: n for i, (n, _) in enumerate(named)}
        self.opt = torch.optim.AdamW([p for _, p in named], lr=cfg.outer_lr, weight_decay=cfg.outer_weight_decay)
        self.step = 0
        self.bad_steps = 0
        self.best: dict[str, Any] | None = None
        from metacl import distributed
        from metacl.precision import check_precision

        check_precision(cfg.precision)
        if cfg.max_bad_steps < 1 or (cfg.ckpt_every is not None and cfg.ckpt_every < 1):
            raise MetaclError(f"--max-bad-steps ({cfg.max_bad_steps}) and --ckpt-every ({cfg.ckpt_every}) must be >= 1")
        # under torchrun: same weighter on every rank; each rank runs its share of every meta-batch
        self.dist = distributed.init(str(next(self.weighter.parameters()).device))
        distributed.shard(range(min(cfg.meta_batch, len(self.train))), self.dist)  # one-line error if it does not split
        distributed.broadcast_(self.meta_parameters(), self.dist)

    def meta_parameters(self) -> list[torch.Tensor]:
        """What the outer optimizer trains: the weighter, and the log inner lr when it is learned."""
        return list(self.weighter.parameters()) + ([self.log_inner_lr] if self.log_inner_lr is not None else [])

    # sampling depends only on (seed, step): resume-safe without saving RNG streams
    def batch_for(self, step: int) -> tuple[list[MetaExample], list[tuple[str, str]]]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        M = min(self.cfg.meta_batch, len(self.train))
        ex = [self.train[i] for i in torch.randperm(len(self.train), generator=g)[:M].tolist()]
        probes: list[tuple[str, str]] = []
        if self.cfg.retention > 0 and self.nf:
            n = M * self.cfg.retention_probes
            idx = torch.randint(len(self.nf), (n,), generator=g).tolist()
            probes = [self.nf[i] for i in idx]
        return ex, probes

    def meta_step(self) -> dict[str, float]:
        """One outer update on the global meta-batch of this step; skipped if anything is non-finite.

        Under torchrun each rank takes its equal share of the examples (and their retention
        probes), backpropagates its mean loss, and the gradients are averaged, which equals the
        gradient of the global mean. A non-finite loss or gradient on any rank skips the update
        on every rank: the weights and AdamW moments stay exactly as they were.
        """
        from metacl import distributed
        from metacl.precision import autocast

        ex, probes = self.batch_for(self.step)
        ex = distributed.shard(ex, self.dist)
        probes = distributed.shard(probes, self.dist) if probes else probes
        self.weighter.train()
        dev = next(self.weighter.parameters()).device
        with autocast(self.cfg.precision, dev):
            out = meta_objective(self.weighter, self.model, self.tokenizer, ex, self.cfg, probes, self.params,
                                 self.log_inner_lr, span_only=self.step < self.cfg.span_warmup)
        self.opt.zero_grad(set_to_none=True)
        bad = not bool(torch.isfinite(out["loss"]).all())
        if not bad:
            out["loss"].backward()
        trained = [p for p in self.meta_parameters() if p.requires_grad]
        if self.dist.enabled:
            unused = [p.grad is None for p in trained]
            for p in trained:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            distributed.all_reduce_mean_([p.grad for p in trained], self.dist)
            if not bad:  # every rank ran backward: a grad that was None here was None everywhere
                for p, u in zip(trained, unused):
                    if u:
                        p.grad = None
        gnorm = torch.nn.utils.clip_grad_norm_(trained, self.cfg.grad_clip)
        bad = distributed.all_reduce_flag(bad or not bool(torch.isfinite(gnorm)), self.dist)
        stats = torch.stack([out["loss"].detach().float(), out["query_nll"].float(), out["retention_nll"].float(),
                             out["mean_weight"].float(),
                             out.get("span_bce", torch.zeros((), device=dev)).float(),
                             out.get("span_share", torch.zeros((), device=dev)).float()]).cpu()
        distributed.all_reduce_mean_([stats], self.dist)
        if not bad:
            self.opt.step()
        self.step += 1
        row = {"step": self.step, "meta_loss": float(stats[0]), "query_nll": float(stats[1]),
               "retention_nll": float(stats[2]), "mean_weight": float(stats[3]), "grad_norm": float(gnorm)}
        if self.step <= self.cfg.span_warmup:  # a warm-up step: no inner loop, no query NLL
            row.update(query_nll=None, span_warmup=True)
        if self.cfg.span_supervision > 0 or self.cfg.span_share > 0:
            row["span_bce"], row["span_share_nll"] = float(stats[4]), float(stats[5])
        if self.log_inner_lr is not None:
            row["inner_lr"] = float(self.log_inner_lr.detach().exp())
        if bad:
            self.bad_steps += 1
            row.update(skipped=True, bad_steps=self.bad_steps,
                       reason="non-finite meta-loss" if not math.isfinite(row["meta_loss"]) else "non-finite meta-gradient")
        return row

    # ---- persistence (the checkpoint format and resume path of `metacl.metalearner`)
    name = "token-weighting"

    def setup(self) -> None:
        """Nothing to do: `__init__` builds the weighter, the inner parameters and the outer optimizer."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"weighter.{k}": v for k, v in self.weighter.state_dict().items()}
        if self.log_inner_lr is not None:
            tensors[LOG_LR] = self.log_inner_lr.detach()
        opt_t, opt_meta = _opt_tensors(self.opt, self._names)
        tensors.update(opt_t)
        from metacl.rng import all_rng_state

        state = {"step": self.step, "config": asdict(self.cfg), "identity": self.cfg.identity(),
                 "best": self.best, "optimizer": opt_meta, "bad_steps": self.bad_steps, "rng": all_rng_state()}
        return tensors, state

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Refuses a checkpoint of another config (`CheckpointError`)."""
        if state.get("identity") != json.loads(json.dumps(self.cfg.identity())):
            diff = sorted(k for k, v in self.cfg.identity().items() if state.get("identity", {}).get(k) != v)
            raise CheckpointError(f"checkpoint {self.out / CKPT_DIR} was made with different settings ({', '.join(diff)}); "
                                  "use the same options or a new --out")
        sd = {k[len("weighter."):]: v for k, v in tensors.items() if k.startswith("weighter.")}
        self.weighter.load_state_dict(sd)
        if self.log_inner_lr is not None:
            with torch.no_grad():
                self.log_inner_lr.copy_(tensors[LOG_LR])
        _load_opt(self.opt, self._names, tensors, state["optimizer"])
        self.best = state.get("best")
        if "rng" in state:
            from metacl.rng import set_all_rng_state

            set_all_rng_state(state["rng"])

    def save(self) -> None:
        from metacl import metalearner

        metalearner.save(self)

    def resume(self) -> bool:
        """Load out/checkpoint if present; True if resumed. Refuses a checkpoint of another config."""
        from metacl import metalearner

        return metalearner.resume(self)

    def _log(self, row: dict) -> None:
        from metacl.utils import append_jsonl

        if self.dist.is_main:
            append_jsonl(self.out / METRICS, [row])

    def _validate(self) -> None:
        """Score the current weighter; rank 0 keeps the best.

        Under torchrun every rank calls `validate`: the CKL protocol it runs is data-parallel
        itself (it joins the same process group), so a rank-0-only call would wait forever for
        the others. Only rank 0's result is used.
        """
        if self.validate is None:
            return
        from metacl import distributed

        self.weighter.eval()
        cand = self.out / LAST_DIR
        if self.dist.is_main:
            self.weighter.save_pretrained(cand, extra={"meta_step": self.step, "meta_config": asdict(self.cfg)})
        distributed.barrier(self.dist)  # the candidate is on disk before any rank reads it
        res = self.validate(self.weighter, cand)
        if self.dist.is_main:
            score = float(res["score"])
            row = {"step": self.step, "kind": "val", **{k: v for k, v in res.items() if isinstance(v, (int, float))}}
            self._log(row)
            if self.best is None or score > self.best["score"]:
                self.best = {"step": self.step, "score": score,
                             **{k: v for k, v in res.items() if isinstance(v, (int, float))}}
                self.weighter.save_pretrained(self.out / BEST_DIR, extra={"meta_step": self.step, "val": self.best,
                                                                          "meta_config": asdict(self.cfg)})
        distributed.barrier(self.dist)

    def evaluate(self) -> dict[str, Any] | None:
        """`MetaLearner.evaluate`: run the validation callback (if any) and keep the best weighter."""
        self._validate()
        return self.best

    def deploy(self) -> dict[str, Any]:
        """Write `OUT/last` and (without validation) `OUT/best`: the weighter `ckl run --strategy taalm` loads."""
        from metacl.precision import peak_memory

        dev = next(self.weighter.parameters()).device
        if not self.dist.is_main:
            return {"step": self.step, "best": self.best, "seconds": time.time() - self._t0, "rank": self.dist.rank}
        self.weighter.eval()
        self.weighter.save_pretrained(self.out / LAST_DIR, extra={"meta_step": self.step, "meta_config": asdict(self.cfg)})
        if self.best is None:  # no validation: the last weighter is the one to use
            self.weighter.save_pretrained(self.out / BEST_DIR, extra={"meta_step": self.step, "meta_config": asdict(self.cfg)})
        warning = untrained_best_warning(self.best, self.step, self.out)
        return {"step": self.step, "best": self.best, "seconds": time.time() - self._t0, "bad_steps": self.bad_steps,
                "world_size": self.dist.world_size, "best_is_untrained": warning is not None,
                **({"inner_lr": float(self.log_inner_lr.detach().exp())} if self.log_inner_lr is not None else {}),
                "warnings": [warning] if warning else [], **peak_memory(dev)}

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train to `cfg.steps` (`metacl.metalearner.meta_train`); stops with a `MetaclError` after
        `cfg.max_bad_steps` skipped steps."""
        from metacl import distributed
        from metacl.checkpoint import find_checkpoint

        if resume:
            if not self.resume() and self.dist.is_main:
                print(f"--resume: no checkpoint in {self.out / CKPT_DIR}; starting from step 0", flush=True)
        elif find_checkpoint(self.out / CKPT_DIR) is not None:
            raise MetaclError(f"{self.out} already holds a meta-training checkpoint; pass --resume or choose a new --out")
        distributed.barrier(self.dist)  # all ranks have looked at `out` before rank 0 writes there
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        from metacl import metalearner

        t0 = self._t0 = time.time()
        return metalearner.meta_train(
            self, self.cfg.steps, ckpt_every=self.cfg.ckpt_every or max(1, min(self.cfg.val_every or 25, 25)),
            val_every=self.cfg.val_every, val_at_start=self.cfg.val_at_start,
            max_bad_steps=self.cfg.max_bad_steps, progress=self.progress, desc="meta-train token-weighting",
            stop_hint="lower --outer-lr / --inner-lr or check the data, then rerun with --resume",
            before_log=lambda row: row.update(seconds=round(time.time() - t0, 3)))


def untrained_best_warning(best: dict | None, step: int, out: Path) -> str | None:
    """One line when `best/` is the step-0 (untrained) weighter although meta-training ran.

    Why: validation keeps the weighter with the best CKL score, and the step-0 candidate is the
    untrained one (about plain fine-tuning). If no later validation beats it, `best/` silently
    holds a weighter that learned nothing; deploying it measures fine-tuning, not TAALM.
    """
    if not best or int(best.get("step", -1)) != 0 or step <= 0:
        return None
    return (f"{out / BEST_DIR} is the untrained step-0 weighter: no validation in {step} meta-steps beat its "
            f"score {float(best['score']):.4f}; deploy {out / LAST_DIR} only if you mean to, or train longer "
            "(--steps), lower --val-every or change the meta-training settings")
