"""PNG plots for a training run (also logged to MLflow). Headless: the Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def calibration_plot(curve: tuple[np.ndarray, np.ndarray, np.ndarray], title: str,
                     path: Path) -> Path:
    mean_pred, frac_pos, _ = curve
    fig, ax = plt.subplots(figsize=(5, 5))
    top = float(max(mean_pred.max(), frac_pos.max()) * 1.05)
    ax.plot([0, top], [0, top], "--", color="grey", label="perfectly calibrated")
    ax.plot(mean_pred, frac_pos, "o-", label="model")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title=title,
           xlim=(0, top), ylim=(0, top))
    ax.legend()
    return _save(fig, path)


def qini_plot(model: tuple[np.ndarray, np.ndarray],
              oracle: tuple[np.ndarray, np.ndarray] | None, path: Path) -> Path:
    """The model's Qini curve, beside the true uplift's when a simulated world provides it."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    curves = [(model, "model")] + ([(oracle, "oracle (true uplift)")] if oracle is not None
                                   else [])
    for (x, q), label in curves:
        ax.plot(x, q, label=label)
    x_end, q_end = model[0][-1], model[1][-1]
    ax.plot([0, x_end], [0, q_end], "--", color="grey", label="random targeting")
    ax.set(xlabel="share of members targeted (by predicted uplift)",
           ylabel="incremental conversions (Qini)", title="Qini curve, test period")
    ax.legend()
    return _save(fig, path)


def importance_plot(names: list[str], gains: np.ndarray, title: str, path: Path,
                    top: int = 20) -> Path:
    order = np.argsort(gains)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    ax.barh([names[i] for i in order], gains[order] / max(gains.sum(), 1e-12))
    ax.set(xlabel="share of total gain", title=title)
    return _save(fig, path)


def difficulty_curves_plot(grid: pd.DataFrame, flow_zone: float, path: Path) -> Path:
    """Predicted completion over the first template's targets, one line per member, labelled by
    player type and with the true curve dashed when a simulated world provides ``true_p``,
    else labelled by tier."""
    sub = grid[grid["challenge_id"] == grid["first_template"].iloc[0]]
    has_true = "true_p" in sub.columns
    label = "player_type" if "player_type" in sub.columns else "tier"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (member, group), g in sub.groupby(["member_id", label]):
        line, = ax.plot(g["target"], g["p_complete"], "o-", label=f"{group} #{member} (model)")
        if has_true:
            ax.plot(g["target"], g["true_p"], "--", color=line.get_color(), alpha=0.7)
    ax.axhline(flow_zone, color="grey", lw=0.8)
    ax.text(sub["target"].min(), flow_zone + 0.01, f"flow zone {flow_zone:.0%}", color="grey")
    title = ("Difficulty curves: model (solid) vs truth (dashed)" if has_true
             else "Difficulty curves: model")
    ax.set(xlabel=f"target ({sub['challenge_id'].iloc[0]})", ylabel="P(complete)", ylim=(0, 1),
           title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
