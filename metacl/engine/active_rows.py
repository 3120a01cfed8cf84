"""`unroll(..., active_rows=...)`: leave rows that get no gradient out of the inner loop.

Why: an LM's input embedding gets a gradient only in the rows of the tokens it reads. In a
token-weighting meta-step (8192-token vocabulary, 64-token documents) more than 99% of its
rows, a quarter of all parameters, receive a gradient of exactly 0 at every inner step; with a
zero optimizer state and no weight decay, SGD and AdamW leave such an entry exactly where it
was. Yet each differentiated AdamW step still computed and stored, and its backward
re-read, the whole matrix. With `active_rows={name: rows}` the inner loop updates only
`params[name][rows]`; the loss sees the full tensor rebuilt from the fixed rows and the
updated ones (`index_copy`, differentiable in both), and the returned params are full-size.

Exact, not an approximation, when (a) the loss's gradient w.r.t. `params[name]` is zero
outside `rows` for every batch (the caller's promise: `input_embedding_rows` gives it for the
input embedding of an untied HF LM, whose only use is the lookup of `input_ids`), and (b) the
optimizer leaves an entry with zero gradient and zero state unchanged: `sgd` and `adamw`
without weight decay, starting from a fresh state (checked here; anything else is refused).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from metacl.errors import MetaclError

Rows = dict[str, Tensor]


def check(params: dict[str, Tensor], active_rows: Rows, optimizer: Any, state: Any) -> None:
    """Refuse settings where leaving the other rows out would change the result."""
    from metacl.engine.optimizers import adamw, sgd

    if not isinstance(optimizer, (sgd, adamw)) or optimizer.weight_decay != 0:
        raise MetaclError(f"unroll: active_rows needs metacl.engine.sgd or adamw without weight decay (got {optimizer!r}): "
                          "other optimizers may move rows that get no gradient; drop active_rows")
    if state is not None:
        raise MetaclError("unroll: active_rows needs a fresh optimizer state (state=None): rows left out must start at zero state")
    for name, rows in active_rows.items():
        if name not in params:
            raise MetaclError(f"unroll: active_rows names '{name}', which is not in params (known: {sorted(params)[:5]}...)")
        p = params[name]
        if not isinstance(rows, Tensor) or rows.dim() != 1 or rows.dtype != torch.long or p.dim() < 1:
            raise MetaclError(f"unroll: active_rows['{name}'] must be a 1-D LongTensor of row indices of a tensor with >= 1 dim")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= p.shape[0]):
            raise MetaclError(f"unroll: active_rows['{name}'] has rows outside [0, {p.shape[0]})")


def select(params: dict[str, Tensor], active_rows: Rows) -> dict[str, Tensor]:
    """The inner loop's params: the active rows of each named tensor, the others whole."""
    return {n: (p.index_select(0, active_rows[n].to(p.device)) if n in active_rows else p) for n, p in params.items()}


def rebuild(full: dict[str, Tensor], sub: dict[str, Tensor], active_rows: Rows) -> dict[str, Tensor]:
    """Full-size params from the fixed `full` tensors and the updated active rows in `sub`."""
    out = dict(sub)
    for n, rows in active_rows.items():
        out[n] = full[n].index_copy(0, rows.to(full[n].device), sub[n])
    return out


def wrap_loss(loss_fn: Any, full: dict[str, Tensor], active_rows: Rows) -> Any:
    def loss_on_rows(model: nn.Module, sub: dict[str, Tensor], batch: Any) -> Tensor:
        return loss_fn(model, rebuild(full, sub, active_rows), batch)

    return loss_on_rows


def rebuild_state(state: Any, full: dict[str, Tensor], active_rows: Rows, lead: tuple[int, ...] = ()) -> Any:
    """The optimizer state at full size: zeros (the fresh state) outside the active rows."""
    if not isinstance(state, dict):
        return state
    out = {}
    for key, val in state.items():
        if isinstance(val, dict):
            val = dict(val)
            for n, rows in active_rows.items():
                if n in val:
                    z = torch.zeros(*lead, *full[n].shape, dtype=val[n].dtype, device=val[n].device)
                    val[n] = z.index_copy(len(lead), rows.to(z.device), val[n])
        out[key] = val
    return out


def input_embedding_rows(model: nn.Module, params: dict[str, Tensor], batches: Sequence[Any]) -> Rows:
    """{name: rows} for the input embedding of `model`: the token ids found in any batch's `input_ids`.

    Empty (nothing left out) when the embedding is tied to the output layer (the LM head then
    gives every row a gradient), when it is not among `params` (LoRA), or when the model has none.
    """
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if not isinstance(emb, nn.Embedding):
        return {}
    head = get_out() if callable(get_out) else None
    if head is not None and getattr(head, "weight", None) is emb.weight:
        return {}
    names = [n for n, p in model.named_parameters() if p is emb.weight and n in params]
    if not names:
        return {}
    ids = [b["input_ids"].reshape(-1) for b in batches if isinstance(b, dict) and isinstance(b.get("input_ids"), Tensor)]
    if len(ids) != len(batches):
        return {}
    rows = torch.unique(torch.cat(ids)).to(torch.long)
    return {names[0]: rows}


def fixed_size(rows: Rows, params: dict[str, Tensor], size: int) -> Rows:
    """The same rows, each set padded to exactly `size` (or all rows) with rows nobody reads, sorted.

    Why: a compiled inner loop (`compiled_unroll_loss`) recompiles for every new shape, and the
    number of distinct tokens changes from batch to batch. Extra rows with no gradient stay
    exactly where they are (the module docstring's conditions), so padding changes nothing but
    the shape: pass an upper bound such as the number of token positions in the batch.
    """
    out = {}
    for name, r in rows.items():
        n = params[name].shape[0]
        used = torch.zeros(n, dtype=torch.bool, device=r.device)
        used[r] = True
        need = max(0, min(size, n) - int(used.sum()))
        used[torch.nonzero(~used).reshape(-1)[:need]] = True  # the first unread rows make up the count
        out[name] = torch.nonzero(used).reshape(-1)  # sorted, each row once
    return out
