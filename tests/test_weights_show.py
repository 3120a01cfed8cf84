"""`metacl weights show`: the printed weights, the PNG and the HTML are the weighter's own, for --text and --data."""

from __future__ import annotations

import json

import pytest
import torch

from metacl.cli.main import main
from metacl.meta.token_weighting import TokenWeighter
from metacl.models.loading import load_model_and_tokenizer
from metacl.models.pretrain import tiny_model_for_tests


DOC = "Ada Quill works for Northwind Labs ."


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    lm = tiny_model_for_tests(root / "lm", texts=[DOC] * 5)
    model, tok = load_model_and_tokenizer(lm)
    torch.manual_seed(0)
    tw = TokenWeighter.from_base_lm(model, tok)
    with torch.no_grad():  # spread the weights so every token has its own value
        tw.head.weight.normal_(0, 2.0)
        tw.head.bias.zero_()
    tw.save_pretrained(root / "tw" / "best")
    rows = [{"relation_code": "P108", "uuid": f"u{i}", "task_descriptive": f"{p} works for {o} .", "subject": p,
             "relation_label": "works for", "object": o, "evidence": f"{p} works for {o} ."}
            for i, (p, o) in enumerate([("Ada Quill", "Northwind Labs"), ("Marco Vell", "Blue Harbor")])]
    data = root / "tl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, tw.eval(), tok, data


def _expected(tw, tok, text):
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        w = tw(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
    return [tok.decode([i]) for i in ids[1:]], w[1:].tolist()


def test_show_text_prints_writes_png_and_html(saved, tmp_path, capsys):
    from PIL import Image

    root, tw, tok, _ = saved
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC + "\n")
    out = tmp_path / "shown"
    assert main(["weights", "show", "--predictor", str(root / "tw"), "--text", str(doc), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    toks, ws = _expected(tw, tok, DOC)
    assert len(set(round(w, 2) for w in ws)) > 2, "the fixture must give distinct weights"
    body = printed.splitlines()[1]
    assert body == "".join(f"{t}[{w:.2f}]" for t, w in zip(toks, ws)).strip()
    js = json.loads((out / "weights.json").read_text())
    assert js[0]["tokens"] == toks and js[0]["weights"] == pytest.approx(ws, abs=1e-6)
    png, = out.glob("*.png")
    with Image.open(png) as im:
        assert im.size[0] > 100 and im.size[1] > 20
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 10, "the PNG is shaded, not blank"
    html, = out.glob("*.html")
    spans = html.read_text().count("<span ")
    assert spans == len(toks)
    assert f'title="{ws[0]:.3f}"' in html.read_text()


def test_show_data_reports_object_weight(saved, tmp_path, capsys):
    root, tw, tok, data = saved
    out = tmp_path / "shown"
    assert main(["weights", "show", "--predictor", str(root / "tw" / "best"), "--data", str(data), "--items", "2",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    heads = [l for l in lines if l.startswith("u")]
    assert [h.split(":")[0] for h in heads] == ["u0", "u1"]
    assert "object 'Northwind Labs'" in heads[0] and "ratio" in heads[0]
    js = json.loads((out / "weights.json").read_text())
    toks, ws = _expected(tw, tok, "Ada Quill works for Northwind Labs .")
    on_obj = [w for w, m in zip(ws, js[0]["object_mask"]) if m]
    assert "".join(t for t, m in zip(toks, js[0]["object_mask"]) if m).strip() == "Northwind Labs"
    assert js[0]["object_mean"] == pytest.approx(sum(on_obj) / len(on_obj), abs=1e-6)
    assert len(list(out.glob("*.png"))) == 2 and len(list(out.glob("*.html"))) == 2


def test_show_bad_input_is_one_line_and_writes_nothing(saved, tmp_path, capsys):
    root, _, _, data = saved
    out = tmp_path / "never"
    assert main(["weights", "show", "--predictor", str(tmp_path / "nope"), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--predictor" in err[0] and "does not exist" in err[0]
    assert main(["weights", "show", "--predictor", str(root / "tw"), "--data", str(data), "--start", "9",
                 "--out", str(out)]) == 2
    assert "past the end" in capsys.readouterr().err
    assert main(["weights", "show", "--predictor", str(root / "tw"), "--out", str(out)]) == 2  # neither --text nor --data
    assert not out.exists()
