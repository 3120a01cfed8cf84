"""Meta-training the learned optimizer through `metacl.engine.unroll`, with a retention term.

One meta-step = one *episode*: a fresh small classifier learns `tasks_per_episode` tasks in a
row with the learned optimizer (`inner_steps` updates per task, `consolidate` at each task
boundary). The meta-loss is

    sum_i  L_i(after task i)                     learn each task
  + retention * mean_{j < n} L_j(after the last task)   ... and still know the earlier ones

where L_j is cross-entropy on task j's *held-out* split (`plasticity > 0` adds a charge for learning
any task less than AdamW does on the same episode: `metacl.optim.plasticity`). The second term is what the anchors'
learned optimizers (VeLO, Vettoruzzo et al.) leave out: it rewards an optimizer that learns the
new task without overwriting what the old ones need.

Estimators: `backprop` differentiates through the unroll (first-order inner gradients by
default, `truncate=k` to differentiate only the last k steps of each task); `es` is antithetic
evolution strategies on the meta-parameters (no backprop; for long horizons).

Optimizee family `digits`: MLPs (hidden 32 or 64) on the *meta* half of scikit-learn digits;
an episode's tasks are 2-class splits with masked heads (task-IL), the same splits on a shared
10-way head (class-IL), or 10-class pixel permutations (`kinds`), and episodes may vary in length
(`min_tasks`..`tasks_per_episode`) so the optimizer sees as many task boundaries as the 5-task
benchmark. `normalize="log_classes"` divides each task's loss by ln(#classes) (the loss of a
chance-level predictor) so that 10-class episodes (loss ~2.3) do not drown out 2-class ones
(~0.3). `toy` is a tiny linear-regression family used by the tests.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacl.engine import adamw, unroll
from metacl.errors import CheckpointError, MetaclError
from metacl.optim import network as nw
from metacl.optim.functional import LearnedFunctional
from metacl.optim.learned import save_meta
from metacl.rng import all_rng_state, set_all_rng_state
from metacl.utils import seed_everything, write_json_atomic


@dataclass
class MetaTrainConfig:
    family: str = "digits"
    steps: int = 200                 # meta-steps (episodes)
    inner_steps: int = 40            # optimizee updates per task
    tasks_per_episode: int = 2
    retention: float = 1.0           # weight of old tasks' held-out loss after the last task
    estimator: str = "backprop"      # backprop | es
    first_order: bool = True         # inner gradients as constants (standard for learned optimizers)
    truncate: int | None = None      # differentiate only the last k inner steps of each task
    es_pairs: int = 4
    es_sigma: float = 0.01
    meta_lr: float = 5e-3
    clip: float = 1.0
    batch_size: int = 32
    init_lr: float = 3e-3            # step size of the untrained (Adam-like) optimizer
    seed: int = 0
    ckpt_every: int = 25
    eval_episodes: int = 8
    baseline_lr: float = 3e-3        # fixed Adam(W) compared against at evaluation
    # episode shape (digits family); the defaults reproduce the original 2-kind, fixed-length episodes
    min_tasks: int | None = None     # if set: episode length uniform in [min_tasks, tasks_per_episode]
    kinds: str = "split,permuted"    # comma list of: split (task-IL, masked 2-class heads), class (class-IL,
                                     # shared 10-way head, no mask), permuted (10-class pixel permutations)
    normalize: str = "none"          # none | log_classes: each task's loss / ln(#classes its head scores)
    learn_reduce: str = "sum"        # sum | mean: how the "learn each task" terms are combined
    meta_batch: int = 1              # episodes per meta-step (split over torchrun ranks); 1 = one episode
    max_bad_steps: int = 10          # stop after this many skipped (non-finite) meta-steps
    precision: str = "fp32"          # fp32 | bf16 (autocast around the episode's forward passes)
    # pricing plasticity (metacl.optim.plasticity): + plasticity * sum_i shortfall of TL_i against AdamW's
    plasticity: float = 0.0          # weight; 0 = off
    plasticity_form: str = "hinge"   # hinge | ratio
    plasticity_lr: float | None = None  # AdamW lr of the reference run (None = baseline_lr); use a tuned one
    head: str = "mlp"                # the optimizer network's per-parameter head (metacl.optim.network.HEADS)
    anchor_start: bool = False       # consolidate at the start of every episode (NetConfig.anchor_start)
    coef_scale: tuple[float, ...] | None = None  # linear head: NetConfig.coef_scale (None = the module default)
    imp_pull: bool = False           # linear head: NetConfig.imp_pull (the importance-weighted pull to the anchor)
    prime_batches: int = 0           # lm families: prime the old importance on this many pre-training batches per
                                     # base LM at the start of every episode (LearnedOptimizer.prime at deployment)
    init_from: str | None = None     # start from these weights (a run dir or a shipped name), not a fresh init:
                                     # a horizon curriculum continues short-horizon weights on longer tasks
    # meta-validation: every val_every steps (and at step 0) score the learned optimizer on val_episodes
    # episodes of stream val_seed and deploy the best weights instead of the last (0 = off: the last)
    val_every: int = 0
    val_episodes: int = 8
    val_seed: int = 101              # the stream `tune_adamw` tunes AdamW on: both sides choose on the same data

    def check(self) -> None:
        if self.family not in FAMILIES:
            raise MetaclError(f"unknown optimizee family {self.family!r}; choose from {', '.join(FAMILIES)}")
        if self.estimator not in ("backprop", "es"):
            raise MetaclError(f"unknown estimator {self.estimator!r}; use 'backprop' or 'es'")
        if self.tasks_per_episode < 1 or self.inner_steps < 1 or self.steps < 0:
            raise MetaclError("--tasks-per-episode and --inner-steps must be >= 1 and --steps >= 0")
        if self.val_every < 0 or (self.val_every > 0 and self.val_episodes < 1):
            raise MetaclError(f"--val-every ({self.val_every}) must be >= 0 and --val-episodes ({self.val_episodes}) >= 1")
        if self.val_every > 0 and self.val_seed == self.seed:
            raise MetaclError(f"--val-seed {self.val_seed} is the held-out test stream (--seed); pick another")
        if self.truncate is not None and not 1 <= self.truncate <= self.inner_steps:
            raise MetaclError(f"--truncate {self.truncate} must be in [1, --inner-steps={self.inner_steps}]")
        if self.min_tasks is not None and not 1 <= self.min_tasks <= self.tasks_per_episode:
            raise MetaclError(f"--min-tasks {self.min_tasks} must be in [1, --tasks-per-episode={self.tasks_per_episode}]")
        bad = sorted(set(self.kind_list()) - set(DIGITS_KINDS)) or ([] if self.kind_list() else ["(empty)"])
        if bad:
            raise MetaclError(f"--kinds: unknown episode kind(s) {', '.join(bad)}; use a comma list of {', '.join(DIGITS_KINDS)}")
        if self.normalize not in ("none", "log_classes"):
            raise MetaclError(f"--normalize {self.normalize!r}: use 'none' or 'log_classes'")
        if self.learn_reduce not in ("sum", "mean"):
            raise MetaclError(f"--learn-reduce {self.learn_reduce!r}: use 'sum' or 'mean'")
        if self.meta_batch < 1 or self.max_bad_steps < 1 or self.ckpt_every < 1:
            raise MetaclError(f"--meta-batch ({self.meta_batch}), --max-bad-steps ({self.max_bad_steps}) and "
                              f"--ckpt-every ({self.ckpt_every}) must be >= 1")
        if self.head not in nw.HEADS:
            raise MetaclError(f"--head {self.head!r}: use one of {', '.join(nw.HEADS)}")
        if self.plasticity < 0 or self.plasticity_form not in ("hinge", "ratio"):
            raise MetaclError(f"--plasticity {self.plasticity} must be >= 0 and --plasticity-form "
                              f"{self.plasticity_form!r} one of hinge, ratio")
        if self.plasticity_lr is not None and not self.plasticity_lr > 0:
            raise MetaclError(f"--plasticity-lr {self.plasticity_lr} must be > 0 (the reference AdamW's lr)")
        if self.imp_pull and self.head != "linear":
            raise MetaclError("--imp-pull needs --head linear (the MLP head has no separate pull)")
        if self.prime_batches < 0:
            raise MetaclError(f"--prime-batches {self.prime_batches} must be >= 0 (0 = no priming)")
        from metacl.precision import check_precision

        check_precision(self.precision)

    def kind_list(self) -> list[str]:
        return [k.strip() for k in self.kinds.split(",") if k.strip()]

    def n_tasks(self, rng: random.Random) -> int:
        """Tasks in the next episode; draws from `rng` only when a range is asked for (keeps old episodes)."""
        if self.min_tasks is None or self.min_tasks == self.tasks_per_episode:
            return self.tasks_per_episode
        return rng.randint(self.min_tasks, self.tasks_per_episode)


from metacl.optim.episodes import DIGITS_KINDS, Episode, digits_episode, toy_episode  # noqa: E402,F401
from metacl.optim.lm_family import FAMILIES as LM_FAMILIES  # noqa: E402  (`lm`, `digits+lm`: tiny LMs on a generated world)

FAMILIES: dict[str, Callable[[random.Random, MetaTrainConfig, str], Episode]] = {
    "digits": digits_episode,
    "toy": toy_episode,
    **LM_FAMILIES,
}


# ----------------------------------------------------------------------------- the meta-loss
def episode_loss(ep: Episode, opt, cfg: MetaTrainConfig, differentiable: bool = True) -> tuple[Tensor, dict]:
    """Run the episode with functional optimizer `opt`; return the meta-loss and its parts.

    `opt` is a LearnedFunctional (consolidated at task boundaries) or any engine optimizer.
    """
    from metacl.optim import plasticity as pl

    params, state, step = ep.params, None, 0
    learn, after, tl = [], [], []
    for i, (train_batches, _) in enumerate(ep.tasks):
        if state is None:
            state = opt.init(params)
            if ep.old_importance is not None and hasattr(opt, "prime"):
                state = opt.prime(params, state, ep.old_importance)
        params, state = unroll(
            ep.model, params, ep.loss_fn, train_batches, optimizer=opt,
            first_order=cfg.first_order or not differentiable,
            truncate=cfg.truncate if differentiable else None,
            state=state, start_step=step,
        )
        step += len(train_batches)
        if not differentiable:
            params = {k: v.detach() for k, v in params.items()}
        learn.append(ep.loss_fn(ep.model, params, ep.tasks[i][1]))
        if cfg.plasticity > 0:
            tl.append(pl.tl_loss(ep, params, i) if ep.tl_loss_fn is not None else learn[-1])
        if hasattr(opt, "consolidate"):
            state = opt.consolidate(params, state)
    old = [ep.loss_fn(ep.model, params, ep.tasks[j][1]) for j in range(len(ep.tasks) - 1)]
    if cfg.normalize == "log_classes" and ep.scales is not None:
        learn = [l / s for l, s in zip(learn, ep.scales)]
        old = [l / s for l, s in zip(old, ep.scales)]
    loss = torch.stack(learn).sum() if cfg.learn_reduce == "sum" else torch.stack(learn).mean()
    if old:
        loss = loss + cfg.retention * torch.stack(old).mean()
    parts = {
        "learn": float(torch.stack(learn).detach().mean()),
        "retain": float(torch.stack(old).detach().mean()) if old else float("nan"),
    }
    if cfg.plasticity > 0:
        gap = pl.penalty(tl, pl.reference_tl(ep, cfg), cfg.plasticity_form)
        loss = loss + cfg.plasticity * gap
        parts["plasticity_gap"] = float(gap.detach())
    return loss, parts


def _safe(x: Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def es_gradient(meta: dict[str, Tensor], ep: Episode, cfg: MetaTrainConfig, net: nw.NetConfig,
                g: torch.Generator) -> tuple[dict[str, Tensor], float]:
    """Antithetic ES estimate of d meta-loss / d meta on one episode (no backprop through the unroll)."""
    grads = {k: torch.zeros_like(v) for k, v in meta.items()}
    losses = []
    for _ in range(cfg.es_pairs):
        eps = {k: torch.randn(v.shape, generator=g) for k, v in meta.items()}
        pair = []
        for sign in (1.0, -1.0):
            m = {k: v.detach() + sign * cfg.es_sigma * eps[k] for k, v in meta.items()}
            L, _ = episode_loss(ep, LearnedFunctional(m, net, total_steps=cfg.inner_steps), cfg, differentiable=False)
            pair.append(float(L) if _safe(L) else 1e3)
        losses += pair
        coef = (pair[0] - pair[1]) / (2 * cfg.es_sigma * cfg.es_pairs)
        for k in grads:
            grads[k] += coef * eps[k]
    return grads, sum(losses) / len(losses)


# ----------------------------------------------------------------------------- evaluation
def evaluate(meta: dict[str, Tensor], net: nw.NetConfig, cfg: MetaTrainConfig, episodes: int, seed: int,
             which: tuple[str, ...] = ("learned", "adam")) -> dict:
    """Mean meta-loss parts on held-out episodes (fresh seeds) for the learned optimizer and Adam."""
    out: dict[str, Any] = {}
    for name in which:
        rng = random.Random(10_000_019 + seed)
        tot, learn, retain = [], [], []
        for _ in range(episodes):
            ep = FAMILIES[cfg.family](rng, cfg, "meta")
            opt = (LearnedFunctional({k: v.detach() for k, v in meta.items()}, net, total_steps=cfg.inner_steps)
                   if name == "learned" else adamw(lr=cfg.baseline_lr))
            L, parts = episode_loss(ep, opt, cfg, differentiable=False)
            tot.append(float(L)); learn.append(parts["learn"]); retain.append(parts["retain"])
        out[name] = {"meta_loss": sum(tot) / episodes, "learn": sum(learn) / episodes, "retain": sum(retain) / episodes}
    return out


# ----------------------------------------------------------------------------- the loop
def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        return "unknown"


def _git_dirty() -> bool | None:
    """Whether the checkout has uncommitted changes (git-ignored files such as runs/ do not count); None if unknown."""
    try:
        return bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True,
                                   cwd=Path(__file__).parent).stdout.strip())
    except Exception:
        return None


class OptimizerMetaLearner:
    """The learned optimizer as a `metacl.metalearner.MetaLearner`: meta-parameters, their Adam, the ES noise.

    Under torchrun every rank samples the same `meta_batch` episodes, runs its equal share,
    and the meta-gradients are averaged (`metacl.distributed`), so N processes take the same
    steps as one process with the same global batch. Only rank 0 writes files.

    A meta-step with a non-finite meta-loss or meta-gradient (a non-finite inner loss reaches
    both) is skipped: no outer update, Adam moments untouched, a `skipped` row in
    metrics.jsonl.
    """

    name = "optimizer"

    def __init__(self, cfg: MetaTrainConfig, out: str | Path, info, net: nw.NetConfig | None = None,
                 command: str | None = None):
        self.cfg, self.out, self.dist = cfg, Path(out), info
        shared = ("head", "anchor_start", "coef_scale", "imp_pull")  # set on both: the net must be what cfg asks for
        if net is not None and any(getattr(net, k) != getattr(cfg, k) for k in shared):
            got = ", ".join(f"{k}={getattr(net, k)!r} vs {getattr(cfg, k)!r}" for k in shared if getattr(net, k) != getattr(cfg, k))
            raise MetaclError(f"meta_train: net and cfg disagree ({got}); set both the same")
        self.net = net or nw.NetConfig(init_lr=cfg.init_lr, head=cfg.head, anchor_start=cfg.anchor_start,
                                       coef_scale=cfg.coef_scale, imp_pull=cfg.imp_pull)
        self.command = command or " ".join(["metacl"] + sys.argv[1:])
        # read now, not when the run ends: the code that trains is the code of the commit checked out at start
        self.git_commit, self.git_dirty = _git_commit(), _git_dirty()
        self.step, self.bad_steps = 0, 0
        self.best: dict[str, Any] | None = None         # meta-validation's best so far (cfg.val_every > 0)
        self.best_meta: dict[str, Tensor] | None = None
        self.setup()

    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.meta = {k: v.requires_grad_(True) for k, v in self._start_meta().items()}
        self.mopt = torch.optim.Adam(list(self.meta.values()), lr=cfg.meta_lr)
        self.es_gen = torch.Generator().manual_seed(cfg.seed + 7)
        self.t0 = time.time()

    def _start_meta(self) -> dict[str, Tensor]:
        """A fresh init, or `cfg.init_from`'s weights when they were saved with this very network config
        (a different head, anchor, scale or init lr would silently mean another optimizer)."""
        if self.cfg.init_from is None:
            return nw.init_meta(self.net, self.cfg.seed)
        from metacl.optim.learned import read_weights

        meta, saved, _ = read_weights(self.cfg.init_from)
        flat = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}  # JSON gives lists
        mine, theirs = flat(self.net.to_dict()), flat(saved.to_dict())
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            got = ", ".join(f"{k}={theirs.get(k)!r} (this run {mine.get(k)!r})" for k in diff)
            raise MetaclError(f"--init-from {self.cfg.init_from}: those weights have another network config ({got}); "
                              "pass the matching --head / --anchor-start / --coef-scale / --init-lr")
        return {k: v.detach().clone().float() for k, v in meta.items()}

    def meta_step(self) -> dict[str, Any]:
        from metacl import distributed as dist
        from metacl.precision import autocast

        cfg, meta, info, step = self.cfg, self.meta, self.dist, self.step
        rng = random.Random(cfg.seed * 1_000_003 + step)  # the global batch: same on every rank, resume-safe
        episodes = [FAMILIES[cfg.family](rng, cfg, "meta") for _ in range(cfg.meta_batch)]
        mine = dist.shard(range(cfg.meta_batch), info)
        self.mopt.zero_grad()
        sums = torch.zeros(4, dtype=torch.float64)  # meta_loss, learn, retain, plasticity gap summed over my episodes
        bad = False
        for i in mine:
            if cfg.estimator == "es":
                # one episode: the run-long generator (today's behaviour); a batch: one stream per
                # (step, episode) so the noise does not depend on which rank runs the episode
                gen = self.es_gen if cfg.meta_batch == 1 else torch.Generator().manual_seed(
                    cfg.seed * 1_000_003 + step * 1_009 + i + 7)
                grads, L = es_gradient(meta, episodes[i], cfg, self.net, gen)
                parts = {"learn": float("nan"), "retain": float("nan")}
                if math.isfinite(L):
                    for k, v in meta.items():
                        v.grad = grads[k] / len(mine) if v.grad is None else v.grad + grads[k] / len(mine)
                else:
                    bad = True
            else:
                with autocast(cfg.precision):
                    loss, parts = episode_loss(episodes[i], LearnedFunctional(meta, self.net, total_steps=cfg.inner_steps), cfg)
                L = float(loss.detach())
                if _safe(loss):
                    (loss / len(mine)).backward()
                else:
                    bad = True
            sums += torch.tensor([L, parts["learn"], parts["retain"], parts.get("plasticity_gap", float("nan"))],
                                 dtype=torch.float64)
        for v in meta.values():
            if v.grad is None:
                v.grad = torch.zeros_like(v)
        stats = sums / len(mine)
        dist.all_reduce_mean_([stats], info)
        dist.all_reduce_mean_([v.grad for v in meta.values()], info)
        bad = bad or not all(_safe(v.grad) for v in meta.values())
        bad = dist.all_reduce_flag(bad, info)  # every rank skips, or none does
        if not bad:
            torch.nn.utils.clip_grad_norm_(list(meta.values()), cfg.clip)
            self.mopt.step()
        L, learn, retain, gap = (float(x) for x in stats)
        self.step += 1
        row = {"step": self.step, "meta_loss": L, "learn": learn, "retain": retain, "skipped": bad,
               "lr": float(meta["log_scale"].detach().exp()), "time_s": round(time.time() - self.t0, 2)}
        if cfg.plasticity > 0:
            row["plasticity_gap"] = gap
        if bad:
            self.bad_steps += 1
            row["reason"] = "non-finite meta-loss" if not math.isfinite(L) else "non-finite meta-gradient"
            row["bad_steps"] = self.bad_steps
        return row

    def evaluate(self) -> dict[str, Any] | None:
        """Meta-validation (cfg.val_every > 0): score the current weights on the validation stream and
        keep the best, which `deploy` ships instead of the last.

        Why: over a few dozen meta-steps the meta-loss of single episodes swings by 10x, and one bad
        meta-step can leave the last weights worse than those of ten steps before; on the toy family
        the seed-to-seed spread of the last weights' held-out loss was 0.19-1.71 against AdamW's
        1.0-1.8. Choosing on validation episodes (the stream AdamW's lr is tuned on) is the fair
        counterpart of tuning AdamW. Every rank computes the same score (same weights, same episodes).
        """
        cfg = self.cfg
        if cfg.val_every <= 0:
            return None
        val = evaluate(self.meta, self.net, cfg, cfg.val_episodes, cfg.val_seed, which=("learned",))["learned"]
        row = {"step": self.step, "kind": "val", **val}
        if self.best is None or val["meta_loss"] < self.best["meta_loss"]:
            self.best = {"step": self.step, **val}
            self.best_meta = {k: v.detach().clone() for k, v in self.meta.items()}
            row["best"] = True
        if self.dist.is_main:
            from metacl.metalearner import METRICS
            from metacl.utils import append_jsonl

            append_jsonl(self.out / METRICS, [row])
        return self.best

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything a resumed run needs: meta-params, Adam moments and step counts, all RNG streams, counters."""
        tensors = {f"meta.{k}": v.detach() for k, v in self.meta.items()}
        if self.best_meta is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_meta.items()})
        st = self.mopt.state_dict()
        names = list(self.meta)
        for i, s in st["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                tensors[f"adam.{key}.{names[i]}"] = s[key]
        adam_steps = {names[i]: float(s["step"]) for i, s in st["state"].items()}
        return tensors, {"step": self.step, "config": asdict(self.cfg), "adam_steps": adam_steps,
                         "rng": all_rng_state(), "es_gen": self.es_gen.get_state().tolist(), "bad_steps": self.bad_steps,
                         "best": self.best}

    def load_state_dict(self, tensors: dict[str, Tensor], st: dict[str, Any]) -> None:
        """Restore a checkpoint in place; refuses one made with other settings."""
        ckpt_dir = self.out / "checkpoint"
        saved = {k: v for k, v in st["config"].items() if k not in _RESUMABLE}
        # through JSON a tuple (coef_scale) comes back as a list: compare them as lists
        now = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items() if k in saved}
        if saved != now:
            diff = sorted(k for k in saved if saved[k] != now.get(k))
            raise CheckpointError(f"--resume: {ckpt_dir} was made with different settings ({', '.join(diff)}); use the same options or a new --out")
        with torch.no_grad():
            for k, v in self.meta.items():
                v.copy_(tensors[f"meta.{k}"])
        names = list(self.meta)
        if st["adam_steps"]:
            sd = self.mopt.state_dict()
            sd["state"] = {
                i: {"step": torch.tensor(st["adam_steps"][n]), "exp_avg": tensors[f"adam.exp_avg.{n}"],
                    "exp_avg_sq": tensors[f"adam.exp_avg_sq.{n}"]}
                for i, n in enumerate(names) if n in st["adam_steps"]
            }
            self.mopt.load_state_dict(sd)
        self.best = st.get("best")
        self.best_meta = ({k: tensors[f"best.{k}"].clone() for k in self.meta} if self.best is not None else None)
        set_all_rng_state(st["rng"])
        self.es_gen.set_state(torch.tensor(st["es_gen"], dtype=torch.uint8))

    def deploy(self) -> dict[str, Any]:
        """Evaluate on held-out episodes and write `optimizer.{safetensors,json}` (what `--optimizer-path` loads)
        and `summary.json` (rank 0)."""
        from metacl.precision import peak_memory

        cfg = self.cfg
        if not self.dist.is_main:  # rank 0 evaluates and writes; the others are done
            return {"config": asdict(cfg), "rank": self.dist.rank}
        meta = self.best_meta if self.best_meta is not None else self.meta  # meta-validation's choice, else the last
        ev = evaluate(meta, self.net, cfg, cfg.eval_episodes, cfg.seed) if cfg.eval_episodes > 0 else {}
        selected = ({"by": "meta-validation", "step": self.best["step"], "val": self.best, "last_step": self.step}
                    if self.best is not None else {"by": "last", "step": self.step})
        summary = {"config": asdict(cfg), "net": self.net.to_dict(), "eval_heldout": ev, "selected": selected,
                   "command": self.command,
                   "git_commit": self.git_commit, "git_dirty": self.git_dirty, "meta_params": nw.meta_numel(self.meta), "world_size": self.dist.world_size,
                   "bad_steps": self.bad_steps, **peak_memory("cpu")}
        if "lm" in cfg.family:  # the generated world and tiny base LMs the episodes were drawn from
            from metacl.optim.lm_family import settings_dict

            summary["lm_family"] = settings_dict(cfg.family)
        save_meta(self.out, meta, self.net,
                  info={k: summary[k] for k in ("command", "git_commit", "git_dirty", "eval_heldout", "selected")} | {"seed": cfg.seed})
        write_json_atomic(self.out / "summary.json", summary)
        return summary


