"""Untrusted files never execute code: no pickle anywhere, and our loaders never unpickle.

Two halves:

1. A static scan of every .py under metacl/ and experiments/ (by syntax tree, so comments and
   docstrings that *mention* pickle are fine) for the ways a file can run code when loaded:
   `import pickle`/`dill`/`joblib`/`cloudpickle`, `torch.load` without `weights_only=True`,
   `np.load(..., allow_pickle=True)`, `yaml.load`/`unsafe_load` without a safe loader,
   `eval`/`exec`, and `trust_remote_code=True`. The scanner is itself tested on planted snippets.
2. Behaviour: a pickle whose unpickling creates a marker file is planted where each loader
   might look (a model folder's `pytorch_model.bin`, a token weighter's backbone, a learned
   optimizer's folder, a checkpoint directory). Every loader must refuse or ignore it and the
   marker must never appear. A control shows the payload is live: unpickling it for real does
   create the marker, so the test would fail if any loader unpickled it.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def scan_source(src: str, name: str = "<src>") -> list[str]:
    """Every unsafe-loading construct in `src`, as 'name:line: what'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(src)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in BANNED_MODULES:
                    found.append(f"{name}:{line}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in BANNED_MODULES:
                found.append(f"{name}:{line}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            fn = _dotted(node.func)
            last = fn.split(".")[-1]
            if fn in ("eval", "exec", "builtins.eval", "builtins.exec"):
                found.append(f"{name}:{line}: {fn}()")
            elif fn == "torch.load" or fn.endswith(".torch.load"):
                if not _is_true(_kw(node, "weights_only")):
                    found.append(f"{name}:{line}: torch.load without weights_only=True")
            elif last == "load" and fn.split(".")[0] in ("np", "numpy") and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{name}:{line}: {fn}(allow_pickle=True)")
            elif fn in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                found.append(f"{name}:{line}: {fn}")
            elif fn == "yaml.load":
                loader = _dotted(_kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else ast.Constant(None)))
                if not loader.endswith(("SafeLoader", "CSafeLoader")):
                    found.append(f"{name}:{line}: yaml.load without SafeLoader")
            elif last in ("load", "loads") and fn.split(".")[0] in BANNED_MODULES:
                found.append(f"{name}:{line}: {fn}()")
            if _is_true(_kw(node, "trust_remote_code")):
                found.append(f"{name}:{line}: trust_remote_code=True")
    return found


def test_scanner_catches_every_planted_pattern():
    bad = {
        "import pickle": "import pickle",
        "from pickle import loads": "from pickle",
        "import dill": "import dill",
        "import joblib\njoblib.load('x')": "joblib.load",
        "torch.load('m.pt')": "torch.load without",
        "torch.load('m.pt', weights_only=False)": "torch.load without",
        "np.load('a.npy', allow_pickle=True)": "allow_pickle",
        "yaml.load(open('c'))": "yaml.load without",
        "yaml.unsafe_load(s)": "yaml.unsafe_load",
        "eval(open('f').read())": "eval()",
        "exec(text)": "exec()",
        "AutoModel.from_pretrained(p, trust_remote_code=True)": "trust_remote_code",
    }
    for src, what in bad.items():
        hits = scan_source(src)
        assert hits and any(what in h for h in hits), (src, hits)
    ok = ("torch.load(buf, weights_only=True)\nnp.load('a.npy')\nyaml.safe_load(s)\nmodel.eval()\n"
          "yaml.load(s, Loader=yaml.SafeLoader)\nx = 'import pickle'  # pickle.load in a comment\n")
    assert scan_source(ok) == []


def test_no_unsafe_loading_in_metacl_or_experiments():
    files = sorted([*(ROOT / "metacl").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")])
    assert len(files) > 20  # the scan really covers the package
    hits = [h for f in files for h in scan_source(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert hits == [], "\n".join(hits)


# ------------------------------------------------------------------------------ behaviour

class _Payload:
    """Unpickling this creates (opens for writing) the marker file: the stand-in for running code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from metacl.models.pretrain import tiny_model_for_tests

    return tiny_model_for_tests(tmp_path_factory.mktemp("np") / "model")


def test_payload_is_live_when_unpickled_unsafely(tmp_path):
    """Control: the planted file really runs code under an unsafe load (so the tests below can fail)."""
    marker = tmp_path / "MARKER"
    _plant(tmp_path / "evil.bin", marker)
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


def test_model_loader_never_unpickles(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from metacl.errors import MetaclError
    from metacl.models.loading import load_model_and_tokenizer

    marker = tmp_path / "MARKER"
    only_pickle = tmp_path / "only_pickle"
    shutil.copytree(tiny, only_pickle)
    for f in only_pickle.glob("*.safetensors"):
        f.unlink()
    _plant(only_pickle / "pytorch_model.bin", marker)
    with pytest.raises(MetaclError, match="pickle weights"):
        load_model_and_tokenizer(only_pickle, device="cpu")
    assert not marker.exists()
    # transformers on its own (no use_safetensors) reads a .bin with torch.load(weights_only=True):
    # the payload is refused there too. We do not rely on it, but check the claim in our docs.
    with pytest.raises(Exception):
        AutoModelForCausalLM.from_pretrained(str(only_pickle))
    assert not marker.exists()
    # a folder with both: the safetensors weights load, the pickle is never touched
    both = tmp_path / "both"
    shutil.copytree(tiny, both)
    _plant(both / "pytorch_model.bin", marker)
    _plant(both / "training_args.pt", marker)
    model, _ = load_model_and_tokenizer(both, device="cpu")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not marker.exists()


def test_meta_learner_and_checkpoint_loaders_never_unpickle(tiny, tmp_path):
    from metacl.checkpoint import load_checkpoint, save_checkpoint
    from metacl.errors import CheckpointError, MetaclError
    from metacl.meta.token_weighting import TokenWeighter
    from metacl.models.loading import load_model_and_tokenizer
    from metacl.optim.learned import LearnedOptimizer

    marker = tmp_path / "MARKER"
    model, tok = load_model_and_tokenizer(tiny, device="cpu")
    # token weighter whose backbone holds only a pickle
    tw = tmp_path / "tw"
    TokenWeighter.from_base_lm(model, tok).save_pretrained(tw)
    for f in (tw / "backbone").glob("*.safetensors"):
        f.unlink()
    _plant(tw / "backbone" / "pytorch_model.bin", marker)
    _plant(tw / "head.pt", marker)
    with pytest.raises(MetaclError, match="pickle weights"):
        TokenWeighter.from_pretrained(tw, base_tokenizer=tok)
    # token-weighter backbone given as a path (meta-train --backbone)
    bb = tmp_path / "bb"
    shutil.copytree(tiny, bb)
    for f in bb.glob("*.safetensors"):
        f.unlink()
    _plant(bb / "pytorch_model.bin", marker)
    with pytest.raises(MetaclError, match="pickle weights"):
        TokenWeighter.from_model_path(bb, tok)
    # learned optimizer folder with a pickle instead of safetensors
    lo = tmp_path / "lo"
    lo.mkdir()
    _plant(lo / "optimizer.pt", marker)
    _plant(lo / "optimizer.bin", marker)
    with pytest.raises(CheckpointError):
        LearnedOptimizer.from_pretrained(lo, [torch.nn.Parameter(torch.zeros(2))])
    # checkpoint directory: a pickle next to / instead of the safetensors + JSON pair
    ck = tmp_path / "ck"
    ck.mkdir()
    _plant(ck / "tensors.pt", marker)
    _plant(ck / "state.pkl", marker)
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)
    good = tmp_path / "good"
    save_checkpoint(good, {"w": torch.ones(2)}, {"step": 3})
    _plant(good / "optimizer.pt", marker)
    tensors, state = load_checkpoint(good)
    assert state["step"] == 3 and torch.equal(tensors["w"], torch.ones(2))
    # the safetensors file itself replaced by a pickle: read as safetensors, refused, never unpickled
    _plant(good / "tensors.safetensors", marker)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(good)
    assert not marker.exists()
