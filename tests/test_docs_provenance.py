"""Provenance of the numbers in README.md and docs/: cited result files exist, stated sizes are computed.

Why: every number in the docs must come from a committed JSON or run folder (issue 20). A doc that
cites `docs/results/X` for a number while X was never committed (or was renamed) is an unsourced
number that looks sourced; and the base-LM parameter counts written in prose were wrong more than
once. These tests catch both without running any experiment.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# `docs/results/...` anywhere; in files under docs/ also `results/...` (relative to docs/).
CITE = re.compile(r"(?<![\w/])((?:docs/)?results/[A-Za-z0-9_@.\-{},*/+]+)")
# Upper-case words stand for a value (`after_SIZE.json`, `closure_P.json`); a path cut off by `<name>` or a
# shell variable (`baselines1_<run>/`, `k4_lr1e-2_o${o}_metrics.jsonl`) stands for every path it begins.
PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Z0-9]*(?![a-z0-9])")
# Paths in the docs that are not citations of a number, each with its reason. Keep this list short.
NOT_CITATIONS = {
    "docs/results/base_lm_world.json": "base_lm.md: the script's default output path when --json is not given",
    "docs/results/official_v2_summary.json": "official_v2.md: output of a command documented as not run yet",
}


def doc_files() -> list[Path]:
    """The prose whose numbers must be sourced: README.md, docs/*.md, docs/results/**/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "results").rglob("*.md"))]


def expand_braces(path: str) -> list[str]:
    """`a{,_b}/c` -> [`a/c`, `a_b/c`] (shell brace expansion, one level per group, as the docs use it)."""
    parts = re.split(r"(\{[^{}]*\})", path)
    choices = [p[1:-1].split(",") if p.startswith("{") and p.endswith("}") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def cited_paths(text: str) -> list[str]:
    """Every result path the text cites, with trailing punctuation of the prose stripped."""
    out = []
    for m in CITE.finditer(text):
        raw = m.group(1).rstrip(".,;:)")
        if raw.count("{") != raw.count("}"):
            raw = raw.split("{")[0] + "*"
        elif text[m.end():m.end() + 1] in ("<", "$"):
            raw += "*"
        out.extend(expand_braces(raw))
    return out


def resolves(cited: str, doc: Path) -> bool:
    """True when the cited path (a file, a folder, or a glob with placeholders) exists in the repo."""
    rel = cited if cited.startswith("docs/") else f"docs/{cited}"
    rel = rel.rstrip("/")
    if rel in NOT_CITATIONS:
        return True
    pattern = PLACEHOLDER.sub("*", rel)
    if "*" in pattern:
        return any(ROOT.glob(pattern))
    return (ROOT / rel).exists()


def missing_citations(docs: list[Path]) -> list[str]:
    missing = []
    for doc in docs:
        name = doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc.name
        for cited in cited_paths(doc.read_text()):
            if not resolves(cited, doc):
                missing.append(f"{name}: {cited}")
    return sorted(set(missing))


def test_every_cited_result_path_exists():
    missing = missing_citations(doc_files())
    assert not missing, "cited but not committed:\n" + "\n".join(missing)


def test_the_citation_check_can_fail(tmp_path):
    # A made-up citation must be reported, a real one must not: the check above is not vacuous.
    assert cited_paths("see `docs/results/world_v2_base_lm/pretrain.json`.") == ["docs/results/world_v2_base_lm/pretrain.json"]
    assert expand_braces("docs/results/lo_plasticity_smoke{,_linear}/summary.json") == [
        "docs/results/lo_plasticity_smoke/summary.json", "docs/results/lo_plasticity_smoke_linear/summary.json"]
    fake = tmp_path / "doc.md"
    fake.write_text("TL 0.9 (`docs/results/never_committed_run/summary.json`); NF 1.0 (`results/world_v2_base_lm/`);\n"
                    "rows: `docs/results/meta_throughput_issue18/after_SIZE.json`, `docs/results/nothing_SIZE.json`.")
    assert missing_citations([fake]) == ["doc.md: docs/results/never_committed_run/summary.json",
                                         "doc.md: docs/results/nothing_SIZE.json"]


class _Tok:
    """Just what `build_model` reads from a tokenizer: its length and three special ids."""

    def __init__(self, n: int):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, 1, 2, 0

    def __len__(self):
        return self.n


def _count(preset, vocab: int) -> int:
    from metacl.models.pretrain import build_model
    return sum(p.numel() for p in build_model(preset, _Tok(vocab)).parameters())


def test_small_preset_size_matches_the_committed_pretrain_json_and_the_docs():
    """The counts the docs state for `small`: 2,163,456 at vocab 2043 (world v2), 1,771,200 + 192 x vocab."""
    from metacl.models.pretrain import PRESETS

    small = PRESETS["small"]
    record = json.loads((ROOT / "docs/results/world_v2_base_lm/pretrain.json").read_text())
    assert record["vocab_size"] == 2043
    assert _count(small, record["vocab_size"]) == record["parameters"] == 2_163_456
    assert _count(small, 2048) == 1_771_200 + 192 * 2048 == 2_164_416
    assert (small.num_layers, small.hidden_size, small.intermediate_size, small.block_size) == (4, 192, 512, 512)


def test_old_model_sizes_stated_in_the_docs():
    """The pre-issue-20 `small` (896,000 at vocab 2001, committed JSON) and the world-v1 TAALM/baselines LM
    (4 layers, hidden 192, context 128: 2,155,392 at vocab 2001, the count the docs give for it)."""
    from dataclasses import replace

    from metacl.models.pretrain import PRESETS

    old_small = replace(PRESETS["small"], hidden_size=128, num_layers=3, intermediate_size=384, block_size=128)
    record = json.loads((ROOT / "docs/results/base_lm_world_s0.json").read_text())["pretrain"]
    assert _count(old_small, record["vocab_size"]) == record["parameters"] == 896_000
    v1_lm = replace(PRESETS["small"], block_size=128)
    assert _count(v1_lm, 2001) == 2_155_392
    for doc in ("docs/results/taalm.md", "docs/results/baselines1.md"):
        assert "2,155,392" in (ROOT / doc).read_text(), doc
    assert "2,163,456" in (ROOT / "docs/results/world_v2.md").read_text()


@pytest.mark.parametrize("doc", ["README.md", "docs/results/base_lm.md", "docs/results/taalm.md"])
def test_no_stale_small_preset_description(doc):
    # Statements that were wrong: `small` as a ~1M or 2.2M model at vocab 2048, and "what `small` meant
    # on that date" for the 4-layer LM (the committed preset of that date was the 0.9M one).
    text = (ROOT / doc).read_text()
    for stale in ("2,155,392 parameters at vocab 2048", "what `small` meant on that date", "presets\n(~1M parameters)"):
        assert stale not in text, (doc, stale)
