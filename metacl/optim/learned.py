"""`LearnedOptimizer`: the meta-trained optimizer as a drop-in `torch.optim.Optimizer`.

    from metacl.optim import LearnedOptimizer
    opt = LearnedOptimizer.pretrained(model.parameters())      # shipped default weights
    for batch in data:
        loss = model(batch).loss; loss.backward(); opt.step(); opt.zero_grad()
    opt.consolidate()                                          # optional: at the end of a task

Same maths as `metacl.optim.functional` (a test checks they agree), applied in place and
chunk by chunk: per-tensor reductions and the transformer over tensor tokens run once per step,
then the per-parameter MLP runs on `chunk_size` entries at a time, so the extra memory per step
is O(chunk_size * hidden) regardless of model size. The step is the no-grad fast path: in-place
fused state updates, dot-product reductions, features written transposed into one buffer reused
by every chunk, and two addmm per chunk (`features.param_features_into`, `network.param_update_into`);
tests/test_learned_optimizer_speed.py checks it against the plain formulas (max abs diff <= 1e-6).
Optimizer state is 5 tensors per parameter
(3 momenta, second moment, importance), 7 after `consolidate()` (old importance, anchor).

`lr` is a *multiplier* on the meta-learned step size (default 1.0). LR schedulers act on it, so
a decaying one shrinks the learned step: under HF Trainer use `metacl.optim.hf.trainer_optimizers`
(constant schedule, `total_steps` from Trainer) rather than `optimizers=(opt, None)`.

Options for cost (docs/benchmarks.md): `compile=True` runs the MLP head's per-parameter work as one
compiled loop per tensor (same numbers to float32 rounding); `NetConfig(head="linear")` is a cheaper
network (per-tensor feature coefficients, a linear per-parameter mix; `_apply_linear`) that needs
its own meta-trained weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from metacl.errors import CheckpointError, MetaclError
from metacl.optim import features as fe
from metacl.optim import network as nw

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = "optimizer.safetensors"
CONFIG_FILE = "optimizer.json"
_COUNTERS = ("step", "task_step")
# Block size of the per-tensor sums of the linear head's one-pass advance (`features.advance_and_sum_`)
# and of the chunked importance update. Fixed, not `chunk_size`: float32 sums depend on their blocking,
# so tying it to `chunk_size` would make the numbers depend on a memory/speed knob.
REDUCE_CHUNK = 1 << 16


class LearnedOptimizer(torch.optim.Optimizer):
    """A transformer-conditioned per-parameter learned optimizer.

    Args:
        params: iterable of tensors or param-group dicts (as for any torch optimizer).
        meta: meta-parameters (dict of tensors); None = fresh Adam-like initialisation.
        config: `NetConfig` (or its dict) matching `meta`.
        lr: multiplier on the learned step (per group).
        anchor_lr: linear head only (per group): the multiplier on the drift-from-anchor term alone, in
            place of `lr`; None (the default) = `lr`, as in meta-training. Why: meta-training sees one
            step size, and at deployment `lr` is tuned; scaling the learned pull back to the anchor with
            it keeps the balance between moving and returning, so a larger `lr` buys new knowledge only
            slowly (docs/results/lo_v2.md, ablation `drift`). With `anchor_lr` fixed, `lr` moves the
            learning part only and the pull stays the strength it was meta-trained at (anchor_lr=1).
        pull_scale: weights meta-trained with `NetConfig.imp_pull` only: a factor on the importance-weighted
            pull's per-step rate (1 = as meta-trained; that pull is not scaled by `lr`, so this is its knob).
        total_steps: expected number of steps per task (the clock restarts at `consolidate()`), for the "fraction of training done" feature;
            None = not known yet: 1000 until `metacl.optim.hf.LearnedOptimizerCallback` sets Trainer's max_steps.
        chunk_size: parameters per chunk of the per-parameter step (bounds extra memory); None = 2^16 for
            the MLP head, 2^18 for the linear head (whose dozen in-place passes per chunk ran 1.15x faster
            on 2^18 at 1 thread and 1.26x at 2 threads, experiments/bench_lo_chunk.py, and whose numbers
            do not depend on it: its reductions always run in blocks of `REDUCE_CHUNK`).
        compile: run the per-parameter work as `torch.compile`d loops per tensor (`metacl.optim.compiled`;
            same numbers to float32 rounding, the first steps compile, needs a C++ compiler on CPU): the
            MLP head's features + MLP (~1.4x faster on CPU); the linear head's state advance with its
            sums and its update (one fused, threaded pass each; docs/benchmarks.md). Falls back to the
            eager step, with a warning, if compiling fails.
    """

    def __init__(
        self,
        params: Iterable,
        meta: dict[str, Tensor] | None = None,
        config: nw.NetConfig | dict | None = None,
        lr: float = 1.0,
        total_steps: int | None = None,
        chunk_size: int | None = None,
        compile: bool = False,
        anchor_lr: float | None = None,
        pull_scale: float = 1.0,
    ):
        if lr < 0:
            raise MetaclError(f"LearnedOptimizer lr={lr} is negative; pass lr >= 0 (it multiplies the learned step)")
        if anchor_lr is not None and not anchor_lr >= 0:
            raise MetaclError(f"LearnedOptimizer anchor_lr={anchor_lr} is negative; pass anchor_lr >= 0 or None (= lr)")
        self.total_steps_given = total_steps is not None  # an explicit horizon is never overridden
        total_steps = 1000 if total_steps is None else total_steps
        if total_steps < 1:
            raise MetaclError(f"LearnedOptimizer total_steps={total_steps}; pass the expected number of steps (>= 1)")
        cfg = nw.NetConfig.from_dict(config) if isinstance(config, dict) else (config or nw.NetConfig())
        meta = nw.init_meta(cfg) if meta is None else meta
        _check_meta(meta, cfg, where="LearnedOptimizer(meta=...)")
        super().__init__(params, dict(lr=lr, anchor_lr=anchor_lr))
        if cfg.head != "linear" and any(g.get("anchor_lr") is not None for g in self.param_groups):
            raise MetaclError(f"LearnedOptimizer anchor_lr needs the linear head (these weights use head={cfg.head!r}, "
                              "whose MLP mixes the drift feature with the others); leave anchor_lr out")
        if not pull_scale >= 0:
            raise MetaclError(f"LearnedOptimizer pull_scale={pull_scale} is negative; pass pull_scale >= 0")
        if pull_scale != 1.0 and not cfg.imp_pull:
            raise MetaclError("LearnedOptimizer pull_scale needs weights meta-trained with imp_pull "
                              "(these have no importance-weighted pull); leave pull_scale out")
        self.pull_scale = float(pull_scale)
        self.cfg = cfg
        self.meta = {k: v.detach().to(torch.float32).clone() for k, v in meta.items()}
        self.total_steps = int(total_steps)
        self.chunk_size = int(chunk_size) if chunk_size else (1 << 18 if cfg.head == "linear" else 1 << 16)
        self._meta_device = torch.device("cpu")
        self._compiled = None
        if compile:
            from metacl.optim.compiled import CompiledLinear, CompiledStep

            self._compiled = CompiledLinear() if cfg.head == "linear" else CompiledStep()

    # ------------------------------------------------------------------ the step
    def _meta_on(self, device: torch.device) -> dict[str, Tensor]:
        if device != self._meta_device:
            self.meta = {k: v.to(device) for k, v in self.meta.items()}
            self._meta_device = device
        return self.meta

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        todo: list[tuple[Tensor, float]] = []
        pulls: list[float | None] = []  # each entry's anchor_lr (None = its lr)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise MetaclError("LearnedOptimizer got a sparse gradient; use dense embeddings (sparse=False)")
                    todo.append((p, group["lr"]))
                    pulls.append(group.get("anchor_lr"))
        if not todo:
            return loss
        device = todo[0][0].device
        meta = self._meta_on(device)
        # 1) advance every tensor's statistics in place, 2) whole-tensor reductions -> one token each
        entries, scal, tokens, fasts = [], [], [], []
        linear, tmp = self.cfg.head == "linear", None
        for p, _ in todo:
            st = self._state_of(p)
            st["step"] += 1
            st["task_step"] += 1
            g = p.grad.float()
            pf = p.detach().float()
            frac = min(1.0, (float(st["task_step"]) - 1) / self.total_steps)
            sums = None
            fast = all(t.is_contiguous() for t in (pf, g, *(v for k, v in st.items() if k not in _COUNTERS)))
            if linear and fast and self._compiled is not None:
                sums = self._compiled.advance(pf, g, st)  # None: not compiled after all, eager below
            if sums is None and linear and fast and pf.numel() > REDUCE_CHUNK:
                if tmp is None:
                    tmp = torch.empty(REDUCE_CHUNK, dtype=torch.float32, device=device)
                sums = fe.advance_and_sum_(pf, g, st, REDUCE_CHUNK, tmp)  # one pass: advance + reduce
            elif sums is None:
                self._advance_inplace(pf, g, st, REDUCE_CHUNK)
            sc, tok = fe.scalars_and_token(pf, g, st, float(st["step"]), frac, sums)
            entries.append((pf, g, st))
            fasts.append(fast)
            scal.append(sc)
            tokens.append(tok.to(device))
        # 3) the transformer over tensor tokens: per-tensor conditioning and step scale
        ctx = nw.tensor_context(meta, self.cfg, torch.stack(tokens))
        cond, log_s = nw.tensor_conditioning(meta, ctx, self.cfg)
        if self.cfg.head == "linear":
            self._apply_linear(todo, entries, scal, cond, log_s, meta, fasts, pulls)
            rho = nw.pull_rates(meta, self.cfg, ctx)
            if rho is not None and self.pull_scale > 0:
                self._apply_pull(todo, (rho * self.pull_scale).tolist())
            return loss
        b1 = (meta["mlp1.b"] + cond).unsqueeze(-1)             # (T, H, 1)
        scales = torch.exp(meta["log_scale"] + log_s)           # (T,)
        fw = nw.fast_weights(meta)
        # 4) the per-parameter MLP, chunk by chunk, into buffers shared by all tensors of this step
        Fp, H = self.cfg.n_param_features, self.cfg.hidden
        largest = max(min(p.numel(), self.chunk_size) for p, _ in todo)
        buf_mem = torch.empty((Fp + H) * largest, dtype=torch.float32, device=device)
        out_mem = torch.empty(2 * largest, dtype=torch.float32, device=device)
        for i, ((p, lr), (pf, g, st)) in enumerate(zip(todo, entries)):
            if lr == 0:
                continue  # a frozen group: statistics advanced above, nothing to apply
            if self._compiled is not None and self._compiled_update(p, lr, pf, g, st, scal[i], b1[i, :, 0], scales[i], meta):
                continue
            n = p.numel()
            flat = p.view(-1) if p.is_contiguous() else None
            upd_full = None if flat is not None else torch.empty(n, dtype=torch.float32, device=device)
            views = {k: v.reshape(-1) for k, v in st.items() if k not in _COUNTERS}  # read-only here
            pfl, gfl = pf.reshape(-1), g.reshape(-1)
            for s in range(0, n, self.chunk_size):
                e = min(n, s + self.chunk_size)
                buf = buf_mem[: (Fp + H) * (e - s)].view(Fp + H, e - s)
                cst = {k: v[s:e] for k, v in views.items()}
                fe.param_features_into(buf[:Fp], buf[Fp], pfl[s:e], gfl[s:e], cst, scal[i])
                u = nw.param_update_into(fw, self.cfg, buf, out_mem[: 2 * (e - s)].view(2, e - s), b1[i], scales[i])
                if flat is None:
                    upd_full[s:e] = u
                elif p.dtype == torch.float32:
                    flat[s:e].sub_(u, alpha=lr)
                else:
                    flat[s:e].sub_((lr * u).to(p.dtype))
            if flat is None:
                p.sub_((lr * upd_full.view_as(p)).to(p.dtype))
        return loss

    def _compiled_update(self, p, lr, pf, g, st, sc, b1: Tensor, scale: Tensor, meta) -> bool:
        """MLP head through `metacl.optim.compiled`; False (nothing applied) if it is unavailable."""
        flat = {k: v.reshape(-1) for k, v in st.items() if k not in _COUNTERS}
        pfl = pf.reshape(-1)
        cons = "imp_prev" in flat
        dev = pfl.device
        vals = [sc["bc2"], sc["bc_m0"], sc["bc_m1"], sc["bc_m2"], sc["rms_p"], sc["imp_min"], sc["imp_rng"],
                sc.get("prev_min", 0.0), sc.get("prev_rng", 1.0), scale]
        s = torch.stack([torch.as_tensor(x, dtype=torch.float32, device=dev).reshape(()) for x in vals])
        w2 = torch.cat([meta["skip.w"], meta["mlp2.w"]], 0)
        u = self._compiled(pfl, g.reshape(-1), flat["m0"], flat["m1"], flat["m2"], flat["v"], flat["imp"],
                           flat["imp_prev"] if cons else pfl, flat["anchor"] if cons else pfl,
                           meta["mlp1.w"], b1, w2, meta["mlp2.b"], s, cons, float(self.cfg.max_log_mag))
        if u is None:
            return False
        if p.dtype == torch.float32 and p.is_contiguous():
            p.view(-1).sub_(u, alpha=lr)
        else:
            p.sub_((lr * u.view_as(p)).to(p.dtype))
        return True

    def _apply_linear(self, todo, entries, scal, coefs: Tensor, log_s: Tensor, meta: dict[str, Tensor],
                      fasts: list[bool], pulls: list[float | None]) -> None:
        """Linear head: each tensor's update is its coefficient mix of the features (`features.linear_update_`).

        A tensor whose group sets `anchor_lr` gets its drift coefficient rescaled by anchor_lr / lr, so
        that term is applied at anchor_lr while the rest moves at lr.

        Applied in place, chunk by chunk, so a chunk's dozen passes run on data that stays in cache.
        fp32 contiguous parameters are updated where they are; others (bf16, non-contiguous) go through
        an fp32 copy that is written back once.
        """
        coef_rows = coefs.tolist()
        scales = torch.exp(meta["log_scale"] + log_s).tolist()
        largest = max(min(p.numel(), self.chunk_size) for p, _ in todo)
        dev = todo[0][0].device
        num_mem = torch.empty(largest, dtype=torch.float32, device=dev)
        den_mem = torch.empty(largest, dtype=torch.float32, device=dev)
        for i, ((p, lr), (pf, g, st)) in enumerate(zip(todo, entries)):
            if lr == 0:
                continue
            row = coef_rows[i]
            if pulls[i] is not None:
                row = list(row)
                row[nw.DRIFT_FEATURE] *= pulls[i] / lr
            sc = {k: (float(v) if torch.is_tensor(v) else v) for k, v in scal[i].items()}
            direct = p.dtype == torch.float32 and p.is_contiguous()
            target = p.view(-1) if direct else pf.reshape(-1).clone()
            views = {k: v.reshape(-1) for k, v in st.items() if k not in _COUNTERS}
            if fasts[i] and self._compiled is not None and self._compiled.apply(target, g.view(-1), views, sc,
                                                                                row, lr * scales[i]):
                if not direct:
                    p.copy_(target.view_as(p))
                continue
            gfl, n = g.reshape(-1), p.numel()
            for s in range(0, n, self.chunk_size):
                e = min(n, s + self.chunk_size)
                fe.linear_update_(target[s:e], gfl[s:e], {k: v[s:e] for k, v in views.items()}, sc,
                                  row, lr * scales[i], num_mem[: e - s], den_mem[: e - s])
            if not direct:
                p.copy_(target.view_as(p))

    def _apply_pull(self, todo, rates: list[float]) -> None:
        """`NetConfig.imp_pull`, after the step: p -= rho * pull_ratio(old importance) * (p - anchor)."""
        for (p, lr), rho in zip(todo, rates):
            st = self.state[p]
            if lr == 0 or "imp_prev" not in st:
                continue
            pf = p.detach().float()
            delta = torch.sub(pf, st["anchor"]).mul_(fe.pull_ratio(st["imp_prev"])).mul_(rho)
            p.sub_(delta.to(p.dtype))

    def _state_of(self, p: Tensor) -> dict[str, Any]:
        """p's statistics, created (fresh, or consolidated at p with `anchor_start`) on first use."""
        st = self.state[p]
        if len(st) == 0:
            st["step"] = torch.zeros((), dtype=torch.float32)
            st["task_step"] = torch.zeros((), dtype=torch.float32)
            st.update(fe.start_state(p.detach().float(), self.cfg.anchor_start))
        return st

    def prime(self, closures: Iterable[Callable[[], Tensor]]) -> int:
        """Before training: measure the old-task importance on old data and anchor at the current weights.

        Each closure returns a loss on one batch of old data (e.g. pre-training text); the importance
        is the mean over them of |grad * p|, the statistic the optimizer accumulates during a task
        (`features.advance_state`), folded in as `consolidate()` folds a finished task. Why: in CKL
        the old task is pre-training, which this optimizer never saw; without priming its old-task
        importance is 0 and `NetConfig.imp_pull` has nothing to hold. Returns the number of batches.
        Gradients are cleared before each closure and after the last.
        """
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        acc = {p: torch.zeros_like(p, dtype=torch.float32) for p in params}
        n = 0
        for closure in closures:
            for p in params:
                p.grad = None
            with torch.enable_grad():
                closure().backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        acc[p].add_((p.grad.float() * p.detach().float()).abs_())
            n += 1
        if n == 0:
            raise MetaclError("LearnedOptimizer.prime got no batches; give at least one closure over old data")
        with torch.no_grad():
            for p in params:
                p.grad = None
                st = self._state_of(p)
                inner = {k: v for k, v in st.items() if k not in _COUNTERS}
                st.update(fe.prime_tensor(p.detach().float(), inner, acc[p] / n))
        return n

    @staticmethod
    def _advance_inplace(p: Tensor, g: Tensor, st: dict[str, Tensor], chunk: int = 1 << 16) -> None:
        """In-place twin of `features.advance_state`: one fused pass per statistic (lerp_/addcmul_)."""
        for k, d in zip(fe.MOMENTS, fe.DECAYS):
            st[k].lerp_(g, 1 - d)
        st["v"].mul_(fe.BETA2).addcmul_(g, g, value=1 - fe.BETA2)
        imp, w = st["imp"], 1 - fe.IMP_DECAY
        if not (imp.is_contiguous() and g.is_contiguous() and p.is_contiguous()) or imp.numel() <= chunk:
            imp.lerp_(torch.mul(g, p).abs_(), w)
            return
        # |g * p| a chunk at a time into one small buffer: no parameter-sized temporary to allocate
        imp, g, p = imp.view(-1), g.view(-1), p.view(-1)
        tmp = torch.empty(chunk, dtype=imp.dtype, device=imp.device)
        for s in range(0, imp.numel(), chunk):
            e = min(imp.numel(), s + chunk)
            imp[s:e].lerp_(torch.mul(g[s:e], p[s:e], out=tmp[: e - s]).abs_(), w)

    @torch.no_grad()
    def consolidate(self, decay: float = 1.0) -> None:
        """Call at the end of a task: old-task importance + anchors feed the retention features.

        `decay` (< 1: earlier tasks' importance fades, see `features.consolidate_tensor`) trades
        protection of old tasks for plasticity; the weights were meta-trained with 1."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and "imp" in st:
                    new = fe.consolidate_tensor(p.detach().float(), {k: v for k, v in st.items() if k not in _COUNTERS}, decay)
                    st.update(new)
                    st["task_step"] = torch.zeros((), dtype=torch.float32)

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["learned_meta"] = {k: v.detach().cpu().clone() for k, v in self.meta.items()}
        sd["learned_config"] = self.cfg.to_dict()
        sd["learned_total_steps"] = self.total_steps
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        meta = state_dict.pop("learned_meta", None)
        cfg = state_dict.pop("learned_config", None)
        total = state_dict.pop("learned_total_steps", None)
        super().load_state_dict(state_dict)
        if meta is not None:
            self.cfg = nw.NetConfig.from_dict(cfg) if cfg else self.cfg
            _check_meta(meta, self.cfg, where="LearnedOptimizer.load_state_dict")
            self.meta = {k: v.detach().float().cpu().clone() for k, v in meta.items()}
            self._meta_device = torch.device("cpu")
        if total is not None:
            self.total_steps = int(total)
        # torch casts floating state to the param dtype; our statistics are kept in float32
        for st in self.state.values():
            for k, v in list(st.items()):
                if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float32:
                    st[k] = v.float()

    # ------------------------------------------------------------------ weights on disk
    def save_pretrained(self, path: str | os.PathLike, info: dict | None = None) -> Path:
        """Write the meta-parameters (safetensors) and config + `info` (JSON) to directory `path`."""
        return save_meta(path, self.meta, self.cfg, info)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, params: Iterable, **kwargs) -> "LearnedOptimizer":
        meta, cfg, _ = load_meta(path)
        return cls(params, meta=meta, config=cfg, **kwargs)

    @classmethod
    def pretrained(cls, params: Iterable, name: str = "default", **kwargs) -> "LearnedOptimizer":
        """Weights shipped in `metacl/optim/weights/<name>.{safetensors,json}` (the JSON holds their provenance).

        `default`: meta-trained for LM fine-tuning (see default.json); `digits`: the earlier default,
        meta-trained on digit MLPs (`shipped_weights()` lists what is there).
        """
        meta, cfg, _ = load_meta(WEIGHTS_DIR, stem=_shipped_stem(name))
        return cls(params, meta=meta, config=cfg, **kwargs)


def load_optimizer(path_or_name: str | os.PathLike | None, params: Iterable, **kwargs) -> LearnedOptimizer:
    """What `--optimizer-path` means everywhere: None = the shipped default, a shipped name (`digits`) that
    is not also a path on disk = those shipped weights, else a weights directory."""
    meta, cfg, _ = read_weights(path_or_name)
    return LearnedOptimizer(params, meta=meta, config=cfg, **kwargs)


def read_weights(path_or_name: str | os.PathLike | None) -> tuple[dict[str, Tensor], nw.NetConfig, dict]:
    """(meta-parameters, config, info) named as `load_optimizer` names them: None = the shipped default,
    a shipped name that is not a path on disk = those weights, else a weights directory. Shared with
    `meta-train optimizer --init-from`, so both read one name the same way."""
    if path_or_name is None:
        return load_meta(WEIGHTS_DIR, stem=_shipped_stem("default"))
    if not os.path.exists(path_or_name) and str(path_or_name) in shipped_weights():
        return load_meta(WEIGHTS_DIR, stem=_shipped_stem(str(path_or_name)))
    return load_meta(path_or_name)


def shipped_weights() -> list[str]:
    """Names accepted by `LearnedOptimizer.pretrained(name=...)`."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if (WEIGHTS_DIR / f"{p.stem}.json").is_file())


