"""TokenWeighter: reads a document and says how much each token should count when an LM learns it.

Why a separate model: plain fine-tuning spends most of its update on tokens that carry no new
knowledge ("the", "is", boilerplate), and those updates are what overwrite old facts. TAALM
(Seo et al. 2024) trains a second network to put weight on the few tokens that matter; the base
LM then learns the document with the weighted loss `sum(w * nll) / sum(w)`.

Shape of the thing:
- backbone: a causal transformer that uses the *same tokenizer* as the base LM (by default a copy
  of the base LM's own body, so it starts out knowing the language the LM knows);
- head: `sigmoid(Linear(hidden, 1))`, initialised with tiny weights and bias +4, so every
  weight starts near 0.98 and the untrained weighter behaves like plain fine-tuning.
  Options (`metacl.meta.options`, hypotheses of issue 19): `activation="softplus"` (unbounded
  weights starting at 1, as CaMeLS) and `temperature` T (weights = act(z / T), the head init scaled by
  T so the start is unchanged); `loss_norm` says how the weights are meant to be used:
  "weights" = `sum(w * nll) / sum(w)` (default), "tokens" = `sum(w * nll) / n_tokens`. All three
  are saved with the weighter, so `--strategy taalm` deploys it the way it was meta-trained.

Alignment: `forward` returns `w` of shape (B, T) aligned with the *labels*: `w[:, t]` weighs the
loss of predicting token `t`. It is computed from the hidden state at position `t`, which has
read token `t` itself (and everything before it): a weighter that could not see the token it
weighs would have to guess whether it is an object token. Position 0 is never a label (nothing
predicts it), padding gets weight 0.

Untrusted folders: weights are read from safetensors only (`use_safetensors=True`); a backbone or
saved weighter that holds only a pickle (`pytorch_model.bin`, `.pt`) is refused, never unpickled.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metacl.errors import MetaclError

CONFIG_NAME = "token_weighter.json"
HEAD_NAME = "head.safetensors"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1
ACTIVATIONS = ("sigmoid", "softplus")
LOSS_NORMS = ("weights", "tokens")  # sum(w*nll)/sum(w) | sum(w*nll)/n_tokens


def _body_of(lm: nn.Module) -> nn.Module:
    """The transformer body of an HF causal LM (LlamaForCausalLM.model, GPT2LMHeadModel.transformer, ...).

    PEFT-wrapped models are unwrapped first. The LM head is dropped: the weighter has its own head.
    """
    if hasattr(lm, "get_base_model"):  # peft.PeftModel
        lm = lm.get_base_model()
    prefix = getattr(lm, "base_model_prefix", None)
    if prefix and hasattr(lm, prefix):
        return getattr(lm, prefix)
    if hasattr(lm, "get_decoder"):
        return lm.get_decoder()
    raise MetaclError(
        f"cannot find the transformer body of {type(lm).__name__}; pass a Hugging Face causal LM "
        "(one with `base_model_prefix`, e.g. LlamaForCausalLM)"
    )


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What must match between the weighter's and the base LM's tokenizer: the token -> id map."""
    vocab = tokenizer.get_vocab()
    import hashlib

    h = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    return {"vocab_size": len(vocab), "vocab_sha256": h}


def check_same_tokenizer(a: Any, b: Any, where: str) -> None:
    """Raise a one-line MetaclError when two tokenizers would map text to different ids."""
    fa, fb = tokenizer_fingerprint(a), tokenizer_fingerprint(b)
    if fa != fb:
        raise MetaclError(
            f"{where}: tokenizer differs from the base LM's (vocab {fa['vocab_size']} vs {fb['vocab_size']} tokens, "
            "different token ids); the token weighter must share the base LM's tokenizer: build it from the base LM "
            "(the default) or pick a backbone trained with the same tokenizer"
        )


def backbone_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved in a backbone folder (cheap: no weights), or a one-line error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise MetaclError(f"token-weighter backbone {path} has no loadable tokenizer ({type(e).__name__}); "
                          "save the tokenizer next to the model") from e


