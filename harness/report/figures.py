"""The report's figures: each a function from the prepared results (see `harness.report.build`)
to a matplotlib Figure, or None when the run has nothing to show for it.

Figures are drawn with seaborn's theme on the Agg backend (no display, no network) and
saved three ways by the report: inline SVG for the page, PNG and PDF for papers.
"""
from __future__ import annotations

import io

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

sns.set_theme(style="whitegrid", context="paper")
matplotlib.rcParams["svg.fonttype"] = "path"  # text as outlines: no font to fetch
matplotlib.rcParams["svg.hashsalt"] = "hgbench"  # stable ids, so reports diff cleanly
# Labels carry user text (suite names, paths, parameter values): shown literally, never
# parsed as mathtext, so `$\undefined{x}$` in a data_root cannot break a figure.
matplotlib.rcParams["text.parse_math"] = False


def log_scale(ax, axis: str = "y") -> None:
    """A log axis whose tick labels are plain text: the default labels are mathtext, which
    `text.parse_math = False` (above) would print raw."""
    getattr(ax, f"set_{axis}scale")("log")
    target = getattr(ax, f"{axis}axis")
    target.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(matplotlib.ticker.NullFormatter())


def palette(variants) -> dict[str, tuple]:
    names = sorted(set(variants))
    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))


def pareto_front(cost: pd.Series, score: pd.Series) -> pd.Index:
    """Rows not dominated by another (no other is at most as costly and strictly better, or
    cheaper and at least as good), in increasing cost."""
    order = sorted(cost.index, key=lambda i: (cost[i], -score[i]))
    front, best = [], -np.inf
    for i in order:
        if score[i] > best:
            front.append(i)
            best = score[i]
    return pd.Index(front)


