"""Fidelity against each knob an estimator was swept over: one figure per estimator and knob
(cosine and relative error against the knob, one line per reference), and a sentence under
it that says what the figure shows, worked out from the numbers.

A knob is a numeric estimator parameter that takes several values among one estimator's
finished cells with fidelity; its line holds the cells whose other parameters are at their
most common value (a one-at-a-time sweep, like the `sensitivity` suite's, reads as one line
per knob; a full product reads as its slices through the most common setting).
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.core.schema import FIDELITY_REFERENCES, estimator_params
from harness.report.figures import log_scale, palette


@dataclass
class Sweep:
    estimator: str
    knob: str
    rows: pd.DataFrame  # (prepared rows with a `knob_value` column; several workloads)

    @property
    def name(self) -> str:
        return f"sensitivity_{self.estimator}_{self.knob}"

    @property
    def heading(self) -> str:
        return f"Fidelity of {self.estimator} against {self.knob}"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _references(rows: pd.DataFrame) -> list[str]:
    return [r for r in FIDELITY_REFERENCES if rows[f"fid_cos_{r}"].notna().any()]


def sweeps(ok: pd.DataFrame) -> list[Sweep]:
    """Every (estimator, knob) swept over at least two values somewhere in the run."""
    measured = ok[ok[[f"fid_cos_{r}" for r in FIDELITY_REFERENCES]].notna().any(axis=1)]
    found = []
    for estimator, g in measured.groupby("estimator", sort=False):
        params = pd.DataFrame([estimator_params(p) for p in g["params"]], index=g.index)
        for knob in params.columns:
            if not all(_is_number(v) for v in params[knob]) or params[knob].nunique() < 2:
                continue
            others = [k for k in params.columns if k != knob]
            at_mode = pd.Series(True, index=g.index)
            for k in others:
                mode = params[k].astype(str).mode().iloc[0]
                at_mode &= params[k].astype(str) == mode
            line = g[at_mode].assign(knob_value=params.loc[at_mode, knob].astype(float))
            if line["knob_value"].nunique() >= 2:
                found.append(Sweep(str(estimator), str(knob), line))
    return found


def _places(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per workload / backbone: the seeds' means at each knob value, in knob order."""
    out = []
    for (workload, backbone), g in rows.groupby(["workload_label", "backbone"], sort=False):
        cols = [c for c in g.columns if c.startswith("fid_") and pd.api.types.is_numeric_dtype(g[c])]
        out.append((f"{workload} / {backbone}", g.groupby("knob_value")[cols].mean().sort_index()))
    return out


def figure(sweep: Sweep) -> Figure:
    """Cosine (top) and relative error (bottom) of the estimator's hypergradient with each
    reference against the knob; one column per workload, means over seeds; dashed, hollow:
    the mean of a checkpoint's draws (stochastic estimators)."""
    places = _places(sweep.rows)
    fig, axes = plt.subplots(2, len(places), figsize=(4.6 * len(places) + 1.5, 6.2), squeeze=False)
    colours = palette(FIDELITY_REFERENCES)
    for col, (place, means) in enumerate(places):
        x = means.index.to_numpy()
        log_x = (x > 0).all() and x.max() / x.min() >= 10
        for r in _references(sweep.rows):
            axes[0, col].plot(x, means[f"fid_cos_{r}"], marker="o", color=colours[r], label=f"{r} (one draw)")
            if means[f"fid_meancos_{r}"].notna().any():
                axes[0, col].plot(x, means[f"fid_meancos_{r}"], marker="o", ls="--", color=colours[r],
                                  markerfacecolor="none", label=f"{r} (mean of draws)")
            axes[1, col].plot(x, means[f"fid_relerr_{r}"], marker="o", color=colours[r], label=r)
        axes[0, col].set_title(place)
        axes[0, col].set_ylim(-1.05, 1.05)
        axes[0, col].set_ylabel("cosine with the reference")
        axes[1, col].set_ylabel("relative error |g - ref| / |ref|")
        errors = means[[f"fid_relerr_{r}" for r in _references(sweep.rows)]].to_numpy().ravel()
        errors = errors[np.isfinite(errors) & (errors > 0)]
        if errors.size and errors.max() / errors.min() >= 10:
            log_scale(axes[1, col])
        for ax in axes[:, col]:
            ax.set_xlabel(sweep.knob)
            if log_x:
                log_scale(ax, "x")
    axes[0, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[1, -1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(sweep.heading)
    fig.tight_layout()
    return fig


def _v(x: float) -> str:
    return f"{x:g}"


def sentence(sweep: Sweep) -> str:
    """What the figure shows, place by place: the reference the estimator is closest to, how
    its cosine and relative error with it move along the knob, the mean of draws where the
    estimator is stochastic, and where it points away from a reference."""
    parts = []
    refs = _references(sweep.rows)
    k = sweep.knob
    for place, means in _places(sweep.rows):
        refs_here = [r for r in refs if means[f"fid_cos_{r}"].notna().any()]
        if not refs_here:
            continue
        # closest: the highest mean cosine (to 2 decimals), then the lowest median relative error
        # (a scalar hyperparameter's cosines are all +-1)
        closeness = {r: (round(means[f"fid_cos_{r}"].mean(), 2), -means[f"fid_relerr_{r}"].median())
                     for r in refs_here}
        best = max(closeness, key=closeness.get)
        cos, err = means[f"fid_cos_{best}"], means[f"fid_relerr_{best}"]
        x0, x1 = means.index[0], means.index[-1]
        text = (f"{place}: closest to {best}; cosine with it {cos.iloc[0]:.2f} at {k}={_v(x0)} and "
                f"{cos.iloc[-1]:.2f} at {k}={_v(x1)} (highest {cos.max():.2f} at {k}={_v(cos.idxmax())}), "
                f"relative error {err.iloc[0]:.2g} to {err.iloc[-1]:.2g} (lowest {err.min():.2g} at "
                f"{k}={_v(err.idxmin())})")
        mean_cos = means.get(f"fid_meancos_{best}")
        if mean_cos is not None and mean_cos.notna().any():
            n, relvar = means["fid_draws"], means["fid_relvar"]
            unbiased = 1 / (1 + relvar / n) ** 0.5  # what the mean of n unbiased draws reaches
            biased_at = [_v(x) for x in means.index if mean_cos[x] < unbiased[x] - 0.05]
            text += (f"; the mean of {_v(n.max())} draws reaches {mean_cos.iloc[0]:.2f} at {k}={_v(x0)} and "
                     f"{mean_cos.iloc[-1]:.2f} at {k}={_v(x1)} (one draw's relative variance "
                     f"{relvar.iloc[0]:.2g} to {relvar.iloc[-1]:.2g}), ")
            text += (f"below what unbiased draws of that variance would reach, so biased, at {k}=" + ", ".join(biased_at)
                     if biased_at else "as high as unbiased draws of that variance would reach: one draw's gap is noise")
        away = [f"{r} at {k}=" + ", ".join(_v(x) for x in means.index[means[f'fid_cos_{r}'] < 0])
                for r in refs_here if (means[f"fid_cos_{r}"] < 0).any()]
        if away:
            text += "; negative cosine with " + "; ".join(away)
        parts.append(text + ".")
    return " ".join(parts) if parts else f"No fidelity was measured for {sweep.estimator}."

