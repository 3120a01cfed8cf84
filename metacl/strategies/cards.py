"""Method cards for `metacl ckl strategies NAME`: each strategy's formula, its options with their
defaults, and one sentence on how it was adapted to LMs or to single-task CKL.

Why a table here and not in each module: the formula and the adaptation are what a reader
compares *across* methods, so they sit side by side; the options are not repeated here but read
from each strategy's own declaration, so they can never go stale. Every registered strategy
must have a card (tests/test_strategies_faithful.py checks it). The module docstrings hold the
full derivations.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    formula: str      # a few lines, plain text
    adapted: str      # one sentence: how it was adapted to LMs / single-task CKL (or that it was not)


CARDS: dict[str, Card] = {
    "finetune": Card(
        "loss = sum_t nll_t / #targets  over the new documents; every parameter trains",
        "Not adapted: plain continued next-token training is the reference every method must beat."),
    "lora": Card(
        "W x -> W0 x + (alpha / r) B A x      A: r x d_in, B: d_out x r, B = 0 at start; W0 frozen",
        "Adapters on every attention and MLP projection of the causal LM (PEFT), trained on the documents' "
        "next-token loss."),
    "taalm": Card(
        "w_t = phi(D)_t in (0, 1);   loss = sum_t w_t nll_t / sum_t w_t      (phi meta-trained, frozen here)",
        "As in TAALM: the meta-trained token-importance predictor only weights the loss; the optimizer is "
        "whatever the run uses."),
    "oracle": Card(
        "w_t = 1 on the object tokens of the document's fact, 0 elsewhere",
        "A control, not a published method: an upper reference for where a token weighter should put weight."),
    "random": Card(
        "w = the predictor's weights shuffled within each document (or uniform with a given mean)",
        "A control, not a published method: same weight budget as the predictor, random placement."),
    "oracle_sentence": Card(
        "w_t = 1 on every token of the document's fact sentence, 0 elsewhere",
        "A control, not a published method: a wider upper reference than `oracle` (the whole sentence that states "
        "the fact, as world v2 rows record it in fact_span)."),
    "salient_span": Card(
        "w_t = 1 if the label token belongs to a capitalised word or a number, 0 elsewhere",
        "A control, not a published method: salient-span masking (the hand-made weighting CaMeLS compares against), "
        "applied to the next-token labels of each CKL document."),
    "mix_review": Card(
        "n_mix(e) = round(ratio * decay^(e-1) * B) pre-training documents added to each batch of B",
        "The 'pre-training data' is the base LM's own pre-training corpus (--old-corpus); the decay runs per epoch "
        "of the single CKL task."),
    "recadam": Card(
        "objective = lambda(t) L + (1 - lambda(t)) gamma/2 ||theta - theta_0||^2,  lambda(t) = 1/(1+exp(-k(t-t0)))\n"
        "step: theta' = theta + lambda(t) * step_opt(grad L);  theta = theta' - lr (1-lambda(t)) gamma (theta' - theta_0)",
        "theta_0 is the base LM at the first task; the decoupled pull wraps any optimizer the run builds (capped so "
        "it never jumps past theta_0), and t0 < 1 is read as a fraction of the run's steps."),
    "k_adapter": Card(
        "a_k = a_{k-1} + Up_k(Blocks_k(Down_k([h_{l_k}; a_{k-1}]))),  a_0 = 0\n"
        "logits = lm_head(h_L + F a_K)      (LM frozen; F = 0 at start; l_k = first, middle, last LM layer)",
        "K-Adapter's task head is replaced by the frozen LM head, reading [h_L; a_K] through a map whose h_L "
        "block is the identity, and one knowledge adapter learns every CKL task."),
    "rho1": Card(
        "excess_t = nll_t(model) - nll_t(task-start model);  w_t = 1 for the top-k% excess tokens of the batch, else 0",
        "TAALM's variant of RHO-1: the reference is the frozen model at task start (excess = 0 at the first step), "
        "since CKL has no separately trained reference; see rho1_ref for the paper's."),
    "rho1_ref": Card(
        "excess_t = nll_t(model) - nll_t(reference LM);  w_t = 1 for the top-k% excess tokens of the batch, else 0",
        "The paper's reference LM trained on high-quality data is supplied by path (same tokenizer), because the "
        "only old data a CKL run has is the corpus the base LM already learned."),
    "ewc": Card(
        "loss = L + lambda/2 sum_i F_i (theta_i - theta*_i)^2;   F <- gamma F_old + F_new  (diagonal empirical Fisher)",
        "In single-task CKL the 'previous task' is pre-training: the first Fisher is estimated on the pre-training "
        "corpus and anchored at the base LM."),
    "lwf": Card(
        "loss = L + alpha T^2 mean_t KL(p_old(.|x_<t)/T || p_new(.|x_<t)/T)   on the current documents",
        "The distilled outputs are the next-token distributions of the task-start LM at every target position "
        "(--lwf-tokens complement: each position weighted by 1 - the token weights of a weighter it is composed with)."),
    "replay": Card(
        "buffer = reservoir(K) over old_corpus then earlier tasks' documents;  batch <- batch + m buffer documents",
        "In single-task CKL the buffer holds pre-training documents, the only 'old task' there is."),
    "agem": Card(
        "g_ref = grad on a memory batch;  if g . g_ref < 0:  g <- g - (g . g_ref / ||g_ref||^2) g_ref",
        "The memory is pre-training text then earlier tasks' documents, and the loss is the LM's next-token loss."),
    "ncl": Card(
        "Lambda = lambda F + eta0 (diagonal);  d = Lambda^-1 g;  step = min(lr, rho / sqrt(g . d));  theta -= step d",
        "Diagonal NCL: the prior precision is the diagonal online Fisher (not a Kronecker-factored or full "
        "matrix), first estimated on the pre-training corpus."),
    "icl": Card(
        "no weight update;  probe text = <TL document> + newline + <probe prefix>",
        "Each TL probe is prefixed with its own evidence document, each NF probe with an unrelated TL document."),
    "spg": Card(
        "imp = max(imp, |tanh(standardise(dL/dtheta))|) per parameter after a task;  update *= (1 - imp)",
        "The first importance is measured on the pre-training corpus, and by default the optimizer's step (not the "
        "gradient, which Adam renormalises) is scaled."),
    "das": Card(
        "I_u = (1/N) sum_n |dL(x_n)/dm_u|  for the virtual mask m_u of each head and FFN neuron\n"
        "imp = max(imp, |tanh(standardise(I))|) per layer;  update of unit u's parameters *= (1 - imp_u)",
        "Units are Llama attention heads and FFN neurons; the first domain uses DAS's dropout proxy KL on the "
        "current documents, and by default the optimizer's step is scaled (Adam renormalises gradients)."),
    "osft": Card(
        "I(l) = mean_tokens cos(X_l, Y_l) on previous-task text;  r(W) = round(full_rank (mrr + I(l)(trr - mrr)))\n"
        "W = U S V^T;  grad and step <- (I - U_r U_r^T) G (I - V_r V_r^T)",
        "Layers are the attention and MLP sublayers of each decoder block (the residual path left out), and in "
        "single-task CKL the previous-task text is the pre-training corpus."),
    "olora": Card(
        "y = W0 x + sum_i (alpha/r) B_i A_i x;  loss = L + lambda1 sum_layers sum_{i<t} |A_i A_t^T|_1",
        "A new LoRA per task on the causal LM's projections; with a single CKL task there is nothing to be "
        "orthogonal to, so it trains like LoRA."),
    "progressive": Card(
        "s^k_{l+1} = Block^k_l(s^k_l + sum_{j<k} A^k_{l,j} s^j_l),  s^0_l = LM hidden state entering layer l\n"
        "o^k = o^{k-1} + U^k LN(s^k_L),  o^0 = LM final hidden;  logits = lm_head(o^K)   (LM, old columns frozen)",
        "Columns are narrow side networks beside the frozen LM (column 0), predicting through its head, and the "
        "task-free probes read the newest column, which starts as the previous column's output."),
    "tasl": Card(
        "s_u = mean_u |theta dL/dtheta| / max;  old only -> theta_old, new only -> theta_new,\n"
        "shared -> (s_old theta_old + s_new theta_new) / (s_old + s_new)",
        "Coarse skill units (each decoder layer's attention block and MLP block, plus one unit for the rest: "
        "2L+1 units), and in single-task CKL the old task is pre-training."),
}


def option_lines(cls) -> list[str]:
    """`--flag (default X): help` for every option the strategy declares."""
    p = argparse.ArgumentParser(add_help=False)
    cls.add_args(p)
    lines = []
    for a in p._actions:
        flag = a.option_strings[0] if a.option_strings else a.dest
        choices = f" {{{','.join(map(str, a.choices))}}}" if a.choices else ""
        lines.append(f"  {flag}{choices} (default {a.default!r}): {a.help or ''}".rstrip())
    return lines


def describe(name: str) -> str:
    """The card of one strategy as printed by `metacl ckl strategies NAME` (unknown name: MetaclError)."""
    from metacl.errors import MetaclError
    from metacl.strategies.base import get_strategy

    cls = get_strategy(name)
    card = CARDS.get(name)
    if card is None:
        raise MetaclError(f"strategy {name!r} has no method card in metacl/strategies/cards.py; add one there")
    opts = option_lines(cls)
    out = [f"{name}: {cls.description}", "", "formula:"]
    out += [f"  {line}" for line in card.formula.splitlines()]
    out += ["", "options:"] + (opts or ["  (none)"])
    out += ["", f"adapted: {card.adapted}"]
    return "\n".join(out) + "\n"