def cost_bars(ok: pd.DataFrame) -> Figure | None:
    """Hyper-step time and peak memory per estimator, bars grouped by backbone, one row of
    panels per workload. Error bars: spread across seeds when there are several, else the
    interquartile range of the timed steps."""
    if ok.empty:
        return None
    workloads = list(dict.fromkeys(ok["workload_label"]))
    fig, axes = plt.subplots(len(workloads), 2, figsize=(12, 3.6 * len(workloads)), squeeze=False)
    for row, workload in zip(axes, workloads):
        data = ok[ok["workload_label"] == workload]
        variants = list(dict.fromkeys(data["variant"]))
        backbones = list(dict.fromkeys(data["backbone"]))
        width = 0.8 / len(backbones)
        for ax, col, iqr_col, name in ((row[0], "hyper_ms", "hyper_iqr_ms", "hyper-step time (ms)"),
                                       (row[1], "peak_mb", None, "hyper-step peak memory (MB)")):
            for j, backbone in enumerate(backbones):
                g = data[data["backbone"] == backbone].groupby("variant", sort=False)
                mean = g[col].mean().reindex(variants)
                if (g.size() > 1).any():
                    err = g[col].std().reindex(variants)
                elif iqr_col:
                    err = g[iqr_col].mean().reindex(variants) / 2
                else:
                    err = None
                x = np.arange(len(variants)) + (j - (len(backbones) - 1) / 2) * width
                ax.bar(x, mean.to_numpy(dtype=float), width, label=backbone,
                       yerr=None if err is None else err.to_numpy(dtype=float), capsize=2)
            ax.set_xticks(np.arange(len(variants)), variants, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel(name)
            ax.set_title(workload)
        row[1].legend(title="backbone", fontsize=7)
    fig.tight_layout()
    return fig


def depth_scaling(ok: pd.DataFrame) -> Figure | None:
    """Hyper-step time, peak memory and FLOPs against backbone depth (ResNet10 -> 18 -> 34),
    one line per estimator; dashes tell workloads apart. Log scale: growth reads as slope."""
    data = ok[ok["depth"].notna()]
    if data["depth"].nunique() < 2:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    colours = palette(data["variant"])
    styles = dict(zip(dict.fromkeys(data["workload_label"]), ["-", "--", ":", "-."] * 4))
    for ax, col, name in zip(axes, ("hyper_ms", "peak_mb", "gflops"),
                             ("hyper-step time (ms)", "hyper-step peak memory (MB)", "hyper-step GFLOPs")):
        for (workload, variant), g in data.groupby(["workload_label", "variant"], sort=False):
            line = g.groupby("depth")[col].mean().dropna()
            if line.empty:
                continue
            ax.plot(line.index, line.values, styles[workload], marker="o", color=colours[variant],
                    label=f"{variant} ({workload})" if len(styles) > 1 else variant)
        ax.set_xlabel("ResNet depth")
        ax.set_xticks(sorted(data["depth"].unique()))
        log_scale(ax)
        ax.set_ylabel(name)
    axes[2].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Cost scaling with depth")
    fig.tight_layout()
    return fig


def accuracy_vs_cost(acc: pd.DataFrame) -> Figure | None:
    """Test accuracy (mean over seeds, 95% CI) against hyper-step time and peak memory, the
    Pareto front drawn: the estimators worth choosing at each budget."""
    data = acc[acc["acc_mean"].notna() & acc["hyper_ms"].notna()]
    if data.empty:
        return None
    groups = list(data.groupby(["workload_label", "backbone"], sort=False))
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4 * len(groups)), squeeze=False)
    colours = palette(data["variant"])
    for row, ((workload, backbone), g) in zip(axes, groups):
        for ax, col, name in ((row[0], "hyper_ms", "hyper-step time (ms)"),
                              (row[1], "peak_mb", "hyper-step peak memory (MB)")):
            g2 = g[g[col].notna()]
            for _, r in g2.iterrows():
                ax.errorbar(r[col], 100 * r["acc_mean"], yerr=100 * (r["acc_ci95"] or 0) if pd.notna(r["acc_ci95"]) else None,
                            fmt="o", color=colours[r["variant"]], capsize=2)
                ax.annotate(r["variant"], (r[col], 100 * r["acc_mean"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            if not g2.empty:
                front = pareto_front(g2[col], g2["acc_mean"])
                ax.step(g2.loc[front, col], 100 * g2.loc[front, "acc_mean"], where="post",
                        color="0.3", lw=1, ls="--", label="Pareto front")
                ax.legend(fontsize=7, loc="lower right")
            ax.set_xlabel(name)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{workload} / {backbone}")
    fig.tight_layout()
    return fig


def fidelity_vs_cost(ok: pd.DataFrame) -> Figure | None:
    """Cosine of each estimator's hypergradient with the long unroll (reference `long`)
    against its time and memory (x plain step): filled markers for one draw, and for
    stochastic estimators a hollow marker for the mean of a checkpoint's draws, joined by a
    line (the gap is noise; what is left is bias). Colour: estimator; marker: workload."""
    data = ok[ok["fid_cos_long"].notna()]
    if data.empty:
        return None
    colours = palette(data["variant"])
    places = list(dict.fromkeys(data["workload_label"] + " / " + data["backbone"]))
    markers = dict(zip(places, "osD^vP*Xhp<>" * 4))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, col, name in ((axes[0], "time_x_plain", "hyper-step time (x plain step)"),
                          (axes[1], "mem_x_plain", "hyper-step peak memory (x plain step)")):
        for _, r in data.iterrows():
            colour, marker = colours[r["variant"]], markers[r["workload_label"] + " / " + r["backbone"]]
            ax.scatter(r[col], r["fid_cos_long"], color=colour, marker=marker, s=36)
            if pd.notna(r.get("fid_meancos_long")):
                ax.plot([r[col]] * 2, [r["fid_cos_long"], r["fid_meancos_long"]], color=colour, lw=0.8)
                ax.scatter(r[col], r["fid_meancos_long"], facecolors="none", edgecolors=[colour], marker=marker, s=36)
        ax.set_xlabel(name)
    axes[0].set_ylabel("cosine with the long unroll")
    handles = ([Line2D([], [], color=c, marker="o", ls="", label=v) for v, c in colours.items()]
               + [Line2D([], [], color="0.3", marker=markers[p], ls="", label=p) for p in places]
               + [Line2D([], [], color="0.3", marker="o", ls="", markerfacecolor="none", label="mean of draws")])
    axes[1].legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Hypergradient fidelity against cost")
    fig.tight_layout()
    return fig


def training_curves(curves: pd.DataFrame) -> Figure | None:
    """Validation loss and test accuracy over meta-training steps, one line per estimator
    (mean over seeds), one row of panels per workload and backbone."""
    if curves.empty:
        return None
    groups = list(curves.groupby(["workload_label", "backbone"], sort=False))
    has_acc = curves["test_accuracy"].notna().any()
    fig, axes = plt.subplots(len(groups), 2 if has_acc else 1, figsize=(12 if has_acc else 6.5, 3.6 * len(groups)),
                             squeeze=False)
    colours = palette(curves["variant"])
    for row, ((workload, backbone), g) in zip(axes, groups):
        for ax, col, name in zip(row, ("val_loss", "test_accuracy"), ("validation loss", "test accuracy")):
            for variant, v in g.groupby("variant", sort=False):
                line = v.groupby("step")[col].mean().dropna()
                if not line.empty:
                    ax.plot(line.index, line.values, marker=".", color=colours[variant], label=variant)
            ax.set_xlabel("inner step")
            ax.set_ylabel(name)
            ax.set_title(f"{workload} / {backbone}")
        row[0].legend(fontsize=6)  # the loss panel always has a line per variant
    fig.tight_layout()
    return fig


def memory_frontier(front: pd.DataFrame) -> Figure | None:
    """What fits in each memory budget: per estimator, the largest model (colour: ResNet depth,
    or log10 of the parameters for models named without a depth) and the largest batch
    (label) whose hyper-step peak fits; blank where nothing fits."""
    if front.empty or front["backbone"].isna().all():
        return None
    from harness.core.units import format_size

    workloads = list(dict.fromkeys(front["workload"]))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 0.45 * front["variant"].nunique() + 2),
                             squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        g = front[front["workload"] == workload]
        by_depth = g["depth"].notna().any()
        g = g.assign(size=g["depth"] if by_depth else np.log10(g["n_params"].astype(float)))
        depth = g.pivot(index="variant", columns="budget_bytes", values="size").reindex(
            list(dict.fromkeys(g["variant"])))
        label = g.assign(text=[f"{b}\nbatch {int(n)}" if isinstance(b, str) else "" for b, n in
                               zip(g["backbone"], g["batch_size"].fillna(0))]).pivot(
            index="variant", columns="budget_bytes", values="text").reindex(depth.index)
        sns.heatmap(depth, annot=label.to_numpy(), fmt="", cmap="viridis",
                    cbar_kws={"label": "ResNet depth" if by_depth else "log10 parameters"},
                    ax=ax, linewidths=0.5, annot_kws={"fontsize": 6}, vmin=0 if by_depth else None)
        ax.set_xticklabels([format_size(b) for b in depth.columns])
        ax.set_xlabel("memory budget")
        ax.set_ylabel("")
        ax.set_title(f"{workload}: what fits")
    fig.tight_layout()
    return fig


def to_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog: the SVG is inlined in HTML


def close(fig: Figure) -> None:
    plt.close(fig)

