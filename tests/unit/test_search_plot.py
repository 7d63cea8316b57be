"""search_probs.png (plot_search): the candidates are named for every layer's panel, one figure legend
below the panels (not one panel's legend over its curves), each candidate one colour in all panels."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("speechbrain")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from serkit.speechbrain.brain import plot_search  # noqa: E402

CHOICES = ["msa_ffn", "msa", "ffn", "conv", "identity"]


def entries(layers: int = 4, epochs: int = 3) -> list[dict]:
    probs = [
        [[(c + 1 + layer + e) / 100 for c in range(len(CHOICES))] for layer in range(layers)]
        for e in range(epochs)
    ]
    return [
        {"epoch": e + 1, "choices": CHOICES, "probabilities": p, "derived": "msa_ffn,msa,ffn,conv"}
        for e, p in enumerate(probs)
    ]


def test_one_legend_names_every_candidate_for_all_panels(tmp_path):
    path = tmp_path / "search_probs.png"
    fig = plot_search(entries(), path)
    assert path.stat().st_size > 1000
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [f"layer {k}" for k in (1, 2, 3, 4)]
    assert all(ax.get_legend() is None for ax in axes)  # no panel's legend covers its curves
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == CHOICES
    colours = [h.get_color() for h in legend.legend_handles]
    for ax in axes:  # the legend holds for every panel: same candidate, same colour
        assert [(ln.get_label(), ln.get_color()) for ln in ax.get_lines()] == list(zip(CHOICES, colours))
    # the legend lies below the panels, inside the saved figure
    canvas = FigureCanvasAgg(fig)  # the figure comes back closed: draw it as it was saved
    canvas.draw()
    renderer = canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert box.y0 >= 0 and box.x0 >= 0 and box.x1 <= fig.bbox.width
    assert all(box.y1 <= ax.get_tightbbox(renderer).y0 for ax in axes)


def test_no_entries_no_plot(tmp_path):
    assert plot_search([], tmp_path / "p.png") is None and not (tmp_path / "p.png").exists()
