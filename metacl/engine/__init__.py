"""metacl.engine: differentiable inner loops for meta-learning (see docs/engine.md).

    from metacl.engine import unroll, sgd, adamw, lm_loss
    params_K, state_K = unroll(model, params, loss_fn, batches, optimizer=adamw(lr=1e-3))
"""

from metacl.engine.active_rows import input_embedding_rows
from metacl.engine.attention import find_non_double_differentiable, second_order_attention
from metacl.engine.compiled_unroll import compiled_unroll_loss
from metacl.engine.losses import functional_loss, label_mask, lm_loss, nll_from_logits, token_nll
from metacl.engine.optimizers import FunctionalOptimizer, adamw, sgd
from metacl.engine.unroll import per_example_loss, unroll

__all__ = [
    "unroll",
    "compiled_unroll_loss",
    "input_embedding_rows",
    "per_example_loss",
    "sgd",
    "adamw",
    "FunctionalOptimizer",
    "lm_loss",
    "token_nll",
    "label_mask",
    "nll_from_logits",
    "functional_loss",
    "second_order_attention",
    "find_non_double_differentiable",
]