def meta_train(cfg: MetaTrainConfig, out: str | Path, resume: bool = False, net: nw.NetConfig | None = None,
               progress: bool = True, command: str | None = None) -> dict:
    """Meta-train; write checkpoints, metrics.jsonl, optimizer.{safetensors,json} and summary.json to `out`.

    The loop, checkpoint format and resume path are `metacl.metalearner`'s (shared with the
    token weighter); `OptimizerMetaLearner` is what is specific to the learned optimizer. After
    `max_bad_steps` skipped steps the run stops with a `MetaclError`; the last checkpoint,
    written before any of that, stays as it was.
    """
    from metacl import distributed as dist
    from metacl import metalearner

    cfg.check()
    info = dist.init()
    out = Path(out)
    ckpt_dir = out / "checkpoint"
    if out.exists() and any(out.iterdir()) and not resume and (ckpt_dir.exists() or (out / "metrics.jsonl").exists()):
        raise MetaclError(f"{out} already holds a meta-training run; pass --resume to continue it or choose a new --out")
    dist.shard(range(cfg.meta_batch), info)  # fail early (one line) when the batch does not split over the ranks
    dist.barrier(info)  # every rank has checked `out` before rank 0 writes into it
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    learner = OptimizerMetaLearner(cfg, out, info, net=net, command=command)
    if resume and not metalearner.resume(learner):  # also finds one left aside by a write that was killed
        raise CheckpointError(f"--resume: no checkpoint at {ckpt_dir}; start without --resume or point --out at the run")
    dist.broadcast_(learner.meta.values(), info)  # identical start on every rank, whatever happened before
    learner.t0 = time.time()
    return metalearner.meta_train(learner, cfg.steps, ckpt_every=cfg.ckpt_every, max_bad_steps=cfg.max_bad_steps,
                                  val_every=cfg.val_every, val_at_start=True,
                                  progress=progress, desc="meta-train optimizer",
                                  stop_hint="lower --meta-lr / --init-lr or check the optimizee data, then rerun with --resume")


# settings that may change on --resume without changing the computation done so far
_RESUMABLE = ("steps", "ckpt_every", "eval_episodes", "max_bad_steps")
