"""Train a byte-level BPE tokenizer and a Llama-style causal LM from scratch, on a local corpus.

Why: no hub downloads exist on this machine, yet every experiment needs a base LM that already
*knows* an old world (the Not-To-Forget facts) before it is asked to learn new facts. This module
builds one in minutes on a CPU and saves it with `save_pretrained`, so every other part of metacl
loads it by path exactly like a real Hugging Face checkpoint (`AutoModelForCausalLM`,
`AutoTokenizer`). Nothing here is special-cased elsewhere: swap the path for a real Llama and the
rest of the pipeline is unchanged.

    pretrain(["world/pretrain_corpus.jsonl"], "small", "runs/base_lm", seed=0)

Presets: `tiny` (tests, seconds), `small` (CPU research, 2.16M parameters), `base` (a GPU); every
preset has a 512-token context. `pretrain.json` records config, parameter count, corpus and
weights sha256, seed and final loss, so a committed base LM can be rebuilt and checked. The corpus is plain text
(one document per non-empty line) or JSONL whose `text` (else `evidence`) field is a document.
Documents longer than the context window are cut into consecutive windows so no text is wasted.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from metacl.core.batching import collate
from metacl.data.corpus import read_corpus
from metacl.errors import DataError, MetaclError
from metacl.utils import default_device, seed_everything, write_json_atomic

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class Preset:
    """Model and optimisation sizes. Why presets: users pick a scale, not twenty numbers."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    block_size: int      # context window used for training (and the model's max positions)
    steps: int
    batch_tokens: int    # tokens per step (padding included); batches hold documents of similar length
    lr: float
    warmup: int
    weight_decay: float = 0.0


PRESETS: dict[str, Preset] = {
    # Seconds on a CPU: enough for tests that check the plumbing, not the knowledge.
    "tiny": Preset(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                   block_size=512, steps=30, batch_tokens=1024, lr=3e-3, warmup=5),
    # CPU research runs (4 layers, hidden 192, MLP 512, tied embeddings): 1,771,200 + 192 x vocab
    # parameters, i.e. 2,163,456 at the BPE vocab of 2043 that the world-v2 corpus gives
    # (docs/results/world_v2_base_lm/pretrain.json) and 2,164,416 at the full 2048 (the tokenizer
    # may stop below vocab_size on a small corpus; `pretrain.json` records the count). Pretrains on a
    # 200-entity world in well under 30 min on 2 cores. Context 512 like every preset, so an ICL
    # prompt and a TL document at the TAALM paper's 512 tokens both fit (docs/results/world_v2.md).
    # Before issue 20 this preset was 3 layers, hidden 128, MLP 384, context 128, 600 steps
    # (896,000 parameters at the world-v1 vocab of 2001: "the 0.9M `small`" of older docs).
    "small": Preset(vocab_size=2048, hidden_size=192, num_layers=4, num_heads=4, intermediate_size=512,
                    block_size=512, steps=1500, batch_tokens=2048, lr=3e-3, warmup=50),
    # For a GPU: ~100M parameters.
    "base": Preset(vocab_size=8192, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048,
                   block_size=512, steps=20000, batch_tokens=16384, lr=6e-4, warmup=500, weight_decay=0.1),
}


def weights_hash(model) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order.

    Why tensors and not the file: the same weights must give the same hash whatever the
    safetensors writer puts in its header; two runs of the same command on the same machine type
    must agree (tests/test_pretrain.py checks it at the tiny size).
    """
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def corpus_hash(files) -> str:
    """sha256 over the bytes of the corpus files, in the order given (names not included)."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- corpus

# --------------------------------------------------------------------------- tokenizer

def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer wrapped as a `PreTrainedTokenizerFast`.

    Why byte-level: every string is encodable (no unknown token), and a leading space is part of
    the token as in GPT-2/Llama-3, which is the tokenization edge case the probe metric must get
    right. Like Llama tokenizers, encoding prepends `<s>`; `</s>` ends documents in training.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        padding_side="right", model_max_length=1_000_000,
    )


