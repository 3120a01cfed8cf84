"""metacl: meta-learning for continual learning of language models.

Data flows one way: data -> model -> strategy -> engine -> metrics.
- `metacl.engine`      differentiable inner loops (bilevel optimisation) on torch.func.
- `metacl.data`        LAMA-ckl loader and generated worlds.
- `metacl.models`      a locally pretrained Llama-style base LM, model loading by path.
- `metacl.ckl`         the continual-knowledge-learning protocol, metrics, reports.
- `metacl.strategies`  continual-learning strategies as small hook objects.
- `metacl.meta`        meta-learners (token-importance predictor).
- `metacl.optim`       the learned optimizer, a drop-in torch.optim.Optimizer.
- `metacl.benchmarks`  non-LM benchmarks (Split-Digits) and task sequences.
"""

__version__ = "0.1.0"
