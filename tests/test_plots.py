"""Pictures from a tiny search run and a tiny training run."""
import json
import os
import subprocess
import sys

import pytest

from ndarts import plots, search, train
from ndarts.genotype import zoo


ENV1 = {**os.environ, "OMP_NUM_THREADS": "1"}

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    return path.stat().st_size > 2000 and path.read_bytes()[:8] == PNG


@pytest.mark.slow
def test_figures_of_a_tiny_search_run(tmp_path, capsys):
    run = tmp_path / "run"
    search.main(["--epochs", "2", "--max-steps", "2", "--layers", "3", "--init-channels", "4", "--out", str(run)])
    written = plots.main([str(run)])
    figures = run / "figures"
    names = {p.name for p in written}
    assert {"alphas.png", "skips.png", "curves.png", "cell-normal.png", "cell-reduce.png",
            "cell-normal.svg", "cell-reduce.svg"} <= names
    for p in written:
        assert p.parent == figures
        if p.suffix == ".png":
            assert is_png(p), p
    # the final cell drawn is the run's last genotype
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["genotype"]
    svg = (figures / "cell-normal.svg").read_text()
    assert all(op in svg for op, _ in last["normal"])


def test_figures_of_a_training_run_and_cli(tmp_path):
    run = tmp_path / "t"
    train.main(["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--max-steps", "1",
                "--epochs", "2", "--out", str(run)])
    p = subprocess.run([sys.executable, "-m", "ndarts.plots", str(run), "--out", str(tmp_path / "figs")],
                       capture_output=True, text=True, env=ENV1, timeout=300)
    assert p.returncode == 0, p.stderr
    assert is_png(tmp_path / "figs" / "curves.png") and is_png(tmp_path / "figs" / "cell-reduce.png")
    assert not (tmp_path / "figs" / "alphas.png").exists()  # no α in a training run


def test_alpha_figure_from_synthetic_records(tmp_path):
    # 3 epochs, 14 edges, 7 ops: skip_connect grows — the figure is made, whatever the values
    prims = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")
    recs = []
    for e in range(3):
        row = [(0.4 + 0.1 * e) if op == "skip_connect" else (0.6 - 0.1 * e) / 6 for op in prims]
        recs.append({"epoch": e, "alphas_normal": [row] * 14, "alphas_reduce": [row] * 14,
                     "skip_normal": e, "skip_reduce": 0, "train_loss": 1.0 / (e + 1), "val_acc": 0.1 * e,
                     "genotype": zoo()["DARTS_V1"].to_dict()})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "config.json").write_text(json.dumps({"space": "noisydarts"}))
    written = plots.plot_run(tmp_path)
    assert all(is_png(p) for p in written if p.suffix == ".png")
    # a wrong space for the recorded α is a clear error, not a silent mislabel
    (tmp_path / "config.json").write_text(json.dumps({"space": "darts"}))
    with pytest.raises(Exception, match="ops per edge"):
        plots.plot_run(tmp_path)


def test_curves_plot_the_epochs_that_have_a_value():
    """A search run with --eval-every 2 records val_* as null on the other epochs: the val curve
    has a point at each evaluated epoch only (and no gap-filled zero); train has every epoch."""
    recs = [{"epoch": e, "train_loss": 2.0 - 0.3 * e, "train_acc": 0.2 + 0.1 * e,
             "val_loss": 1.9 - 0.3 * e if e % 2 else None, "val_acc": 0.25 + 0.1 * e if e % 2 else None}
            for e in range(4)]
    fig = plots.curves_figure(recs)
    (ax_l, ax_a) = fig.axes
    lines = {(ax is ax_a, ln.get_label()): ln for ax in (ax_l, ax_a) for ln in ax.get_lines()}
    assert list(lines[(False, "train")].get_xdata()) == [1, 2, 3, 4]
    assert list(lines[(False, "val")].get_xdata()) == [2, 4]
    assert list(lines[(False, "val")].get_ydata()) == pytest.approx([1.6, 1.0])
    assert list(lines[(True, "val")].get_ydata()) == pytest.approx([35.0, 55.0])
    assert (False, "test") not in lines


def test_plots_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        plots.main([str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit):
        plots.main([str(tmp_path)])  # no metrics.jsonl
    assert "metrics.jsonl" in capsys.readouterr().err


def _arc_peaks(fig, ax):
    """The top of each edge arc drawn on ax (its drawn extent, in data coordinates); not the dashed concat arcs."""
    from matplotlib.patches import FancyArrowPatch

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [ax.transData.inverted().transform((0, patch.get_window_extent(renderer).y1))[1]
            for patch in ax.patches if isinstance(patch, FancyArrowPatch) and patch.get_linestyle() != "--"]


@pytest.mark.parametrize("repeats", [1, 2])
def test_cell_arcs_fit_in_the_axes(repeats):
    """Every edge's arc below the axes' top, also where a node takes both edges from one input
    (NASNet's cells: the second arc is higher; it was cut at the top, its label on the title)."""
    import matplotlib.pyplot as plt

    edges = [("sep_conv_3x3", 0), ("skip_connect", 1), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0 if repeats == 2 else 2),
             ("max_pool_3x3", 1), ("dil_conv_3x3", 1 if repeats == 2 else 3), ("sep_conv_5x5", 0),
             ("avg_pool_3x3", 0 if repeats == 2 else 4)]
    fig, ax = plt.subplots()
    plots.draw_cell(ax, edges, [2, 3, 4, 5], title="cell")
    peaks = _arc_peaks(fig, ax)
    assert len(peaks) == len(edges)
    assert max(peaks) <= ax.get_ylim()[1], (max(peaks), ax.get_ylim())
    plt.close(fig)


@pytest.mark.parametrize("activation,line,label", [("softmax", 1 / 7, "softmax(α)"), ("sigmoid", 0.5, "sigmoid(α)")])
def test_the_alpha_figure_follows_the_arch_activation(activation, line, label):
    """FairDARTS's sigmoid weights start near 0.5 each: labelled and referenced as such, not as a softmax."""
    import matplotlib.pyplot as plt

    prims = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
             "dil_conv_5x5")
    recs = [{"epoch": e, "alphas_normal": [[0.5] * 7] * 14, "alphas_reduce": [[0.5] * 7] * 14} for e in range(2)]
    fig = plots.alpha_figure(recs, prims, activation)
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith(label)
    dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert len(dotted) == 1 and dotted[0].get_ydata()[0] == pytest.approx(line)
    plt.close(fig)