def check_saved_weighter_tokenizer(path: str | os.PathLike, base_tokenizer: Any) -> Any:
    """Cheap pre-flight (no weights loaded): does the weighter saved at `path` fit this tokenizer?

    Commands call this before they write anything, so a predictor built for another base LM
    is refused up front instead of after the output folder has been set up. Returns the
    weighter's own saved tokenizer (None when it saved only a fingerprint).
    """
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() and (path / "best" / CONFIG_NAME).is_file():
        path = path / "best"
    cfg_path = path / CONFIG_NAME
    if not path.exists():
        raise MetaclError(f"token weighter {path} does not exist; pass the --out folder of "
                          "`metacl meta-train token-weighting` (or its best/ subfolder)")
    if not cfg_path.is_file():
        raise MetaclError(f"{path} is not a token weighter (no {CONFIG_NAME}); pass the --out directory of "
                          "`metacl meta-train token-weighting` (or its best/ subfolder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise MetaclError(f"token weighter config {cfg_path} is corrupt ({type(e).__name__}); "
                          "re-run meta-training or point to another copy") from e
    if not isinstance(cfg, dict):
        raise MetaclError(f"token weighter config {cfg_path} is not a JSON object; re-run meta-training")
    if (path / "tokenizer_config.json").is_file():
        saved = backbone_tokenizer(path)
        check_same_tokenizer(saved, base_tokenizer, f"token weighter {path}")
        return saved
    if "tokenizer" in cfg and cfg["tokenizer"] != tokenizer_fingerprint(base_tokenizer):
        raise MetaclError(f"token weighter {path}: tokenizer differs from the base LM's; "
                          "meta-train a weighter for this base LM (same tokenizer)")
    return None


