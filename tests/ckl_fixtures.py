"""A six-fact LAMA-ckl-schema world and a tiny model, for tests that launch real `ckl run`s."""

from __future__ import annotations

import json
from pathlib import Path

PEOPLE = ["Ada Quill", "Marco Vell", "Lena Ostrow", "Piet Arno", "Sara Lund", "Tomas Reyes"]
ORGS = ["Northwind Labs"] * 3 + ["Blue Harbor"] * 3
CITIES = ["Lisbon", "Rome", "Paris", "Oslo", "Quito", "Lima"]


def _item(i, s, rel, o, ev, code):
    return {"relation_code": code, "uuid": f"u{i}", "task_descriptive": f"{s} {rel} {o} .", "subject": s,
            "relation_label": rel, "object": o, "evidence": ev}


def make_tiny_ckl_world(root: Path, old_corpus: bool = False) -> tuple[Path, Path]:
    """Write root/world/{tl,nf}.jsonl (+ pretrain_corpus.jsonl) and a tiny model; returns (root, model dir)."""
    from metacl.models.pretrain import tiny_model_for_tests

    d = root / "world"
    d.mkdir()
    tl = [_item(i, p, "works for", o, f"{p} works for {o} . {p} works for {o} .", "P108")
          for i, (p, o) in enumerate(zip(PEOPLE, ORGS))]
    nf = [_item(100 + i, p, "lives in", c, f"{p} lives in {c} .", "P551") for i, (p, c) in enumerate(zip(PEOPLE, CITIES))]
    for name, rows in (("tl", tl), ("nf", nf)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if old_corpus:
        (d / "pretrain_corpus.jsonl").write_text("".join(json.dumps({"text": r["evidence"]}) + "\n" for r in nf))
    model = tiny_model_for_tests(root / "model", texts=[r["evidence"] for r in tl + nf] * 3)
    return root, model


def ckl_args(world: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    """`metacl ckl run` arguments for that world: 2 epochs, seed 0, a learning rate that moves a tiny model."""
    root, model = world
    return ["ckl", "run", "--model", str(model), "--data", str(root / "world"), "--out", str(out), "--epochs", "2",
            "--seeds", "0", "--lr", "6e-2", "--batch-size", "3", "--max-length", "10", "--no-exact-match",
            "--device", "cpu", *extra]
