"""HF Trainer: `metacl.optim.hf` keeps the learned optimizer's multiplier constant and takes
`total_steps` from Trainer. Tiny Llama built from a config (no hub downloads)."""

import warnings

import pytest
import torch

from metacl.optim import LearnedOptimizer
from metacl.optim.hf import LearnedOptimizerCallback, trainer_optimizers


def _setup(tmp_path, **targs):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (4, 16), generator=g).repeat(4, 1)  # 4 sequences to memorise, 16 rows
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, logging_steps=1,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, **targs)
    return model, ds, args


def _train(model, ds, args, optimizers, callbacks=None):
    from transformers import Trainer

    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=optimizers, callbacks=callbacks)
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_optimizers_keeps_the_multiplier_constant_and_total_steps_from_max_steps(tmp_path):
    steps = 12
    model, ds, args = _setup(tmp_path / "a", max_steps=steps)
    # the MLP-head digits weights learn this toy in 12 steps; the LM-trained default is damped (lo_v2.md)
    opt, sched = trainer_optimizers(model.parameters(), args, weights="digits")
    assert opt.total_steps == steps
    ours = _train(model, ds, args, (opt, sched), [LearnedOptimizerCallback()])
    assert opt.param_groups[0]["lr"] == 1.0, "the multiplier must still be 1 at the end"

    # the same optimizer under Trainer's own constant schedule: the same run, step for step
    model, ds, args = _setup(tmp_path / "b", max_steps=steps, lr_scheduler_type="constant")
    const = _train(model, ds, args, (LearnedOptimizer.pretrained(model.parameters(), name="digits", total_steps=steps), None))
    assert len(ours) == len(const) == steps
    assert ours == pytest.approx(const, rel=1e-5, abs=1e-5)
    assert ours[-1] < 0.95 * ours[0], f"the loss must fall: {ours[0]:.3f} -> {ours[-1]:.3f}"

    # what the helper avoids: Trainer's default linear decay drives the multiplier to 0
    model, ds, args = _setup(tmp_path / "c", max_steps=steps)
    bad_opt = LearnedOptimizer.pretrained(model.parameters(), name="digits", total_steps=steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decayed = _train(model, ds, args, (bad_opt, None), [LearnedOptimizerCallback()])
    assert any("multiplier" in str(w.message) for w in caught), "the callback must warn about the decay"
    assert bad_opt.param_groups[0]["lr"] < 0.2
    assert ours[-1] < decayed[-1] - 0.05, (ours[-1], decayed[-1])


def test_callback_sets_total_steps_for_an_epoch_based_run(tmp_path):
    model, ds, args = _setup(tmp_path, num_train_epochs=3)  # 16 rows / batch 8 = 2 steps per epoch
    opt, sched = trainer_optimizers(model.parameters(), args)
    assert opt.total_steps == 1000  # not known yet
    losses = _train(model, ds, args, (opt, sched), [LearnedOptimizerCallback()])
    assert len(losses) == 6 and opt.total_steps == 6

    model, ds, args = _setup(tmp_path / "x", num_train_epochs=3)
    opt, sched = trainer_optimizers(model.parameters(), args, total_steps=50)  # explicit: kept
    _train(model, ds, args, (opt, sched), [LearnedOptimizerCallback()])
    assert opt.total_steps == 50

    # a LearnedOptimizer built directly: explicit total_steps kept, none given = Trainer's
    from metacl.optim.hf import constant_schedule

    for given, expected in ((40, 40), (None, 6)):
        model, ds, args = _setup(tmp_path / f"d{given}", num_train_epochs=3)
        opt = LearnedOptimizer.pretrained(model.parameters(), total_steps=given)
        _train(model, ds, args, (opt, constant_schedule(opt)), [LearnedOptimizerCallback()])
        assert opt.total_steps == expected
