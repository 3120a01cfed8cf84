"""`metacl.data.lama`: schema, validation errors naming file/line/field, folder layouts, probes."""

import json
from pathlib import Path

import pytest

from metacl.cli.main import main
from metacl.core.probes import probe_split
from metacl.data.lama import LamaItem, load_ckl_data, load_lama_dataset, load_lama_jsonl
from metacl.errors import DataError, MetaclError

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lama_ckl"


def _row(i, subject="Orla Venn", obj="Port Avery", **kw):
    r = {
        "relation_code": "P551", "uuid": f"u-{i}",
        "task_descriptive": f"{subject} lives in {obj} .",
        "task_schematic": f"Guess the object. \n  subject is {subject} , relation is residence , object is {obj}",
        "subject": subject, "relation_label": "residence", "object": obj,
        "masked_evidence": f"Born in 1950, {subject} later settled in [MASK] for good.",
        "evidence": f"Born in 1950, {subject} later settled in {obj} for good.",
        "position": 0.6, "evidence_length": 50, "invariant": False,
        "scores": {"descriptive": {"llama_7b": 0.0}},
    }
    r.update(kw)
    return r


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_loads_schema_and_keeps_extra_fields(tmp_path):
    f = _write(tmp_path / "ok.jsonl", [_row(0), _row(1, "Ilse Marr", "Kettering Holdings", note="x"), _row(2)])
    items = load_lama_jsonl(f)
    assert [type(i) for i in items] == [LamaItem] * 3
    assert items[1].subject == "Ilse Marr" and items[1].object == "Kettering Holdings"
    assert items[1].extra == {"note": "x"} and items[0].extra == {}
    assert items[0].scores == {"descriptive": {"llama_7b": 0.0}}
    assert items[0].position == 0.6 and items[0].evidence_length == 50 and items[0].invariant is False
    ds = load_lama_dataset(f)  # the same rows through `datasets`
    assert len(ds) == 3 and ds[2]["uuid"] == "u-2"
    assert items[0].to_row()["evidence"] == _row(0)["evidence"]


def test_optional_fields_are_derived(tmp_path):
    r = _row(0)
    for k in ("task_schematic", "masked_evidence", "position", "evidence_length", "invariant", "scores"):
        r.pop(k)
    (item,) = load_lama_jsonl(_write(tmp_path / "min.jsonl", [r]))
    assert item.masked_evidence == "Born in 1950, Orla Venn later settled in [MASK] for good."
    assert item.evidence_length == len(r["evidence"]) and 0 < item.position < 1
    assert "object is Port Avery" in item.task_schematic


BAD = [
    ("malformed", '{"relation_code": "P1", ', "malformed JSON"),
    ("missing", {k: v for k, v in _row(9).items() if k != "object"}, "field 'object' is missing"),
    ("empty", _row(9, evidence="  "), "field 'evidence' is empty"),
    ("not_in_probe", _row(9, task_descriptive="Orla Venn lives somewhere ."), "field 'task_descriptive' does not contain"),
    ("not_in_evidence", _row(9, evidence="Orla Venn moved away."), "field 'evidence' does not contain"),
    ("case", _row(9, task_descriptive="Orla Venn lives in port avery ."), "field 'task_descriptive' does not contain"),
    ("duplicate", _row(0), "field 'uuid'"),
    ("bad_type", _row(9, position="middle"), "field 'position' is not a number"),
    ("not_object", "[1, 2]", "not an object"),
]


@pytest.mark.parametrize("name,bad,expect", BAD, ids=[b[0] for b in BAD])
def test_bad_row_names_file_line_field(tmp_path, name, bad, expect):
    f = _write(tmp_path / f"{name}.jsonl", [_row(0), _row(1), bad])
    with pytest.raises(DataError) as e:
        load_lama_jsonl(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:3:"), msg
    assert expect in msg
    assert "\n" not in msg and ";" in msg  # one line, with a fix after the semicolon


def test_cli_check_exit_codes(tmp_path, capsys):
    good = _write(tmp_path / "good.jsonl", [_row(0)])
    bad = _write(tmp_path / "bad.jsonl", [_row(0), {"uuid": "x"}])
    assert main(["data", "check", str(good)]) == 0
    assert main(["data", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2: field 'relation_code'" in err[0]


def test_probe_split_uses_last_occurrence():
    it = LamaItem(**_row(0, "Paris Hilton", "Paris"), extra={})
    assert probe_split(it) == ("Paris Hilton lives in", "Paris")
    it.task_descriptive = "Ms Hilton moved away ."
    with pytest.raises(DataError, match="task_descriptive"):
        probe_split(it)


def test_ckl_folders_and_explicit_files(tmp_path):
    w = tmp_path / "world"
    w.mkdir()
    _write(w / "tl.jsonl", [_row(0), _row(1)])
    _write(w / "nf.jsonl", [_row(2)])
    _write(w / "pretrain_corpus.jsonl", [{"text": "Orla Venn lives in Port Avery."}])
    d = load_ckl_data(w)
    assert (len(d.tl), len(d.nf), d.tl_val, d.source) == (2, 1, None, "world")
    assert d.old_corpus == ["Orla Venn lives in Port Avery."]
    _write(w / "tl_val.jsonl", [_row(3)])
    assert len(load_ckl_data(w).tl_val) == 1

    o = tmp_path / "official"
    o.mkdir()
    _write(o / "variant.jsonl", [_row(0)])
    _write(o / "invariant_descriptive.jsonl", [_row(1), _row(2)])
    d = load_ckl_data(o)
    assert (len(d.tl), len(d.nf), d.tl_val, d.source) == (1, 2, None, "lama_ckl")
    d = load_ckl_data(o, tl_val=w / "tl_val.jsonl", nf=w / "nf.jsonl")  # explicit files win
    assert (len(d.nf), len(d.tl_val)) == (1, 1)
    d = load_ckl_data(tl=w / "tl.jsonl", nf=w / "nf.jsonl")
    assert (len(d.tl), d.source) == (2, "files")

    with pytest.raises(MetaclError, match="neither"):
        load_ckl_data(tmp_path / "world" / ".." / "official" / "..")
    with pytest.raises(MetaclError, match="does not exist"):
        load_ckl_data(tmp_path / "nope")
    with pytest.raises(MetaclError, match="no NF file"):
        load_ckl_data(tl=w / "tl.jsonl")


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official LAMA-ckl files live in ../shared, absent here")
def test_official_files_load_cleanly():
    d = load_ckl_data(OFFICIAL)
    schematic = load_lama_jsonl(OFFICIAL / "invariant_schematic.jsonl")
    assert (len(d.tl), len(d.nf), len(schematic)) == (500, 500, 500)
    assert all(not i.invariant for i in d.tl) and all(i.invariant for i in d.nf)
    for it in d.tl + d.nf + schematic:
        prefix, obj = probe_split(it)
        assert prefix and obj == it.object and not prefix.endswith(" ")
