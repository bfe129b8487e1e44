"""Figures for the results page, as inline SVG (no files to fetch, no network)."""
from __future__ import annotations

import io

import pandas as pd


def _label(row: pd.Series) -> str:
    from harness.results import estimator_params

    params = estimator_params(row["params"])
    short = ",".join(f"{k}={v}" for k, v in params.items() if k in ("T", "backend", "mode", "K", "terms"))
    return f"{row['estimator']}({short})" if short else row["estimator"]


def fidelity_vs_cost_svg(df: pd.DataFrame) -> str | None:
    """Cosine with the long-unroll reference against time and peak memory (x plain step),
    one point per estimator variant and workload/backbone; None when no row has fidelity."""
    data = df[(df["status"] == "ok") & pd.to_numeric(df["fid_cos_long"], errors="coerce").notna()].copy()
    if data.empty:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data["label"] = data.apply(_label, axis=1)
    data["where"] = data["workload"] + "/" + data["backbone"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, col, name in ((axes[0], "time_x_plain", "hyper-step time (x plain step)"),
                          (axes[1], "mem_x_plain", "hyper-step peak memory (x plain step)")):
        for where, group in data.groupby("where"):
            x = pd.to_numeric(group[col], errors="coerce")
            y = pd.to_numeric(group["fid_cos_long"], errors="coerce")
            ax.scatter(x, y, label=where)
            for xi, yi, text in zip(x, y, group["label"]):
                ax.annotate(text, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine with long unroll (fid_cos_long)")
    axes[1].legend(fontsize=8)
    fig.suptitle("Hypergradient fidelity against cost")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog: the SVG is inlined in HTML
