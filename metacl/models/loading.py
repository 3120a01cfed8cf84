"""Load any local Hugging Face causal LM and its tokenizer by path.

Why one function: every command (`ckl run`, `meta-train`, `demo`) takes `--model PATH`, and the
failure modes a user meets (a typo in the path, a folder holding an encoder-only model, a
checkpoint saved without its tokenizer) should each give one clear line, not a transformers
traceback. Nothing here knows about metacl's own pretrained models: they are ordinary HF folders.

Untrusted folders never execute code: weights are read from safetensors only
(`use_safetensors=True`), so a `pytorch_model.bin` / `.pt` pickle in a downloaded folder is
refused with a one-line error instead of being unpickled, and `trust_remote_code` is never set.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from metacl.errors import MetaclError
from metacl.utils import default_device

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise MetaclError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in `path`, with a pad token guaranteed (batched training pads)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise MetaclError(
            f"model folder {path} has no usable tokenizer ({type(e).__name__}); save one there with "
            "tokenizer.save_pretrained(PATH)"
        ) from e
    if tok is None or not callable(tok):
        raise MetaclError(f"model folder {path} has no usable tokenizer; save one there with tokenizer.save_pretrained(PATH)")
    if tok.pad_token is None:
        # Reusing EOS as padding is safe: padded positions are masked out of every loss and metric.
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def check_causal_lm_path(path: str | os.PathLike):
    """Cheap checks (no weights loaded): the folder exists, has a readable config of a causal LM
    and safetensors weights.

    Returns the config. Commands call this before they write any output, so a wrong `--model`
    leaves nothing half-written.
    """
    from transformers import AutoConfig

    p = Path(path)
    if not p.exists():
        raise MetaclError(f"model path {p} does not exist; pass a folder written by save_pretrained (e.g. `metacl pretrain --out DIR`)")
    if not p.is_dir():
        raise MetaclError(f"model path {p} is a file, not a model folder; pass the folder written by save_pretrained")
    if not (p / "config.json").is_file():
        raise MetaclError(f"model path {p} has no config.json (not a saved model); pass a folder written by save_pretrained")
    try:
        config = AutoConfig.from_pretrained(str(p))
    except Exception as e:
        raise MetaclError(f"model config {p / 'config.json'} is unreadable ({type(e).__name__}: {e}); re-save the model") from e
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise MetaclError(
            f"model at {p} is a {config.model_type!r} model, not a causal LM; pass a decoder model "
            "(Llama, GPT-2, Mistral, ...) saved with save_pretrained"
        )
    check_safetensors_weights(p)  # pickle-only or weightless folders fail here too, before any output
    return config


@contextlib.contextmanager
def quiet_hf_loading():
    """Silence transformers' per-load progress bars and info logs for the duration of a load.

    Why: a CLI's stderr is for metacl's own progress and for the one-line error of bad input; a
    "Loading weights" bar per model (several per run) buries both.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# Pickle-based weight files: loading them means unpickling, which can run arbitrary code.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_safetensors_weights(path: str | os.PathLike, what: str = "model") -> None:
    """Refuse a folder whose weights exist only as pickles (a one-line error, nothing unpickled)."""
    p = Path(path)
    if any(p.glob("*.safetensors")) or any(p.glob("*.safetensors.index.json")):
        return
    pickles = sorted(f.name for pat in PICKLE_WEIGHTS for f in p.glob(pat))
    if pickles:
        raise MetaclError(f"{what} folder {p} holds only pickle weights ({', '.join(pickles[:3])}), which metacl never "
                          "loads (unpickling can run code); re-save it with save_pretrained(PATH, safe_serialization=True)")
    raise MetaclError(f"{what} folder {p} has no weights (*.safetensors); pass a complete folder written by save_pretrained")


def load_model_and_tokenizer(path: str | os.PathLike, device: str | torch.device | None = None,
                             dtype: str | torch.dtype | None = None,
                             attn_implementation: str | None = None):
    """Return `(model, tokenizer)` for the causal LM saved at `path`, in eval mode on `device`.

    `attn_implementation="eager"` is what second-order meta-gradients need (fused attention
    kernels have no double backward); `None` keeps the transformers default.
    """
    from transformers import AutoModelForCausalLM

    p = Path(path)
    check_causal_lm_path(p)
    tokenizer = load_tokenizer(p)
    kwargs = {"use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = _dtype(dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with quiet_hf_loading():
            model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    except Exception as e:  # truncated or mismatched safetensors, missing shards, ...
        raise MetaclError(f"could not load the model weights in {p} ({type(e).__name__}: {(str(e).splitlines() or [''])[0]}); "
                          "check that the folder is complete") from e
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # a pad token was added above
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    device = default_device(device)
    model.to(device).eval()
    return model, tokenizer