def _shipped_stem(name: str) -> str:
    names = shipped_weights()
    if name not in names:
        raise MetaclError(f"no shipped learned-optimizer weights named {name!r}; choose one of {', '.join(names)} "
                          "or load your own with LearnedOptimizer.from_pretrained(DIR, params)")
    return name


def _check_meta(meta: dict[str, Tensor], cfg: nw.NetConfig, where: str) -> None:
    ref = nw.init_meta(cfg)
    missing = sorted(set(ref) - set(meta))
    bad = sorted(k for k in ref if k in meta and tuple(meta[k].shape) != tuple(ref[k].shape))
    if missing or bad:
        raise CheckpointError(
            f"{where}: meta-parameters do not match the config (missing {missing[:3]}, wrong shape {bad[:3]}); "
            "load weights saved by LearnedOptimizer.save_pretrained with their own JSON config"
        )


def _files(path: Path, stem: str | None = None) -> tuple[Path, Path]:
    if stem:
        return path / f"{stem}.safetensors", path / f"{stem}.json"
    if path.is_dir() and (path / "default.safetensors").is_file() and not (path / WEIGHTS_FILE).is_file():
        return path / "default.safetensors", path / "default.json"
    return path / WEIGHTS_FILE, path / CONFIG_FILE


def save_meta(path: str | os.PathLike, meta: dict[str, Tensor], cfg: nw.NetConfig, info: dict | None = None,
              stem: str | None = None) -> Path:
    """Atomically write `<stem>.safetensors` + `<stem>.json` (default stem: optimizer)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    wf, cf = (path / f"{stem}.safetensors", path / f"{stem}.json") if stem else (path / WEIGHTS_FILE, path / CONFIG_FILE)
    tmp_w, tmp_c = wf.with_name(f".{wf.name}.tmp-{os.getpid()}"), cf.with_name(f".{cf.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in meta.items()}, str(tmp_w))
    with open(tmp_c, "w") as f:
        json.dump({"config": cfg.to_dict(), "info": info or {}}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp_w, wf)
    os.replace(tmp_c, cf)
    for f in (wf, cf):  # safetensors writes 0600; weights shipped in a package must be world-readable
        os.chmod(f, 0o644)
    return path


def load_meta(path: str | os.PathLike, stem: str | None = None) -> tuple[dict[str, Tensor], nw.NetConfig, dict]:
    """Read weights written by `save_meta` (`stem`: `<stem>.*` files, as shipped); `CheckpointError` with a fix if missing or corrupt."""
    path = Path(path)
    wf, cf = _files(path, stem)
    if not wf.is_file() or not cf.is_file():
        raise CheckpointError(
            f"learned-optimizer weights not found in {path} (need {wf.name} and {cf.name}); "
            "pass a directory written by LearnedOptimizer.save_pretrained or `metacl meta-train optimizer`"
        )
    try:
        meta = load_file(str(wf))
        with open(cf) as f:
            js = json.load(f)
        cfg = nw.NetConfig.from_dict(js["config"])
    except Exception as e:
        raise CheckpointError(f"learned-optimizer weights in {path} are corrupt ({type(e).__name__}: {e}); re-run meta-training or re-save them") from e
    _check_meta(meta, cfg, where=str(path))
    return meta, cfg, js.get("info", {})
