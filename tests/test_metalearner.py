"""`metacl.metalearner`: one loop, one checkpoint format and one resume path for any meta-learner.

A third, toy meta-learner (a learned step size for a 1-D quadratic, a few lines) plugs into
`meta_train` and gets a log, checkpoints and a bit-exact resume for free; both real meta-learners
implement the same protocol.
"""

import json

import pytest
import torch

from metacl import distributed, metalearner
from metacl.checkpoint import load_checkpoint
from metacl.errors import MetaclError


class StepSize:
    """Meta-learn log(lr) so that 3 SGD steps on (x - target)^2 land close to the target."""

    name = "toy-step-size"

    def __init__(self, out, poison=()):
        self.out, self.step, self.bad_steps, self.dist = out, 0, 0, distributed.SINGLE
        self.poison = set(poison)
        self.setup()

    def setup(self):
        torch.manual_seed(0)
        self.log_lr = torch.tensor(-3.0, requires_grad=True)
        self.opt = torch.optim.Adam([self.log_lr], lr=0.1)

    def meta_step(self):
        g = torch.Generator().manual_seed(self.step)
        target = torch.randn((), generator=g) + torch.randn(()) * 0.0  # global RNG drawn too
        x = torch.zeros(())
        for _ in range(3):
            x = x - self.log_lr.exp() * 2 * (x - target)
        loss = (x - target) ** 2 * (float("nan") if self.step + 1 in self.poison else 1.0)
        self.opt.zero_grad()
        skipped = not bool(torch.isfinite(loss))
        if not skipped:
            loss.backward()
            self.opt.step()
        self.step += 1
        row = {"step": self.step, "meta_loss": float(loss), "skipped": skipped}
        if skipped:
            self.bad_steps += 1
            row["reason"] = "non-finite meta-loss"
        return row

    def evaluate(self):
        return None

    def state_dict(self):
        return ({"log_lr": self.log_lr.detach(), "m": self.opt.state_dict()["state"][0]["exp_avg"],
                 "v": self.opt.state_dict()["state"][0]["exp_avg_sq"]},
                {"adam_step": float(self.opt.state_dict()["state"][0]["step"]), "rng": torch.get_rng_state().tolist()})

    def load_state_dict(self, tensors, state):
        with torch.no_grad():
            self.log_lr.copy_(tensors["log_lr"])
        sd = self.opt.state_dict()
        sd["state"] = {0: {"step": torch.tensor(state["adam_step"]), "exp_avg": tensors["m"], "exp_avg_sq": tensors["v"]}}
        self.opt.load_state_dict(sd)
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))

    def deploy(self):
        return {"lr": float(self.log_lr.exp()), "step": self.step}


def test_a_third_meta_learner_gets_log_checkpoints_and_exact_resume(tmp_path):
    assert isinstance(StepSize(tmp_path), metalearner.MetaLearner)
    straight = metalearner.meta_train(StepSize(tmp_path / "a"), 8, ckpt_every=3, progress=False)
    (tmp_path / "b").mkdir()
    metalearner.meta_train(StepSize(tmp_path / "b"), 3, ckpt_every=3, progress=False)  # checkpoint at step 3 ...
    later = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[3:5]
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # ... then rows 4, 5 and half of 6 before a kill
        f.write("\n".join(later) + '\n{"step": 6, "meta_lo')
    again = StepSize(tmp_path / "b")
    assert metalearner.resume(again) and again.step == 3
    resumed = metalearner.meta_train(again, 8, ckpt_every=3, progress=False)
    assert resumed == straight and straight["lr"] != pytest.approx(torch.tensor(-3.0).exp().item())
    read = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert read(tmp_path / "b") == read(tmp_path / "a")  # every row once, the same values
    state = load_checkpoint(tmp_path / "b" / "checkpoint")[1]
    assert state["learner"] == "toy-step-size" and state["step"] == 8


def test_skipped_steps_stop_the_run_with_one_line_and_other_learners_checkpoints_are_refused(tmp_path):
    with pytest.raises(MetaclError, match="2 meta-steps had a non-finite meta-loss"):
        metalearner.meta_train(StepSize(tmp_path / "p", poison={2, 4}), 6, ckpt_every=1, max_bad_steps=2, progress=False)
    assert load_checkpoint(tmp_path / "p" / "checkpoint")[1]["step"] == 3  # the last good state before the stop
    other = StepSize(tmp_path / "p")
    other.name = "another"
    with pytest.raises(MetaclError, match="belongs to a toy-step-size run"):
        metalearner.resume(other)


def test_both_shipped_meta_learners_implement_the_protocol():
    from metacl.meta.train_token_weighting import MetaTrainer
    from metacl.optim.meta_train import OptimizerMetaLearner

    for cls in (MetaTrainer, OptimizerMetaLearner):
        for m in ("setup", "meta_step", "evaluate", "state_dict", "load_state_dict", "deploy"):
            assert callable(getattr(cls, m, None)), f"{cls.__name__} lacks {m}"
        assert isinstance(cls.name, str)