def save_tokenizer(tokenizer, out: Path) -> None:
    """`save_pretrained`, naming the class `PreTrainedTokenizerFast` in tokenizer_config.json.

    Why: transformers 5 writes its new backend name, which transformers 4.x cannot resolve; the
    old name loads as the same fast tokenizer in both (metacl supports transformers >= 4.45).
    """
    tokenizer.save_pretrained(out)
    cfg_path = Path(out) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


# --------------------------------------------------------------------------- model

def build_model(preset: Preset, tokenizer, seed: int = 0):
    """A randomly initialised `LlamaForCausalLM` sized by `preset`, matching `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_heads,
        max_position_embeddings=max(preset.block_size, 2048),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,  # fewer parameters; small vocabularies gain nothing from untying
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _windows(docs: list[str], tokenizer, block_size: int) -> list[list[int]]:
    """Token windows: `<s> doc </s>` cut into consecutive pieces of at most `block_size`."""
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    enc = tokenizer(docs, add_special_tokens=True)["input_ids"]
    for ids in enc:
        ids = list(ids) + [eos]
        for start in range(0, len(ids), block_size):
            piece = ids[start:start + block_size]
            if len(piece) >= 2:
                out.append(piece)
    return out


def _epoch_batches(lengths: list[int], batch_tokens: int, gen: torch.Generator) -> list[list[int]]:
    """One epoch of batches of window indices, each of about `batch_tokens` padded tokens.

    Why length buckets: corpora of short fact sentences (mean ~12 tokens, max ~35) waste most of a
    naively padded batch; sorting a shuffled pool by length first keeps padding near zero while
    every document still starts at position 0 after `<s>`, exactly as a probe does.
    """
    order = torch.randperm(len(lengths), generator=gen).tolist()
    pool = 64 * max(1, batch_tokens // max(1, sum(lengths) // max(1, len(lengths))))
    batches: list[list[int]] = []
    for p0 in range(0, len(order), pool):
        chunk = sorted(order[p0:p0 + pool], key=lambda i: lengths[i])
        cur: list[int] = []
        for i in chunk:
            if cur and (len(cur) + 1) * max(lengths[cur[-1]], lengths[i]) > batch_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def _lr_at(step: int, preset: Preset, total: int) -> float:
    """Linear warm-up then cosine decay to 10%: the usual recipe, robust at small scale."""
    if step < preset.warmup:
        return preset.lr * (step + 1) / preset.warmup
    frac = (step - preset.warmup) / max(1, total - preset.warmup)
    return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


# --------------------------------------------------------------------------- entry points

def pretrain(
    corpus_files: list[str | os.PathLike],
    size: str,
    out_dir: str | os.PathLike,
    seed: int = 0,
    steps: int | None = None,
    batch_tokens: int | None = None,
    lr: float | None = None,
    epochs: float | None = None,
    device: str | torch.device | None = None,
    log_every: int = 10,
    command: str | None = None,
) -> dict:
    """Train tokenizer + LM on `corpus_files` and save both to `out_dir`; returns a summary dict.

    `epochs`, when given, sets the number of steps to that many passes over the corpus (it
    overrides `steps`). Writes `out_dir/config.json`, weights (safetensors), tokenizer files,
    `pretrain_log.jsonl` (step, epoch, loss, lr, seconds) and `pretrain.json` (the summary).
    """
    if size not in PRESETS:
        raise MetaclError(f"unknown --size {size!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[size]
    overrides = {k: v for k, v in {"steps": steps, "batch_tokens": batch_tokens, "lr": lr}.items() if v is not None}
    if overrides.get("steps", 1) < 1 or overrides.get("batch_tokens", 1) < 1:
        raise MetaclError("--steps and --batch-tokens must be positive integers; pass e.g. --steps 100")
    if epochs is not None and epochs <= 0:
        raise MetaclError(f"--epochs {epochs} must be positive; pass e.g. --epochs 30")
    if lr is not None and not lr > 0:
        raise MetaclError(f"--lr {lr} must be > 0; pass e.g. --lr 3e-3")
    preset = replace(preset, **overrides)
    out = Path(out_dir)
    from metacl.utils import check_out_kind

    check_out_kind(out, "pretrain")  # never overwrite another kind of run's files
    docs = read_corpus(corpus_files)  # a bad corpus fails before --out is created
    out.mkdir(parents=True, exist_ok=True)
    device = default_device(device)

    t0 = time.time()
    gen = seed_everything(seed)
    tokenizer = train_tokenizer(docs, preset.vocab_size)
    model = build_model(preset, tokenizer, seed=seed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    seqs = _windows(docs, tokenizer, preset.block_size)
    n_tokens = sum(len(s) for s in seqs)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": preset.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=preset.lr, betas=(0.9, 0.95),
    )
    log_path = out / "pretrain_log.jsonl"
    log_path.unlink(missing_ok=True)
    model.train()
    lengths = [len(x) for x in seqs]
    if epochs is not None:
        per_epoch = len(_epoch_batches(lengths, preset.batch_tokens, torch.Generator().manual_seed(seed)))
        preset = replace(preset, steps=max(1, math.ceil(epochs * per_epoch)))
    queue: list[list[int]] = []
    epoch, loss_val = 0, float("nan")  # epoch: passes over the corpus begun so far
    with open(log_path, "w") as log:
        for step in tqdm(range(preset.steps), desc=f"pretrain {size}", disable=None):
            if not queue:
                queue, epoch = _epoch_batches(lengths, preset.batch_tokens, gen), epoch + 1
            idx = queue.pop()
            batch = {k: v.to(device) for k, v in collate([seqs[i] for i in idx], tokenizer.pad_token_id).items()}
            lr_now = _lr_at(step, preset, preset.steps)
            for g in opt.param_groups:
                g["lr"] = lr_now
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_val = loss.item()
            if step % log_every == 0 or step == preset.steps - 1:
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": round(loss_val, 5), "lr": lr_now,
                                      "seconds": round(time.time() - t0, 2)}) + "\n")
                log.flush()
    model.eval()
    from metacl.models.loading import quiet_hf_saving

    with quiet_hf_saving():
        model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    summary = {
        "size": size, "preset": asdict(preset), "seed": seed, "corpus": [str(f) for f in corpus_files],
        "documents": len(docs), "windows": len(seqs), "tokens": n_tokens, "epochs": epoch, "parameters": n_params,
        "vocab_size": len(tokenizer), "final_loss": loss_val, "seconds": round(time.time() - t0, 2),
        "device": str(device), "out_dir": str(out),
        "config": model.config.to_dict(), "corpus_sha256": corpus_hash(corpus_files),
        "weights_sha256": weights_hash(model), "torch": torch.__version__, "command": command,
    }
    write_json_atomic(out / "pretrain.json", summary)
    return summary


DEFAULT_TEST_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Ada Quill works for Northwind Labs in the city of Port Avery.",
    "Paris is the capital of France. Rome is the capital of Italy.",
    "Marco Vell was born in Lisbon and plays the violin.",
    "The novel Silent Harbor was written by Ada Quill in 1998.",
    "Tokens with a leading space differ from tokens without one.",
]


def tiny_model_for_tests(out_dir: str | os.PathLike, texts: list[str] | None = None, seed: int = 0,
                         vocab_size: int = 320) -> Path:
    """Save a randomly initialised tiny Llama + BPE tokenizer to `out_dir` and return the path.

    Why: tests of the engine, metrics and strategies need a *real* HF causal LM on disk (loaded by
    path like any checkpoint) but must run in well under a second of training. No training here:
    the tokenizer is fit on `texts` (plus a few default sentences) and the weights stay random.
    Load it with `metacl.models.load_model_and_tokenizer(path)`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(DEFAULT_TEST_TEXT + list(texts or []), vocab_size)
    preset = replace(PRESETS["tiny"], hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = build_model(preset, tokenizer, seed=seed)
    from metacl.models.loading import quiet_hf_saving

    with quiet_hf_saving():
        model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out
