"""`metacl data official-meta`: meta pairs from invariant_schematic sharing nothing with NF or TL."""

import json

from metacl.cli.main import main
from metacl.data.official_split import official_meta_split


def _row(uuid, subj, obj, evidence, probe=None):
    return {"relation_code": "P1", "uuid": uuid, "task_descriptive": probe or f"{subj} is in {obj} .",
            "task_schematic": "", "subject": subj, "relation_label": "in", "object": obj,
            "masked_evidence": "", "evidence": evidence, "position": 0.5, "evidence_length": len(evidence),
            "invariant": True, "scores": {}}


def _write(d, name, rows):
    (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_meta_split_excludes_every_shared_item(tmp_path):
    nf = [_row("n1", "Apa", "Bel", "Apa lies near Bel.")]
    tl = [_row("t1", "Cor", "Dun", "Cor moved to Dun.")]
    src = [_row("n1", "Apa", "Bel", "other text about Bel"),          # same uuid as NF
           _row("s2", "Apa", "Bel", "Apa and Bel again."),           # same fact as NF
           _row("s3", "Eko", "Fen", "Cor moved to Dun."),            # same evidence as TL
           _row("s4", "Gal", "Dun", "x Dun", probe="Cor is in Dun ."),  # same probe as TL
           ] + [_row(f"k{i}", f"Sub{i}", f"Obj{i}", f"Sub{i} is found in Obj{i} and more.") for i in range(40)]
    _write(tmp_path, "invariant_descriptive.jsonl", nf)
    _write(tmp_path, "variant.jsonl", tl)
    _write(tmp_path, "invariant_schematic.jsonl", src)
    s = official_meta_split(tmp_path, val_fraction=0.25)
    kept = s["meta_train"] + s["meta_val"]
    assert {r["uuid"] for r in kept} == {f"k{i}" for i in range(40)}
    assert s["excluded"][0] == {"uuid": 1, "fact": 1, "evidence": 1, "probe": 1}
    assert 0 < len(s["meta_val"]) < len(s["meta_train"])
    assert main(["data", "official-meta", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    meta = json.loads((tmp_path / "o" / "official_meta.json").read_text())
    assert sum(meta["counts"].values()) == 40
    assert main(["data", "official-meta", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2
