"""Base language models: load any local causal LM by path, or pretrain a small one from scratch.

See docs/architecture.md. Import the submodules directly for the full API.
"""

from metacl.models.loading import load_model_and_tokenizer, load_tokenizer
from metacl.models.pretrain import PRESETS, pretrain, tiny_model_for_tests

__all__ = ["load_model_and_tokenizer", "load_tokenizer", "pretrain", "tiny_model_for_tests", "PRESETS"]
