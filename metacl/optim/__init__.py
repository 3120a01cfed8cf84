"""The learned optimizer: a drop-in `torch.optim.Optimizer` (`LearnedOptimizer`) and its
functional twin for meta-training (`LearnedFunctional`). See docs/results/learned_optimizer.md."""

from metacl.optim.functional import LearnedFunctional
from metacl.optim.learned import LearnedOptimizer, load_meta, load_optimizer, save_meta, shipped_weights
from metacl.optim.network import NetConfig, init_meta

__all__ = ["LearnedOptimizer", "LearnedFunctional", "NetConfig", "init_meta", "load_meta", "load_optimizer", "save_meta", "shipped_weights"]
