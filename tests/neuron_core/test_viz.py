"""Pictures of neurons: every plot returns a Figure with the right content, saves as PNG/SVG, and works from a
record and from a profile; dashboards escape the corpus and load nothing from the network."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import FancyBboxPatch, Rectangle
from matplotlib.text import Text

from neuron_core import ActivationMonitor, InputError, ModelInterface, UnknownSiteError, profile
from neuron_core.analysis.types import Mode, ModeExample, PolysemanticNeuron
from neuron_core.viz import ActivationVisualizer, NeuronLogitEffects, plot_logit_effects, plot_mode_shares, save
from neuron_core.viz._html import safe_json
from neuron_core.viz._text import mpl_text, token_label

N_NEURONS = 1536  # as wide as SmolLM2's MLPs, so the pictures must aggregate
INJECT = "<script>window.__pwned = 1; console.error('pwned')</script>"
IMG = '<img src=x onerror="window.__pwned=2">'
TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    f"Notes: {INJECT} and {IMG} end.",
    "It costs $5 or $6 & more; x_1^2 = {a}.",
    "Paris is the capital of France.",
]
L1 = "blocks.1.mlp.hook_post"


@pytest.fixture(scope="module")
def tiny(tok):
    from tests.conftest import make_tiny_gpt2

    return ModelInterface(make_tiny_gpt2(tok, n_layer=2, n_inner=N_NEURONS), tokenizer=tok, name="tiny-gpt2-wide")


@pytest.fixture(scope="module")
def record(tiny):
    return ActivationMonitor(tiny, ["layer 0", "layer 1"]).capture(TEXTS)


@pytest.fixture(scope="module")
def prof(tiny):
    corpus = TEXTS * 6 + [f"Document {i}: the price is {i * 3} dollars." for i in range(30)]
    return profile(tiny, ["layer 0", "layer 1"], corpus, max_tokens=1500, top_k=8, bottom_k=4, n_samples=8,
                   progress=False)


@pytest.fixture(params=["record", "profile"])
def viz(request, record, prof):
    return ActivationVisualizer(record if request.param == "record" else prof)


def verdicts(site: str = L1) -> list[PolysemanticNeuron]:
    out = []
    for k, n in enumerate((7, 300, 1200)):
        modes = [
            Mode(label="french words", share=0.5, n_examples=12, top_tokens=[" le", " la", "$x$"],
                 examples=[ModeExample(text="Le chat [[ est]] là", token=" est", value=2.5, doc_id=1, position=2)],
                 effect=0.02 if k == 0 else None),
            Mode(label=f"code {INJECT}", share=0.3, n_examples=7, top_tokens=["def", "<b>"],
                 examples=[ModeExample(text=f"x = [[{INJECT}]] {IMG}", token=INJECT, value=1.5, doc_id=2,
                                       position=4)]),
        ]
        out.append(PolysemanticNeuron(site=site, neuron=n, score=0.9 - 0.2 * k, p_value=0.01, z_score=3.0,
                                      n_modes=len(modes), separation=0.4, modes=modes, summary=f"two modes {k}"))
    return out


def effects() -> list[NeuronLogitEffects]:
    return [NeuronLogitEffects(site="layer 1", neuron=7, promoted=[(" Paris", 2.0), ("$", 1.0), (INJECT, 0.5)],
                               suppressed=[(" the", -1.0), ("\n", -0.5)])]


def images(fig: Figure) -> list[AxesImage]:
    return [im for ax in fig.axes for im in ax.get_images()]


def all_text(fig: Figure) -> str:
    parts = [t.get_text() for t in fig.findobj(Text)]
    return "\n".join(p for p in parts if isinstance(p, str))


def strong_boxes(fig: Figure) -> list[FancyBboxPatch]:
    return [p for ax in fig.axes for p in ax.patches if isinstance(p, FancyBboxPatch) and p.get_linewidth() > 1.0]


# -- heatmaps ----------------------------------------------------------------------------------------------
def test_record_heatmap_tokens_by_top_neurons(record):
    fig = ActivationVisualizer(record).plot_heatmap("layer 1", max_tokens=100)
    assert isinstance(fig, Figure)
    (im,) = images(fig)
    assert im.get_array().shape == (len(record), 40)  # every token × the 40 most active neurons
    ax = im.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(record) and "·cat" in labels  # readable tokens, spaces made visible
    assert len(ax.get_xticklabels()) == 40
    assert "top 40 of 1536 neurons" in ax.get_title(loc="left")
    norm = im.norm
    assert isinstance(norm, CenteredNorm) and norm.vcenter == 0  # signed activations: centred diverging map
    assert im.get_cmap().name.startswith("RdBu_r")
    # the chosen columns are the 40 largest by max |activation|
    acts = record[L1].abs().amax(0).numpy()
    chosen = sorted(int(t.get_text()[1:]) for t in ax.get_xticklabels())
    assert set(chosen) == set(np.argsort(-acts)[:40].tolist())


def test_record_heatmap_bins_and_chosen_neurons(record):
    viz = ActivationVisualizer(record)
    fig = viz.plot_heatmap("layer 1", select="bins", max_neurons=48, max_tokens=100)
    (im,) = images(fig)
    assert im.get_array().shape == (len(record), 48)
    ax = im.axes
    assert "1536 neurons in 48 bins of 32" in ax.get_title(loc="left")
    assert len(ax.get_xticklabels()) <= 40  # no tick clutter
    # a bin shows its largest-magnitude entry, sign kept
    block = record[L1].numpy()[:, 32:64]
    expected = block[np.arange(len(block)), np.abs(block).argmax(1)]
    np.testing.assert_allclose(np.asarray(im.get_array())[:, 1], expected, rtol=1e-6)

    fig = viz.plot_heatmap("layer 1", neurons=[3, 5, 900], text=2)
    (im,) = images(fig)
    doc_len = int((record.doc_ids == 2).sum())
    assert im.get_array().shape == (doc_len, 3)
    assert [t.get_text() for t in im.axes.get_xticklabels()] == ["N3", "N5", "N900"]
    with pytest.raises(InputError, match="max_neurons"):
        viz.plot_heatmap("layer 1", neurons=list(range(50)))
    with pytest.raises(InputError, match="name a layer"):
        viz.plot_heatmap()


def test_record_heatmap_separates_texts_and_limits_tokens(record):
    fig = ActivationVisualizer(record).plot_heatmap("layer 0", max_tokens=10)
    (im,) = images(fig)
    assert im.get_array().shape[0] == 10
    assert f"first 10 of {len(record)} tokens" in im.axes.get_title(loc="left")
    full = ActivationVisualizer(record).plot_heatmap("layer 0", max_tokens=100)
    ax = images(full)[0].axes
    assert len(ax.get_lines()) == len(TEXTS) - 1  # a line between consecutive texts


def test_profile_heatmap_layers_by_bins(prof):
    viz = ActivationVisualizer(prof)
    fig = viz.plot_heatmap()
    (im,) = images(fig)
    assert im.get_array().shape == (2, 64)
    assert [t.get_text() for t in im.axes.get_yticklabels()] == ["L0", "L1"]
    assert "1536 neurons in 64 bins of 24 (max per bin)" in im.axes.get_title(loc="left")
    maxes = prof[L1].max.numpy()
    assert np.asarray(im.get_array())[1, 0] == pytest.approx(maxes[:24].max())

    fig = viz.plot_heatmap(stat="mean", select="top", max_neurons=30)
    (im,) = images(fig)
    assert im.get_array().shape == (2, 30) and "top 30 of 1536 neurons" in im.axes.get_title(loc="left")
    assert isinstance(im.norm, CenteredNorm) and im.norm.vcenter == 0  # means are signed

    fig = viz.plot_heatmap("layer 1", stat="frac_active")
    (im,) = images(fig)
    assert im.get_array().shape == (1, 64) and not isinstance(im.norm, CenteredNorm)
    with pytest.raises(InputError):
        viz.plot_heatmap(stat="median")
    with pytest.raises(InputError, match="no texts"):
        viz.plot_heatmap(text=0)


def test_highlight_polysemantic_record(tmp_path, record):
    fig = ActivationVisualizer(record).highlight_polysemantic(verdicts())
    heat = images(fig)[0].axes
    marked = [t.get_text() for t in heat.get_xticklabels() if t.get_text().startswith("★")]
    assert marked == ["★N7", "★N300", "★N1200"]
    boxes = [p for p in heat.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert len(boxes) == 3
    text = all_text(fig)
    for needle in ("L1/N7", "score 0.90", "french words", "50%", "·le", "ablation effect +0.02", "Le chat [[·est]]",
                   "two modes 0"):
        assert needle in text or needle.replace("·", " ") in text, needle
    assert mpl_text("$x$") in text  # corpus "$" is escaped for matplotlib, and the figure draws
    save(fig, tmp_path / "highlight.png")


def test_highlight_polysemantic_profile_numbers_cells(prof):
    result = SimpleNamespace(neurons=verdicts())  # an object with .neurons works too
    fig = ActivationVisualizer(prof).highlight_polysemantic(result, max_panels=2)
    heat = images(fig)[0].axes
    tags = [t.get_text() for t in heat.texts]
    assert "1" in tags and "2" in tags and "3" not in tags  # only the shown panels are numbered
    text = all_text(fig)
    assert "1. L1/N7" in text and "2. L1/N300" in text and "L1/N1200" not in text
    assert "2 highest scores of 3" in text
    with pytest.raises(InputError):
        ActivationVisualizer(prof).highlight_polysemantic([])


# -- one neuron --------------------------------------------------------------------------------------------
def test_token_activations_record(record):
    viz = ActivationVisualizer(record)
    fig = viz.plot_token_activations(5, text=0, layer=1)
    doc = int((record.doc_ids == 0).sum())
    strip_ax = fig.axes[0]
    boxes = [p for p in strip_ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == doc  # one box per token (no newlines in text 0)
    assert len(strong_boxes(fig)) == 1  # the peak is boxed
    bar_ax = fig.axes[-1]
    assert len(bar_ax.patches) == doc
    heights = [p.get_height() for p in bar_ax.patches]
    np.testing.assert_allclose(heights, record.neuron(L1, 5)[record.doc_slice(0)].numpy(), rtol=1e-6)
    assert "L1/N5 on text #0" in all_text(fig)

    by_text = viz.plot_token_activations("L1/N5", text=TEXTS[3])
    assert "text #3" in all_text(by_text)
    peak = viz.plot_token_activations("L1/N5")  # no text: where the neuron peaks
    assert "where it peaks" in all_text(peak)
    with pytest.raises(InputError):
        viz.plot_token_activations("L1/N5", text="not captured")
    with pytest.raises(InputError):
        viz.plot_token_activations("L1/N99999")


def test_token_activations_profile_shows_top_examples(prof):
    viz = ActivationVisualizer(prof)
    fig = viz.plot_token_activations("L1/N5", n_examples=4)
    assert len(strong_boxes(fig)) == 4  # one boxed token per example context
    assert len(fig.axes[-1].patches) == 4
    values = [ex.value for ex in prof[L1].top_examples(5, 4)]
    np.testing.assert_allclose([p.get_height() for p in fig.axes[-1].patches], values, rtol=1e-6)
    with pytest.raises(InputError, match="no full texts"):
        viz.plot_token_activations("L1/N5", text=0)


def test_histogram_profile_uses_log_bins(prof):
    fig = ActivationVisualizer(prof).plot_histogram("layer 1", 5)
    ax = fig.axes[0]
    hist = prof[L1].hist[5].numpy()
    nz = np.flatnonzero(hist)
    bars = ax.patches
    assert sum(p.get_height() for p in bars) == hist.sum() == prof.n_tokens
    assert len(bars) == min(nz[-1] + 1, len(hist) - 1) - max(nz[0] - 1, 0) + 1
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "0" in labels and len(labels) <= 20
    assert "signed log scale" in ax.get_xlabel()


def test_histogram_record_and_neuron_refs(record):
    viz = ActivationVisualizer(record)
    fig = viz.plot_histogram(neuron="L1/N5")
    ax = fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == len(record)
    # 0 is a bin edge: no bar mixes signs
    for p in ax.patches:
        assert p.get_x() >= -1e-12 or p.get_x() + p.get_width() <= 1e-12
    assert "record" in ax.get_title(loc="left")
    same = viz.plot_histogram("layer 1", 5)
    assert [p.get_height() for p in same.axes[0].patches] == [p.get_height() for p in ax.patches]
    with pytest.raises(InputError, match="name a neuron"):
        viz.plot_histogram("layer 1")


def test_sparsity(viz):
    fig = viz.plot_sparsity()
    left, right = fig.axes[:2]
    assert [t.get_text() for t in left.get_xticklabels()] == ["L0", "L1"]
    assert len(right.patches) == 4  # dead and dense bars for 2 layers
    means = left.get_lines()[-1].get_ydata()
    expected = [float(np.nanmean(viz.source.summary(s).frac_active)) for s in viz.source.site_names]
    np.testing.assert_allclose(means, expected)


def test_mode_shares():
    vs = verdicts()
    fig = plot_mode_shares(vs)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L1/N7  (0.90)", "L1/N300  (0.70)", "L1/N1200  (0.50)"]
    coloured = [p for p in ax.patches if p.get_facecolor()[:3] != (0.9333333333333333,) * 3]
    assert len(coloured) == sum(len(v.modes) for v in vs)
    assert "french words 50%" in all_text(fig)
    assert len(plot_mode_shares(vs, max_neurons=2).axes[0].get_yticklabels()) == 2


def test_logit_effects_typed_and_duck_typed():
    fig = plot_logit_effects(effects())
    ax_s, ax_p = fig.axes[:2]
    assert len(ax_s.patches) == 2 and len(ax_p.patches) == 3
    assert [t.get_text() for t in ax_p.get_yticklabels()][:2] == ["·Paris", r"\$"]
    assert [t.get_text() for t in ax_s.get_yticklabels()] == ["·the", "↵"]
    assert ax_s.get_xlim()[0] == pytest.approx(-ax_p.get_xlim()[1])  # one scale on both sides
    assert "L1/N7" in all_text(fig)
    duck = SimpleNamespace(site="blocks.0.mlp.hook_post", neuron=3, promoted=[("a", 1.0)], suppressed=[])
    fig = plot_logit_effects(duck)
    assert "none given" in all_text(fig) and "L0/N3" in all_text(fig)
    with pytest.raises(InputError):
        plot_logit_effects([{"site": "x"}])


# -- saving, text safety -----------------------------------------------------------------------------------
def test_save_png_and_svg(tmp_path, record, prof):
    fig = ActivationVisualizer(record).plot_heatmap("layer 1", path=tmp_path / "a" / "heat.png")
    png = (tmp_path / "a" / "heat.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out = save(fig, tmp_path / "heat.svg")
    assert out.read_text(encoding="utf-8").lstrip().startswith(("<?xml", "<svg"))
    ActivationVisualizer(prof).plot_sparsity(path=tmp_path / "sparsity.svg")
    assert "<svg" in (tmp_path / "sparsity.svg").read_text(encoding="utf-8")
    with pytest.raises(InputError, match=".png, .svg or .pdf"):
        save(fig, tmp_path / "heat.jpg")


def test_every_plot_renders_corpus_text_with_dollars(tmp_path, record):
    # "$5 or $6" would be mathtext to matplotlib; rendering must neither fail nor drop the text.
    viz = ActivationVisualizer(record)
    for fig in (viz.plot_token_activations("L1/N5", text=2), viz.plot_heatmap("layer 1", text=2)):
        save(fig, tmp_path / "x.png")
    assert token_label(" $5") == "·$5" and mpl_text("$5 or $6") == r"\$5 or \$6"
    assert token_label("\n\t") == "↵⇥" and token_label("") == "∅"


def test_unknown_sites_and_neurons_are_errors(record, prof):
    for source in (record, prof):
        viz = ActivationVisualizer(source)
        with pytest.raises(UnknownSiteError):
            viz.plot_histogram("layer 7", 1)
        with pytest.raises(UnknownSiteError):
            viz.highlight_polysemantic(verdicts(site="blocks.5.mlp.hook_post"))
    with pytest.raises(InputError):
        ActivationVisualizer("not a record")  # type: ignore[arg-type]


# -- HTML ----------------------------------------------------------------------------------------------------
def test_safe_json_escapes_markup():
    text = safe_json({"a": "</script><!-- & \u2028", "n": float("nan")})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028", "n": None}


def _scripts(html: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", html)


@pytest.mark.parametrize("which", ["record", "profile"])
def test_dashboard_escapes_and_is_self_contained(tmp_path, record, prof, which):
    viz = ActivationVisualizer(record if which == "record" else prof)
    index = viz.save_dashboard(tmp_path / "dash", detections=verdicts(), logit_effects=effects(), max_pages=6)
    assert index == tmp_path / "dash" / "index.html"
    pages = sorted(p.name for p in (tmp_path / "dash").glob("neuron_*.html"))
    # detected neurons first (by score), then the logit-effect neuron (already detected), then the most active
    assert {"neuron_L1_N7.html", "neuron_L1_N300.html", "neuron_L1_N1200.html"} <= set(pages)
    assert len(pages) == 6
    assert (tmp_path / "dash" / "plotly.min.js").stat().st_size > 1_000_000
    for path in [index, *(tmp_path / "dash").glob("neuron_*.html")]:
        html = path.read_text(encoding="utf-8")
        assert "Content-Security-Policy" in html
        for tag in _scripts(html):
            assert "http" not in tag and "//" not in tag, tag  # no CDN, no remote script
            assert re.fullmatch(r'<script( src="plotly\.min\.js"| type="application/json" id="page-data")?>', tag)
        assert "cdn.plot.ly" not in html and "https://" not in html.split("</style>")[0]
        assert INJECT not in html and IMG not in html and "<img" not in html  # untrusted text never raw
    n7 = (tmp_path / "dash" / "neuron_L1_N7.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;window.__pwned = 1;" in n7  # shown as text in the mode label and example
    assert "french words" in n7 and "ablation effect +0.02" in n7 and "Paris" in n7
    overview = index.read_text(encoding="utf-8")
    assert 'href="neuron_L1_N7.html"' in overview and "L1/N300" in overview
    data = json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>', overview,
                                re.S).group(1))
    assert data["pages"][f"{L1}/7"] == "neuron_L1_N7.html"
    assert len(data["heatmap"]["data"][0]["z"]) == 2  # layers × neurons
    if which == "record":  # the token heatmap labels carry corpus text, HTML-escaped for plotly
        labels = data["token_heatmap"]["layout"]["yaxis"]["ticktext"]
        assert any("&lt;" in lab for lab in labels) and not any("<" in lab for lab in labels)


def test_dashboard_neurons_argument_and_errors(tmp_path, record):
    viz = ActivationVisualizer(record)
    viz.save_dashboard(tmp_path / "d", neurons=["L0/N1", (L1, 2), "L1/N3"])
    assert sorted(p.name for p in (tmp_path / "d").glob("neuron_*.html")) == [
        "neuron_L0_N1.html", "neuron_L1_N2.html", "neuron_L1_N3.html"]
    with pytest.raises(UnknownSiteError):
        viz.save_dashboard(tmp_path / "e", detections=verdicts(site="blocks.9.mlp.hook_post"))
    with pytest.raises(InputError):
        viz.save_dashboard(tmp_path / "f", neurons=[])


def test_site_profile_is_a_one_layer_profile(prof):
    viz = ActivationVisualizer(prof[L1])
    (im,) = images(viz.plot_heatmap())
    assert im.get_array().shape == (1, 64)
    assert viz.plot_histogram(neuron=5) is not None  # the only site needs no layer
    assert "L1/N5" in all_text(viz.plot_token_activations(5))
