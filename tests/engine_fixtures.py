"""Tiny models and data shared by the engine tests (and the engine benchmark).

Why separate: the tests need three model families (an MLP for finite differences, a plain
PyTorch transformer that `higher` can patch, a tiny HF Llama) and identical batches for
both sides of every comparison. Everything is seeded and small enough for CPU in milliseconds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, d_in: int = 3, d_hidden: int = 5, d_out: int = 2):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class TinyBlock(nn.Module):
    """Pre-norm causal self-attention + MLP written with plain ops (twice differentiable)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D // self.heads)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.down(torch.tanh(self.up(self.ln2(x))))


class TinyTransformer(nn.Module):
    """A plain-PyTorch causal LM (no HF) that `higher` 0.2.1 can monkey-patch."""

    def __init__(self, vocab: int = 16, d: int = 8, heads: int = 2, layers: int = 1, max_len: int = 16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.Sequential(*[TinyBlock(d, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return self.head(self.ln(self.blocks(self.tok(input_ids) + self.pos(pos))))


def tiny_llama(hidden: int = 32, layers: int = 2, vocab: int = 64, dtype: torch.dtype = torch.float64, seed: int = 0, **kw):
    """A tiny HF LlamaForCausalLM built locally from a config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, **kw,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def lm_batch(vocab: int, B: int, T: int, gen: torch.Generator, lead: tuple[int, ...] = ()) -> dict[str, Tensor]:
    """Random token batch with the last position of each row ignored (-100) to exercise masking."""
    ids = torch.randint(0, vocab, (*lead, B, T), generator=gen)
    labels = ids.clone()
    labels[..., -1] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def mse_loss_with_weights(weights: Tensor):
    """loss_fn for the MLP: per-example weighted squared error, weights closed over (a 'token weight')."""

    def loss_fn(model: nn.Module, params: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        out = torch.func.functional_call(model, params, (batch["x"],))
        per = ((out - batch["y"]) ** 2).sum(-1)
        return (weights * per).sum() / weights.sum()

    return loss_fn


def mlp_batches(K: int, n: int, gen: torch.Generator, dtype=torch.float64) -> list[dict[str, Tensor]]:
    return [{"x": torch.randn(n, 3, generator=gen, dtype=dtype), "y": torch.randn(n, 2, generator=gen, dtype=dtype)} for _ in range(K)]


def ce_loss(model: nn.Module, params: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
    """Plain next-token cross entropy for TinyTransformer batches (same as lm_loss without weights)."""
    logits = torch.func.functional_call(model, params, (batch["input_ids"],))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)


def make_llama_exact_float64(monkeypatch) -> None:
    """Patch HF Llama so a float64 model really computes in float64 (for finite differences).

    Why: HF's RMSNorm and eager softmax always compute in float32, which limits the model to
    ~1e-7 relative precision; a central difference with eps=1e-6 then has ~10% noise. These
    replacements are the same formulas in the input dtype. `monkeypatch` undoes them.
    """
    import transformers.models.llama.modeling_llama as ml

    def rms_forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def eager64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        groups = module.num_key_value_groups
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        scores = (query @ key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = F.dropout(scores.softmax(-1), p=dropout, training=module.training)
        return (probs @ value).transpose(1, 2).contiguous(), probs

    monkeypatch.setattr(ml.LlamaRMSNorm, "forward", rms_forward)
    monkeypatch.setattr(ml, "eager_attention_forward", eager64)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| over two lists of tensors (detached): the tolerance measure of the engine tests."""
    a, b = [x.detach() for x in a], [y.detach() for y in b]
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b)) ** 0.5
    den = sum((y**2).sum() for y in b) ** 0.5
    return float(num / den)


def untied_toy_lm(tmp_dir, dtype: torch.dtype = torch.float64):
    """(model, tokenizer): a tiny HF Llama trained locally on a 15-word toy corpus, with its
    input embedding untied from the LM head, so the unread embedding rows can leave the inner loop."""
    import copy

    from transformers import LlamaForCausalLM

    from metacl.models.loading import load_model_and_tokenizer
    from metacl.models.pretrain import tiny_model_for_tests

    words = "apple river stone cloud paper window garden silver candle forest music honey key red blue".split()
    texts = [" ".join(words[i:] + words[:i]) for i in range(15)]
    tied, tok = load_model_and_tokenizer(tiny_model_for_tests(tmp_dir, texts=texts))
    cfg = copy.deepcopy(tied.config)
    cfg.tie_word_embeddings = False
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(tied.state_dict(), strict=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(tied.get_input_embeddings().weight + 0.01 * torch.randn_like(model.lm_head.weight))
    return model.to(dtype).eval(), tok
