"""Show a document with each token shaded by its learned weight (HTML and PNG).

Why: a token weighter is only convincing if one can *see* where it puts the weight. A reader
should be able to look at the picture and check that the object of the fact is dark and the
filler is pale. Darker = higher weight; the number under the PNG is the weight range.

    metacl visualize --predictor runs/tw/best --text "Ovar Lind was born in Kestrel ." --out doc.png
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Readable text of each token (byte-level BPE's 'Ġ' turned back into a space)."""
    return [tokenizer.decode([i]) for i in ids]


def render_html(tokens: Sequence[str], weights: Sequence[float], title: str = "") -> str:
    """A standalone HTML page: one <span> per token, background alpha = weight."""
    spans = []
    for t, w in zip(tokens, weights):
        t = html.escape(t).replace("\n", "<br>")
        spans.append(f'<span title="{w:.3f}" style="background: rgba(214, 39, 40, {max(0.0, min(1.0, w)):.3f})">{t}</span>')
    head = f"<h3>{html.escape(title)}</h3>" if title else ""
    return ("<!doctype html><meta charset='utf-8'><body style='font-family: monospace; font-size: 16px; "
            f"line-height: 1.8; max-width: 60em'>{head}<p>{''.join(spans)}</p>"
            "<p style='color:#666'>background opacity = token weight (hover for the value)</p></body>\n")


def render_png(tokens: Sequence[str], weights: Sequence[float], path: str | Path, title: str = "",
               width_chars: int = 70) -> Path:
    """Tokens laid out in lines of monospace text, each on a red box whose opacity is its weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    lines: list[list[tuple[str, float]]] = [[]]
    col = 0
    for t, w in zip(tokens, weights):
        t = t.replace("\n", " ")
        if col + len(t) > width_chars and lines[-1]:
            lines.append([])
            col = 0
        lines[-1].append((t, w))
        col += len(t)
    cw, lh = 0.11, 0.36  # inches per character and per line at fontsize 11
    fig_w = width_chars * cw + 0.6
    fig_h = len(lines) * lh + (0.9 if title else 0.5)
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, fig_w)
    ax.set_ylim(fig_h, 0)
    ax.axis("off")
    y = 0.6 if title else 0.3
    if title:
        ax.text(0.3, 0.3, title, fontsize=11, va="center", family="monospace", weight="bold")
    for line in lines:
        x = 0.3
        for t, w in line:
            ax.add_patch(Rectangle((x, y - lh / 2 + 0.03), len(t) * cw, lh - 0.06,
                                   color=(0.84, 0.15, 0.16, max(0.0, min(1.0, w))), lw=0))
            ax.text(x, y, t, fontsize=11, va="center", ha="left", family="monospace")
            x += len(t) * cw
        y += lh
    if weights:
        ax.text(0.3, fig_h - 0.15, f"red opacity = weight (min {min(weights):.3f}, max {max(weights):.3f})",
                fontsize=8, color="#555", family="monospace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def shade_document(weighter, tokenizer, text: str, out: str | Path, title: str = "", max_length: int = 256) -> Path:
    """Weights of `text` under `weighter`, written as PNG (or HTML if `out` ends with .html).

    The first token (BOS) is dropped: nothing predicts it, so it has no weight.
    """
    import torch

    enc = tokenizer(text, truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    dev = next(weighter.parameters()).device
    with torch.no_grad():
        w = weighter(torch.tensor([ids], device=dev), torch.ones(1, len(ids), dtype=torch.long, device=dev))[0]
    toks, ws = token_strings(tokenizer, ids)[1:], w.float().cpu().tolist()[1:]
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(toks, ws, title))
        return out
    return render_png(toks, ws, out, title)
