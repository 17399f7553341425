"""Pictures: cell diagrams and the course of a search or training run (matplotlib, Agg backend;
no graphviz binary needed).

``python -m ndarts.plots RUN_DIR`` writes into RUN_DIR/figures/:
    search runs (``python -m ndarts.search``):
        alphas.png      softmax(α) per operation over the epochs, mean over the 14 edges, normal
                        and reduction panels (skip_connect drawn thick red)
        skips.png       the number of skip connections in the derived cells, per epoch
        curves.png      losses and accuracies per epoch
        cell-normal.png/.svg, cell-reduce.png/.svg   the last derived genotype
    training runs (``python -m ndarts.train``): curves.png and the trained cells.

A cell diagram is an arc diagram: the nodes c_{k-2}, c_{k-1}, 0..3, c_{k} on a line, each edge
an arc above it labelled with its operation (skip connections red and thick), and the concat
into c_{k} as grey arcs below.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .errors import NdartsError, cli_errors  # noqa: E402
from .genotype import Genotype, GenotypeError  # noqa: E402
from .operations import SPACES  # noqa: E402

SKIP_COLOR = "#d62728"
OP_COLORS = {
    "skip_connect": SKIP_COLOR,
    "sep_conv_3x3": "#1f77b4", "sep_conv_5x5": "#0e9aa7", "sep_conv_7x7": "#aec7e8",
    "dil_conv_3x3": "#2ca02c", "dil_conv_5x5": "#8c8c00",
    "max_pool_3x3": "#9467bd", "avg_pool_3x3": "#8c564b", "none": "#7f7f7f",
    "nor_conv_1x1": "#2ca02c", "nor_conv_3x3": "#1f77b4",  # NAS-Bench-201's
}


# ----------------------------------------------------------------------------- cell diagrams
def _node_labels(steps: int) -> list[str]:
    return ["$c_{k-2}$", "$c_{k-1}$"] + [str(i) for i in range(steps)]


def draw_cell(ax, edges, concat, title: str = "", reduction: bool = False) -> None:
    """Draws one cell (a list of (op, input) edges, two per node) as an arc diagram on `ax`."""
    steps = len(edges) // 2
    spacing = 1.6
    xs = [i * spacing for i in range(steps + 2)] + [(steps + 2) * spacing + 0.4]
    labels = _node_labels(steps) + ["$c_{k}$"]
    peak = 0.25  # the highest arc's height: an arc3 of rad r over a span s peaks at |r|·s/2
    seen: dict[tuple[int, int], int] = {}
    for e, (op, j) in enumerate(edges):
        i = e // 2 + 2
        k = seen.get((j, i), 0)  # a node's second edge from the same input: a higher arc (NASNet's cells)
        seen[(j, i)] = k + 1
        rad = 0.5 + 0.25 * k
        peak = max(peak, rad * (xs[i] - xs[j]) / 2)
        _edge_arc(ax, xs[j], xs[i], -rad, op, op + (" /2" if reduction and j < 2 else ""))
    for n in concat:
        ax.add_patch(FancyArrowPatch((xs[n], 0), (xs[-1], 0), connectionstyle="arc3,rad=0.35",
                                     arrowstyle="-|>", mutation_scale=10, lw=0.9, color="#999999",
                                     linestyle="--", shrinkA=13, shrinkB=13, zorder=1))
    _nodes(ax, xs, labels, inputs=2)
    top = peak + 0.6
    bottom = -0.175 * (xs[-1] - xs[min(concat, default=2)]) - 0.4
    ax.text(xs[-1] + 0.5, bottom + 0.05, "dashed: concatenated into $c_{k}$", ha="right", va="bottom", fontsize=8,
            color="#777777")
    ax.set_xlim(xs[0] - 0.6, xs[-1] + 0.6)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=12)


def _edge_arc(ax, x0, x1, rad, op, label) -> None:
    """One edge from x0 to x1 as an arc with its op's name (rad < 0: bowing upwards); skip
    connections bold, `none` dashed."""
    skip, none = op == "skip_connect", op == "none"
    color = OP_COLORS.get(op, "#333333")
    ax.add_patch(FancyArrowPatch((x0, 0), (x1, 0), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                 mutation_scale=12, lw=2.6 if skip else 1.4, color=color,
                                 linestyle="--" if none else "-", shrinkA=13, shrinkB=13, zorder=2))
    # the midpoint of arc3's quadratic Bézier: mid + rad/2 · (dy, −dx)
    ax.text((x0 + x1) / 2, -rad / 2 * (x1 - x0), label, ha="center", va="center", fontsize=8.5, color=color,
            fontweight="bold" if skip else "normal", zorder=4,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))


def _nodes(ax, xs, labels, inputs: int) -> None:
    """The nodes as circles: the first `inputs` are the cell's inputs, the last its output."""
    for n, (x, label) in enumerate(zip(xs, labels)):
        fc = "#fde0c5" if n < inputs else "#c7e9c0" if n == len(xs) - 1 else "#dbe9f6"
        ax.scatter([x], [0], s=900, c=fc, edgecolors="#333333", linewidths=1.2, zorder=3)
        ax.text(x, 0, label, ha="center", va="center", fontsize=11, zorder=5)