class TokenWeighter(nn.Module):
    """Per-token importance weights in (0, 1); see the module docstring for why and how."""

    def __init__(self, backbone: nn.Module, hidden_size: int, init_bias: float | None = None, init_std: float = 1e-3,
                 activation: str = "sigmoid", temperature: float = 1.0, loss_norm: str = "weights"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise MetaclError(f"token-weighter activation {activation!r} is unknown; choose from {', '.join(ACTIVATIONS)}")
        if not temperature > 0:
            raise MetaclError(f"token-weighter temperature {temperature} must be > 0; pass e.g. 0.5")
        if loss_norm not in LOSS_NORMS:
            raise MetaclError(f"token-weighter loss_norm {loss_norm!r} is unknown; choose from {', '.join(LOSS_NORMS)}")
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        self.activation, self.temperature, self.loss_norm = activation, float(temperature), loss_norm
        if init_bias is None:  # sigmoid(4) = 0.982; softplus(log(e - 1)) = 1: every weight starts near 1
            init_bias = 4.0 if activation == "sigmoid" else math.log(math.expm1(1.0))
        with torch.no_grad():
            self.head.weight.normal_(0.0, init_std * self.temperature)  # head / T starts the same for every T
            self.head.bias.fill_(init_bias * self.temperature)
        self.tokenizer: Any = None  # kept alongside so save_pretrained writes it too
        self.init_bias = init_bias

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_base_lm(cls, lm: nn.Module, tokenizer: Any = None, init_bias: float | None = None, **head: Any) -> "TokenWeighter":
        """Default: a copy of the base LM's own body (the base LM itself is left untouched).

        `head`: activation, temperature, loss_norm (see the module docstring)."""
        body = copy.deepcopy(_body_of(lm))
        for p in body.parameters():
            p.requires_grad_(True)
        tw = cls(body, body.config.hidden_size, init_bias=init_bias, **head)
        tw.to(dtype=next(body.parameters()).dtype)
        tw.tokenizer = tokenizer
        return tw

    @classmethod
    def from_model_path(cls, path: str | os.PathLike, base_tokenizer: Any, init_bias: float | None = None,
                        **head: Any) -> "TokenWeighter":
        """Any local HF causal LM as backbone, provided its tokenizer matches the base LM's."""
        from transformers import AutoModelForCausalLM

        from metacl.models.loading import check_causal_lm_path, quiet_hf_loading

        path = Path(path)
        if not path.is_dir():
            where = "does not exist" if not path.exists() else "is not a directory"
            raise MetaclError(f"token-weighter backbone {path} {where}; pass a local Hugging Face model folder")
        check_causal_lm_path(path)  # also refuses pickle-only and weightless folders
        tok = backbone_tokenizer(path)
        check_same_tokenizer(tok, base_tokenizer, f"token-weighter backbone {path}")
        try:
            with quiet_hf_loading():
                lm = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True)
        except Exception as e:
            raise MetaclError(f"token-weighter backbone {path}: weights unreadable ({type(e).__name__}); "
                              "re-save the model with save_pretrained") from e
        return cls.from_base_lm(lm, base_tokenizer, init_bias=init_bias, **head)

    # --- forward --------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) weights in (0, 1) aligned with next-token labels; 0 at padding and at position 0."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        z = self.head(hidden).squeeze(-1) / self.temperature
        w = torch.sigmoid(z) if self.activation == "sigmoid" else torch.nn.functional.softplus(z)
        keep = attention_mask.to(w.dtype).clone()
        keep[:, 0] = 0  # nothing predicts the first token
        return w * keep

    @torch.no_grad()
    def weights_for_text(self, text: str, tokenizer: Any = None, max_length: int = 256) -> tuple[list[str], list[float]]:
        """Tokens of `text` and their weights (for inspection and pictures)."""
        tok = tokenizer or self.tokenizer
        if tok is None:
            raise MetaclError("TokenWeighter has no tokenizer; pass tokenizer= or load it with from_pretrained")
        enc = tok(text, return_tensors="pt", truncation=True, max_length=max_length)
        dev = next(self.parameters()).device
        w = self(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))[0].float().cpu().tolist()
        toks = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
        return toks, w

    # --- persistence ----------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write backbone (HF safetensors), head (safetensors), config JSON and the tokenizer."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from metacl.models.loading import quiet_hf_saving

        with quiet_hf_saving():
            self.backbone.save_pretrained(str(out / BACKBONE_DIR), safe_serialization=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}, str(out / HEAD_NAME))
        cfg = {
            "format_version": FORMAT_VERSION,
            "kind": "metacl.TokenWeighter",
            "hidden_size": self.head.in_features,
            "init_bias": self.init_bias,
            "dtype": str(self.head.weight.dtype).replace("torch.", ""),
        }
        if (self.activation, self.temperature, self.loss_norm) != ("sigmoid", 1.0, "weights"):
            cfg.update(activation=self.activation, temperature=self.temperature, loss_norm=self.loss_norm)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(out))
            cfg["tokenizer"] = tokenizer_fingerprint(self.tokenizer)
        cfg.update(extra or {})
        from metacl.utils import write_json_atomic

        write_json_atomic(out / CONFIG_NAME, cfg)
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, base_tokenizer: Any = None,
                        device: str | torch.device = "cpu") -> "TokenWeighter":
        """Load a saved weighter; with `base_tokenizer`, refuse one trained for another tokenizer."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() and (path / "best" / CONFIG_NAME).is_file():
            path = path / "best"  # the --out folder of meta-training: use its best weighter
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise MetaclError(
                f"{path} is not a token weighter (no {CONFIG_NAME}); pass the --out directory of "
                "`metacl meta-train token-weighting` (or its best/ subfolder)"
            )
        from metacl.errors import CheckpointError
        from metacl.models.loading import check_safetensors_weights, quiet_hf_loading

        saved_tok = None
        if base_tokenizer is not None:  # cheap, before any weights are read
            saved_tok = check_saved_weighter_tokenizer(path, base_tokenizer)
        check_safetensors_weights(path / BACKBONE_DIR, "token-weighter backbone")
        try:
            cfg = json.loads(cfg_path.read_text())
            dtype = getattr(torch, cfg.get("dtype", "float32"))
            with quiet_hf_loading():
                backbone = AutoModel.from_pretrained(str(path / BACKBONE_DIR), dtype=dtype, use_safetensors=True)
            head = load_file(str(path / HEAD_NAME))
            tw = cls(backbone, cfg["hidden_size"], init_bias=cfg.get("init_bias", 4.0),
                     activation=cfg.get("activation", "sigmoid"), temperature=cfg.get("temperature", 1.0),
                     loss_norm=cfg.get("loss_norm", "weights"))
            tw.head.to(dtype)
            tw.head.load_state_dict(head)
        except MetaclError:
            raise
        except Exception as e:
            msg = " ".join(str(e).split())[:200]
            raise CheckpointError(f"token weighter at {path} is corrupt or unreadable ({type(e).__name__}: {msg}); "
                                  "re-run meta-training or point to another copy") from e
        if base_tokenizer is not None:  # already checked against the saved one above
            tw.tokenizer = saved_tok or base_tokenizer
        else:
            tw.tokenizer = backbone_tokenizer(path) if (path / "tokenizer_config.json").is_file() else None
        return tw.to(device).eval()
