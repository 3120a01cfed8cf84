"""Load any local Hugging Face causal LM and its tokenizer by path.

Why one function: every command (`ckl run`, `meta-train`, `demo`) takes `--model PATH`, and the
failure modes a user meets (a typo in the path, a folder holding an encoder-only model, a
checkpoint saved without its tokenizer) should each give one clear line, not a transformers
traceback. Nothing here knows about metacl's own pretrained models: they are ordinary HF folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from metacl.errors import MetaclError

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
    """Cheap checks (no weights loaded): the folder exists, has a readable config of a causal LM.

    Returns the config. Commands call this before they write any output, so a wrong `--model`
    leaves nothing half-written.
    """
    from transformers import AutoConfig

    p = Path(path)
    if not p.exists():
        raise MetaclError(f"model path {p} does not exist; pass a folder written by save_pretrained (e.g. `metacl pretrain --out DIR`)")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise MetaclError(f"model path {p} has no config.json; pass a folder written by save_pretrained")
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
    return config


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
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = _dtype(dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    except (OSError, ValueError) as e:
        raise MetaclError(f"could not load the model weights in {p} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "check that the folder is complete") from e
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # a pad token was added above
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    return model, tokenizer
