"""The uplift report for people: report.json, two PNG charts, and one self-contained HTML page.

The page embeds its charts (base64 PNG) and loads nothing, so it can be mailed or archived as one
file. Every number on it comes from the report dictionary of :mod:`training.uplift.evaluate`.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _pct(x: float | None, digits: int = 2) -> str:
    """A rate, as a percentage."""
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def _pts(x: float | None, digits: int = 2) -> str:
    """A difference of rates, in percentage points."""
    return "–" if x is None else f"{100 * x:+.{digits}f} pts"


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return escape(x)
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _ci(ci: list[float] | tuple[float, float], digits: int = 4) -> str:
    return f"<span class='ci'>[{_num(ci[0], digits)}, {_num(ci[1], digits)}]</span>"


def _ci_as(ci: list[float] | tuple[float, float], fmt: Any) -> str:
    """An interval in the same unit as its estimate (a rate, or points)."""
    return f"<span class='ci'>[{fmt(ci[0])}, {fmt(ci[1])}]</span>"


def qini_curves_png(report: dict[str, Any], path: Path) -> Path:
    """The chosen learner's out-of-fold Qini curve per arm, against random targeting."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for arm in report["arms"]:
        x, q = arm["qini_curve"]["share"], arm["qini_curve"]["incremental"]
        line, = ax.plot(x, q, label=f"{arm['arm']} (chosen inside folds)")
        ax.plot([0, x[-1]], [0, q[-1]], "--", color=line.get_color(), alpha=0.5)
    ax.set(xlabel="share of members targeted, by predicted uplift",
           ylabel="incremental outcomes (Qini)",
           title="Qini curves (out-of-fold); dashed: random targeting")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def learners_png(report: dict[str, Any], path: Path) -> Path:
    """Every learner's out-of-fold Qini with its bootstrap 95 % interval, per arm."""
    arms = report["arms"]
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms), 3.8), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        rows = [("chosen in folds", arm["nested"]["qini_auc"], arm["nested"]["qini_ci"], "#2463eb")]
        rows += [(r["learner"], r["qini_auc"], r["qini_ci"],
                  "#9ca3af" if r["role"] == "baseline" else "#60a5fa") for r in arm["learners"]]
        for i, (name, q, ci, color) in enumerate(rows):
            ax.errorbar(q, i, xerr=[[q - ci[0]], [ci[1] - q]], fmt="o", color=color, capsize=3)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.axvline(0, color="grey", lw=0.5)
        ax.invert_yaxis()
        ax.set(title=f"arm {arm['arm']}", xlabel="Qini AUC (out-of-fold, 95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{escape(alt)}' src='data:image/png;base64,{data}'>"


def _balance_table(balance: dict[str, Any]) -> str:
    rows = []
    for c in balance["columns"]:
        cls = " class='flag'" if c["flagged"] else ""
        rows.append(f"<tr{cls}><td>{escape(c['column'])}</td><td>{c['kind']}</td>"
                    f"<td>{_num(c['smd'], 3)}</td><td>{_num(c['p_adjusted'], 3)}</td>"
                    f"<td>{_num(c['auc'], 3)}</td><td>{'yes' if c['flagged'] else ''}</td>"
                    f"<td>{escape('; '.join(c['reasons']))}</td></tr>")
    verdict = ("the remaining columns do not predict the arm" if balance["randomization_ok"]
               else "<b>the remaining columns predict the arm: randomization may be broken</b>")
    return (f"<p>Arm predicted from all unflagged columns: AUC {_num(balance['overall_auc'], 3)} "
            f"{_ci(balance['overall_auc_ci'], 3)}; {verdict}.</p>"
            "<table><tr><th>column</th><th>kind</th><th>SMD</th><th>p (Holm)</th>"
            "<th>AUC</th><th>flagged</th><th>why</th></tr>" + "".join(rows) + "</table>")


def _arm_section(arm: dict[str, Any]) -> str:
    rows = []
    nested = arm["nested"]
    rows.append(f"<tr class='chosen'><td>chosen inside folds "
                f"({escape(', '.join(nested['chosen_per_fold']))})</td>"
                f"<td>{_num(nested['qini_auc'])} {_ci(nested['qini_ci'])}</td>"
                f"<td>{_num(nested['uplift_auc'])}</td><td>{_pts(nested['uplift_at_10'])}</td>"
                f"<td>{_pts(nested['uplift_at_30'])}</td></tr>")
    for r in arm["learners"]:
        mark = " (deployed)" if r["chosen"] else " (baseline)" if r["role"] == "baseline" else ""
        rows.append(f"<tr><td>{escape(r['learner'])}{mark}</td>"
                    f"<td>{_num(r['qini_auc'])} {_ci(r['qini_ci'])}</td>"
                    f"<td>{_num(r['uplift_auc'])}</td><td>{_pts(r['uplift_at_10'])}</td>"
                    f"<td>{_pts(r['uplift_at_30'])}</td></tr>")
    versus = "".join(
        f"<li>chosen minus {escape(name)}: Qini {_num(v['qini_difference'])} {_ci(v['ci'])}</li>"
        for name, v in arm["versus_baselines"].items())
    return (f"<h3>Arm {escape(arm['arm'])}</h3>"
            f"<p>Outcome rate {_pct(arm['rate_treated'])} treated vs "
            f"{_pct(arm['rate_control'])} control ({arm['n_treated']} / {arm['n_control']} "
            f"rows): average effect {_pts(arm['ate'])} {_ci_as(arm['ate_ci'], _pts)}, "
            f"p = {_num(arm['ate_p_value'], 3)}.</p>"
            "<table><tr><th>learner (out-of-fold)</th><th>Qini AUC [95 % CI]</th>"
            "<th>uplift AUC</th><th>uplift@10 %</th><th>uplift@30 %</th></tr>"
            + "".join(rows) + f"</table><ul>{versus}</ul>")


def _policy_section(policy: dict[str, Any]) -> str:
    shares = ", ".join(f"{escape(k)} {v:.0%}" for k, v in policy["share_assigned"].items())
    rates = ", ".join(f"{escape(k)} {_pct(v)}" for k, v in policy["arm_rates"].items())
    return (f"<p>Give each member the arm with the largest positive predicted uplift (nothing "
            f"otherwise): estimated outcome rate {_pct(policy['value'])} "
            f"{_ci_as(policy['ci'], _pct)}.</p><ul>"
            f"<li>vs sending nothing: {_pts(policy['lift_vs_control'])} "
            f"{_ci_as(policy['lift_vs_control_ci'], _pts)}</li>"
            f"<li>vs sending everyone the best single arm ({escape(policy['best_single_arm'])})"
            f": {_pts(policy['lift_vs_best_arm'])} {_ci_as(policy['lift_vs_best_arm_ci'], _pts)}</li>"
            f"<li>members per arm under the policy: {shares}</li>"
            f"<li>outcome rate when everyone gets one arm: {rates}</li></ul>")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#111}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
font-size:13px;text-align:left}tr.flag{background:#fee2e2}tr.chosen{background:#dbeafe}
.ci{color:#6b7280}.warn{background:#fef3c7;padding:.5em 1em}img{max-width:100%}"""


def html_page(report: dict[str, Any], charts: dict[str, Path]) -> str:
    d = report["data"]
    warnings = "".join(f"<li>{escape(w)}</li>" for w in report["warnings"])
    excluded = ", ".join(f"{escape(e['column'])} ({escape(e['reason'])})"
                         for e in report["features"]["excluded"])
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Uplift report: {escape(d['outcome'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>Uplift report: {escape(d['outcome'])} by {escape(d['treatment_col'])}</h1>"
        f"<p>{d['rows_used']} rows ({d['rows_dropped']} in other groups left out); control "
        f"{escape(d['control'])}, treated {escape(', '.join(d['treated']))}; {d['folds']}-fold "
        f"cross-fitting, learner chosen by {d['inner_folds']}-fold Qini inside each training "
        f"fold; intervals from {d['bootstrap']} bootstrap resamples.</p>"
        + (f"<div class='warn'><b>Read first</b><ul>{warnings}</ul></div>" if warnings else "")
        + "<h2>Features</h2>"
        f"<p>Used: {escape(', '.join(report['features']['used']))}.</p>"
        f"<p>Left out: {excluded}.</p>"
        "<h2>Balance between arms (leakage check)</h2>" + _balance_table(report["balance"])
        + "<h2>Uplift models</h2>" + _img(charts["learners"], "Qini per learner")
        + "".join(_arm_section(a) for a in report["arms"])
        + _img(charts["qini"], "Qini curves")
        + "<h2>Best-arm policy</h2>" + _policy_section(report["policy"])
        + f"<p class='ci'>Metrics: {escape(report['metric_definitions'])}.</p></body></html>")


def write_report(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    """report.json, qini_curves.png, learners.png and report.html in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    charts = {"qini": qini_curves_png(report, folder / "qini_curves.png"),
              "learners": learners_png(report, folder / "learners.png")}
    paths = {"json": folder / "report.json", "html": folder / "report.html", **charts}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["html"].write_text(html_page(report, charts))
    return paths
