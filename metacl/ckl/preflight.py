"""Checks of a `ckl run` against its model, made before the run writes anything.

Kept apart from the protocol so that each check is one call there (`fit_run_to_model`), and so
that every refusal here happens before `--out` is touched (issue 17, item 1).
"""

from __future__ import annotations

from typing import Any, Sequence

from metacl.models.context import check_probes_fit, context_length, fit_max_length


def fit_run_to_model(cfg: Any, model_config: Any, probe_sets: dict[str, Sequence[Any]]) -> None:
    """Clamp `cfg.max_length` to the model's context (one notice) and refuse probes that do not fit.

    `probe_sets`: {"TL": items, "NF": items, ...}, named in the error line.
    """
    ctx = context_length(model_config)
    if ctx is not None:  # refusals first: a refused run prints its one error line and nothing else
        from metacl.models.loading import load_tokenizer

        tok = load_tokenizer(cfg.model)
        for name, items in probe_sets.items():
            check_probes_fit(tok, list(items), ctx, f"{name} probes", generate=bool(getattr(cfg, "exact_match", True)))
    cfg.max_length = fit_max_length(model_config, int(cfg.max_length))