def nb201_cell_figure(genotype, title: str | None = None):
    """A NAS-Bench-201 cell (ndarts.nasbench201.Nb201Genotype): nodes 0 (input) … 3 (output), an arc
    per edge (`none`, the edge the cell drops, dashed)."""
    from .nasbench201.space import EDGES, NODES

    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = [i * 2.2 for i in range(NODES)]
    for op, (to, i) in zip(genotype.ops, EDGES):
        _edge_arc(ax, xs[i], xs[to], -0.45 if to - i == 1 else -0.55, op, op)
    _nodes(ax, xs, [str(i) for i in range(NODES)], inputs=1)
    ax.set_xlim(xs[0] - 0.6, xs[-1] + 0.6)
    ax.set_ylim(-0.4, 0.3 * (xs[-1] - xs[0]) + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    n_skip = genotype.skip_counts()[0]
    ax.set_title(title or f"{genotype.arch_string()}\n{n_skip} skip connection{'s' * (n_skip != 1)}", fontsize=9)
    fig.tight_layout()
    return fig


def draw_nb201_genotype(genotype, prefix, formats=("png", "svg")) -> list[Path]:
    """Writes PREFIX.{png,svg} of a NAS-Bench-201 cell; returns the paths."""
    prefix = Path(prefix)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NdartsError(f"cannot create {prefix.parent}: {e.strerror or e}") from None
    fig = nb201_cell_figure(genotype)
    out = []
    for fmt in formats:
        out.append(prefix.parent / f"{prefix.name}.{fmt}")
        _save(fig, out[-1])
    plt.close(fig)
    return out


def cell_figure(genotype: Genotype, which: str, title: str | None = None):
    edges = genotype.normal if which == "normal" else genotype.reduce
    concat = genotype.normal_concat if which == "normal" else genotype.reduce_concat
    fig, ax = plt.subplots(figsize=(11, 4.6))
    n_skip = sum(op == "skip_connect" for op, _ in edges)
    name = "normal cell" if which == "normal" else "reduction cell (/2: stride 2)"
    draw_cell(ax, edges, concat, title or f"{name} — {n_skip} skip connection{'s' * (n_skip != 1)}",
              reduction=which == "reduce")
    fig.tight_layout()
    return fig


def draw_genotype(genotype: Genotype, prefix, formats=("png", "svg"), title: str | None = None) -> list[Path]:
    """Writes PREFIX-normal.{png,svg} and PREFIX-reduce.{png,svg}; returns the paths."""
    prefix = Path(prefix)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NdartsError(f"cannot create {prefix.parent}: {e.strerror or e}") from None
    out = []
    for which in ("normal", "reduce"):
        fig = cell_figure(genotype, which, None if title is None else f"{title}: {which}")
        for fmt in formats:
            path = prefix.parent / f"{prefix.name}-{which}.{fmt}"
            _save(fig, path)
            out.append(path)
        plt.close(fig)
    return out


def _save(fig, path: Path) -> None:
    try:
        fig.savefig(path, dpi=130, bbox_inches="tight", pad_inches=0.15)
    except OSError as e:
        raise NdartsError(f"cannot write {path}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- run directories
def read_run(run_dir) -> tuple[dict, list[dict]]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NdartsError(f"{run_dir} is not a directory")
    config, records = {}, []
    cfg_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    if cfg_path.exists():
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise NdartsError(f"{cfg_path} is corrupt: {e}") from None
    if not metrics_path.exists():
        raise NdartsError(f"{metrics_path} does not exist: not a run directory, or no epoch finished yet")
    for line in metrics_path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill
    if not records:
        raise NdartsError(f"{metrics_path} holds no finished epoch yet")
    return config, records


def _epochs(records):
    return [r["epoch"] + 1 for r in records]


ALPHA_PANELS = {"alphas_normal": "normal cell", "alphas_reduce": "reduction cell",
                "alphas_cell": "NAS-Bench-201 cell"}  # the metrics' α keys, by search space


def alpha_figure(records, primitives, activation: str = "softmax"):
    """f(α) per op, mean over edges, per epoch; a panel per cell type (normal and reduce). f: the
    search's --arch-activation, softmax (the dotted line: uniform, 1/ops) or sigmoid (FairDARTS: each
    op's weight by itself, the dotted line at 0.5, where α = 0 puts it)."""
    keys = [k for k in ALPHA_PANELS if k in records[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.4), sharey=True, squeeze=False)
    axes = axes[0]
    epochs = _epochs(records)
    for ax, key in zip(axes, keys):
        name = ALPHA_PANELS[key]
        for k, op in enumerate(primitives):
            series = [sum(edge[k] for edge in r[key]) / len(r[key]) for r in records]
            skip = op == "skip_connect"
            ax.plot(epochs, series, label=op, color=OP_COLORS.get(op), lw=3.0 if skip else 1.5,
                    marker="o" if len(epochs) < 15 else None, ms=4, zorder=3 if skip else 2)
        ax.axhline(0.5 if activation == "sigmoid" else 1 / len(primitives), color="#bbbbbb", lw=0.8, ls=":",
                   zorder=1)
        ax.set_title(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{activation}(α), mean over edges")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9, frameon=False)
    fig.suptitle("architecture weights during the search (dotted: "
                 + ("σ(0) = 0.5)" if activation == "sigmoid" else "uniform)"))
    fig.tight_layout()
    return fig


def skips_figure(records, n_edges: int = 8):
    fig, ax = plt.subplots(figsize=(7, 3.8))
    epochs = _epochs(records)
    marker = "o" if len(epochs) < 40 else None
    ax.plot(epochs, [r["skip_normal"] for r in records], label="normal cell", color=SKIP_COLOR, lw=2.2,
            marker=marker, ms=6)
    reduce = records[0].get("skip_reduce") is not None  # None: the space has no reduction cell
    if reduce:
        ax.plot(epochs, [r["skip_reduce"] for r in records], label="reduction cell", color="#1f77b4", lw=1.6,
                ls="--", marker="s" if marker else None, ms=4)
    top = max(max(r["skip_normal"], r["skip_reduce"] if reduce else 0) for r in records)
    ax.set_ylim(-0.3, max(top, 2) + 0.5)
    ax.set_yticks(range(0, max(top, 2) + 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("skip connections in the derived cell")
    ax.set_title(f"skip connections (of {n_edges} edges) per epoch")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def curves_figure(records):
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = _epochs(records)
    for key, style in (("train", "-"), ("val", "--"), ("test", "--")):
        for ax, what, scale in ((ax_l, "loss", 1), (ax_a, "acc", 100)):
            # the epochs that have the value (the search evaluates every --eval-every epochs)
            points = [(e, scale * r[f"{key}_{what}"]) for e, r in zip(epochs, records) if r.get(f"{key}_{what}") is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, marker="o" if len(points) < 15 else None, ms=4, label=key)
    for ax, name in ((ax_l, "loss"), (ax_a, "accuracy (%)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_run(run_dir, out_dir=None) -> list[Path]:
    """Writes the figures of a search or training run; returns the paths written."""
    run_dir = Path(run_dir)
    config, records = read_run(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "figures"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NdartsError(f"cannot create {out_dir}: {e.strerror or e}") from None
    written = []

    def save(fig, name):
        path = out_dir / name
        _save(fig, path)
        plt.close(fig)
        written.append(path)

    alphas = "alphas_cell" if "alphas_cell" in records[0] else "alphas_normal"
    if alphas in records[0]:
        space = config.get("space", "noisydarts")
        if space not in SPACES:
            raise NdartsError(f"{run_dir}/config.json names an unknown search space {space!r}")
        primitives = SPACES[space]
        if len(records[0][alphas][0]) != len(primitives):
            raise NdartsError(f"metrics.jsonl has {len(records[0][alphas][0])} ops per edge but the "
                              f"'{space}' space has {len(primitives)}")
        save(alpha_figure(records, primitives, config.get("arch_activation", "softmax")), "alphas.png")
        save(skips_figure(records, len(records[0][alphas]) if alphas == "alphas_cell" else 8), "skips.png")
        genotype_dict = records[-1].get("genotype")
    else:
        genotype_dict = config.get("genotype_dict")
    save(curves_figure(records), "curves.png")
    from .nasbench201.space import Nb201Genotype, is_nb201_dict

    if is_nb201_dict(genotype_dict):

        try:
            written += draw_nb201_genotype(Nb201Genotype.from_dict(genotype_dict), out_dir / "cell")
        except GenotypeError as e:
            raise NdartsError(f"the genotype recorded in {run_dir} is unusable: {e}") from None
    elif genotype_dict:
        try:
            genotype = Genotype.from_dict(genotype_dict)
        except GenotypeError as e:
            raise NdartsError(f"the genotype recorded in {run_dir} is unusable: {e}") from None
        written += draw_genotype(genotype, out_dir / "cell")
    return written


# ----------------------------------------------------------------------------- CLI
@cli_errors
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ndarts.plots",
                                description="Figures of a search or training run, written into RUN_DIR/figures/.")
    p.add_argument("run_dir", help="a run directory of ndarts.search or ndarts.train")
    p.add_argument("--out", default=None, help="write the figures here instead of RUN_DIR/figures")
    args = p.parse_args(argv)
    paths = plot_run(args.run_dir, args.out)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
