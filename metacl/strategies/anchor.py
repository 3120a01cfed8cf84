"""Snapshots of parameters and the quadratic pull towards them (EWC, NCL, RecAdam, A-GEM)."""

from __future__ import annotations

from typing import Iterable

import torch

NamedTensors = dict[str, torch.Tensor]


def snapshot(named: Iterable[tuple[str, torch.Tensor]]) -> NamedTensors:
    """Detached copies of parameters, e.g. the anchor theta* of EWC or theta_0 of RecAdam."""
    return {n: p.detach().clone() for n, p in named}


def flat_dot(a: NamedTensors, b: NamedTensors) -> torch.Tensor:
    return sum((a[n].double() * b[n].double()).sum() for n in a if n in b)


class QuadraticAnchor:
    """An online diagonal Gaussian prior around an anchor: penalty 1/2 sum F (theta - theta*)^2.

    `consolidate` implements the online-EWC update F <- gamma F_old + F_new and moves the
    anchor to the current parameters. EWC uses the penalty as a loss; NCL also uses F as the
    precision of its preconditioner.
    """

    def __init__(self, gamma: float = 1.0):
        self.gamma = float(gamma)
        self.fisher: NamedTensors = {}
        self.anchor: NamedTensors = {}

    @property
    def empty(self) -> bool:
        return not self.fisher

    def consolidate(self, new_fisher: NamedTensors, named) -> None:
        for n, f in new_fisher.items():
            old = self.fisher.get(n)
            self.fisher[n] = f.detach().clone() if old is None else self.gamma * old + f.detach()
        self.anchor = snapshot(named)

    def set_anchor(self, named) -> None:
        self.anchor = snapshot(named)

    def penalty(self, named) -> torch.Tensor:
        """1/2 sum_i F_i (theta_i - theta*_i)^2 over the parameters that have a Fisher entry."""
        total = None
        for n, p in named:
            if n not in self.fisher or n not in self.anchor:
                continue
            d = p - self.anchor[n].to(p.device)
            term = 0.5 * (self.fisher[n].to(p.device) * d * d).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total

    def state(self, prefix: str) -> NamedTensors:
        """Tensors to checkpoint (safetensors-friendly flat names)."""
        out = {f"{prefix}.fisher.{n}": t for n, t in self.fisher.items()}
        out.update({f"{prefix}.anchor.{n}": t for n, t in self.anchor.items()})
        return out
