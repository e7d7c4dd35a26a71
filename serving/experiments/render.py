"""The report for people: a self-contained HTML page (inline SVG charts) and PNG charts.

The page carries no scripts and loads nothing from elsewhere, so it opens from a file, an e-mail
attachment or the service alike. Every number on it comes from one :class:`ExperimentReport`.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from serving.experiments.report import (
    ArmSummary, ExperimentReport, Interval, SegmentRow, Uplift,
)

COLORS = {"model": "#2463eb", "random": "#9333ea", "holdout": "#6b7280"}
ARM_TITLE = {"model": "Personalized (model)", "random": "Random offer", "holdout": "No offer"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _money(x: float | None) -> str:
    return "–" if x is None else f"{x:,.2f}"


def _ci(i: Interval | None, fmt: str = "pct") -> str:
    if i is None:
        return "–"
    f = _pct if fmt == "pct" else _money
    return f"{f(i.value)} <span class='ci'>({f(i.ci_low)} to {f(i.ci_high)})</span>"


# --- SVG charts ----------------------------------------------------------------------------------


def _bar_chart(chart_id: str, title: str, arms: list[ArmSummary], pick: str,
               money: bool = False) -> str:
    """Vertical bars per arm with 95% CI whiskers."""
    rows = [(a.arm, getattr(a, pick)) for a in arms if getattr(a, pick) is not None]
    w, h, left, bottom, top = 420, 260, 60, 40, 30
    if not rows:
        return (f"<figure id='{chart_id}'><figcaption>{escape(title)}: no data yet</figcaption>"
                "</figure>")
    ymax = max(max(i.ci_high for _, i in rows), 1e-9) * 1.15
    plot_h = h - bottom - top
    bw = (w - left - 20) / len(rows)
    fmt = _money if money else _pct
    parts = [f"<svg role='img' aria-label='{escape(title)}' viewBox='0 0 {w} {h}' "
             f"width='{w}' height='{h}'>"]
    for k in range(5):  # gridlines
        v = ymax * k / 4
        y = top + plot_h * (1 - v / ymax)
        parts.append(f"<line x1='{left}' x2='{w - 10}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e5e7eb'/>"
                     f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' "
                     f"font-size='11'>{fmt(v)}</text>")
    for j, (arm, i) in enumerate(rows):
        x = left + j * bw + bw * 0.2
        bar_w = bw * 0.6
        y = top + plot_h * (1 - max(i.value, 0) / ymax)
        lo = top + plot_h * (1 - max(i.ci_low, 0) / ymax)
        hi = top + plot_h * (1 - i.ci_high / ymax)
        cx = x + bar_w / 2
        parts.append(
            f"<rect class='bar' data-arm='{arm}' x='{x:.1f}' y='{y:.1f}' width='{bar_w:.1f}' "
            f"height='{top + plot_h - y:.1f}' fill='{COLORS.get(arm, '#999')}'/>"
            f"<line x1='{cx:.1f}' x2='{cx:.1f}' y1='{lo:.1f}' y2='{hi:.1f}' stroke='#111' "
            f"stroke-width='2'/><line x1='{cx - 8:.1f}' x2='{cx + 8:.1f}' y1='{hi:.1f}' "
            f"y2='{hi:.1f}' stroke='#111' stroke-width='2'/><line x1='{cx - 8:.1f}' "
            f"x2='{cx + 8:.1f}' y1='{lo:.1f}' y2='{lo:.1f}' stroke='#111' stroke-width='2'/>"
            f"<text x='{cx:.1f}' y='{hi - 6:.1f}' text-anchor='middle' font-size='12' "
            f"font-weight='bold'>{fmt(i.value)}</text>"
            f"<text x='{cx:.1f}' y='{h - bottom + 18:.1f}' text-anchor='middle' "
            f"font-size='12'>{escape(ARM_TITLE.get(arm, arm))}</text>")
    parts.append("</svg>")
    return (f"<figure id='{chart_id}' class='chart'><figcaption>{escape(title)} "
            f"(bars: measured; black lines: 95% confidence interval)</figcaption>"
            f"{''.join(parts)}</figure>")


def _uplift_chart(uplifts: list[Uplift]) -> str:
    """Forest plot: each comparison's absolute uplift with its 95% CI, against zero."""
    rows = [u for u in uplifts if u.outcome != "spend"]
    if not rows:
        return "<figure id='uplift-chart'><figcaption>Uplift: no data yet</figcaption></figure>"
    w, row_h, left, right = 820, 34, 400, 40
    h = 40 + row_h * len(rows)
    lo = min(min(u.absolute.ci_low for u in rows), 0.0)
    hi = max(max(u.absolute.ci_high for u in rows), 0.0)
    pad = (hi - lo) * 0.1 or 0.01
    lo, hi = lo - pad, hi + pad

    def sx(v: float) -> float:
        return left + (w - left - right) * (v - lo) / (hi - lo)

    parts = [f"<svg role='img' aria-label='uplift with 95% confidence intervals' "
             f"viewBox='0 0 {w} {h}' width='{w}' height='{h}'>",
             f"<line x1='{sx(0):.1f}' x2='{sx(0):.1f}' y1='10' y2='{h - 20}' stroke='#9ca3af' "
             f"stroke-dasharray='4 3'/><text x='{sx(0):.1f}' y='{h - 6}' text-anchor='middle' "
             f"font-size='11'>no difference</text>"]
    for j, u in enumerate(rows):
        y = 25 + j * row_h
        a = u.absolute
        label = f"{ARM_TITLE[u.treatment]} vs {ARM_TITLE[u.control].lower()}: {u.label}"
        parts.append(
            f"<text x='6' y='{y + 4}' font-size='12'>{escape(label)}</text>"
            f"<line x1='{sx(a.ci_low):.1f}' x2='{sx(a.ci_high):.1f}' y1='{y}' y2='{y}' "
            f"stroke='#111' stroke-width='2'/><circle cx='{sx(a.value):.1f}' cy='{y}' r='5' "
            f"fill='{COLORS['model']}'/><text x='{sx(a.value):.1f}' y='{y - 8}' "
            f"text-anchor='middle' font-size='11'>{a.value * 100:+.1f} pts</text>")
    parts.append("</svg>")
    return ("<figure id='uplift-chart' class='chart'><figcaption>Difference in percentage "
            "points, with 95% confidence intervals (a line crossing 'no difference' means the "
            f"data cannot tell)</figcaption>{''.join(parts)}</figure>")


def _qini_chart(report: ExperimentReport) -> str:
    q = report.qini
    if not q.available:
        return (f"<figure id='qini-chart'><figcaption>Targeting curve not available: "
                f"{escape(q.reason or '')}</figcaption></figure>")
    w, h, left, bottom, top = 460, 300, 60, 40, 20
    ys = q.curve_y + [0.0]
    ymin, ymax = min(ys), max(ys) or 1.0
    span = (ymax - ymin) or 1.0

    def pt(x: float, y: float) -> str:
        return (f"{left + (w - left - 20) * x:.1f},"
                f"{top + (h - top - bottom) * (1 - (y - ymin) / span):.1f}")

    curve = " ".join(pt(x, y) for x, y in zip(q.curve_x, q.curve_y, strict=True))
    parts = [f"<svg role='img' aria-label='Qini curve' viewBox='0 0 {w} {h}' width='{w}' "
             f"height='{h}'>",
             f"<polyline points='{pt(0, 0)} {pt(q.curve_x[-1], q.curve_y[-1])}' fill='none' "
             f"stroke='#9ca3af' stroke-dasharray='5 4' stroke-width='2'/>",
             f"<polyline class='qini' points='{curve}' fill='none' stroke='{COLORS['model']}' "
             f"stroke-width='2.5'/>",
             f"<text x='{(w + left) / 2}' y='{h - 8}' text-anchor='middle' font-size='12'>share "
             f"of members targeted, highest predicted uplift first</text>",
             f"<text x='14' y='{top + 10}' font-size='12'>extra buyers</text>",
             f"<text x='{left - 6}' y='{h - bottom:.1f}' text-anchor='end' font-size='11'>"
             f"{ymin:,.0f}</text><text x='{left - 6}' y='{top + 24}' text-anchor='end' "
             f"font-size='11'>{ymax:,.0f}</text><text x='{left}' y='{h - bottom + 14}' "
             f"font-size='11'>0%</text><text x='{w - 20}' y='{h - bottom + 14}' "
             f"text-anchor='end' font-size='11'>100%</text>",
             f"<text x='{w - 20}' y='{top + 10}' text-anchor='end' font-size='11' "
             f"fill='#6b7280'>dashed: targeting at random</text>", "</svg>"]
    return (f"<figure id='qini-chart' class='chart'><figcaption>Qini curve: extra buyers gained "
            f"when offers go first to the members the model rates highest</figcaption>"
            f"{''.join(parts)}</figure>")


# --- the page --------------------------------------------------------------------------------


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:
1000px;color:#111;line-height:1.45;padding:0 1rem}h1{margin-bottom:.2rem}.meta{color:#555}
.answer{font-size:1.15rem;background:#eff6ff;border-left:5px solid #2463eb;padding:.8rem 1rem}
.warn{background:#fff7ed;border-left:5px solid #f97316;padding:.6rem 1rem;margin:.5rem 0}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border-bottom:1px solid #e5e7eb;
padding:.35rem .6rem;text-align:right}th:first-child,td:first-child{text-align:left}
.ci{color:#6b7280;font-size:.85em}.charts{display:flex;flex-wrap:wrap;gap:1.5rem}
figure{margin:0}figcaption{font-size:.9rem;color:#374151;max-width:460px}
"""


def render_html(report: ExperimentReport) -> str:
    """The whole page; plain language first, numbers and charts after."""
    e = report.experiment
    primary = report.primary_outcome
    arms_rows = "".join(
        f"<tr data-arm='{a.arm}'><td><b>{escape(ARM_TITLE.get(a.arm, a.arm))}</b><br>"
        f"<span class='ci'>{escape(a.behaviour)}</span></td><td>{a.share:.0%}</td>"
        f"<td>{a.members:,}</td><td>{a.exposed:,}</td><td>{_ci(a.conversion_rate)}</td>"
        f"<td>{_ci(a.purchase_rate)}</td><td>{_ci(a.spend_per_member, 'money')}</td>"
        f"<td>{_ci(a.cost_per_member, 'money')}</td></tr>" for a in report.arms)
    uplift_rows = "".join(
        f"<tr><td>{escape(ARM_TITLE[u.treatment])} vs {escape(ARM_TITLE[u.control].lower())}"
        f"</td><td>{escape(u.label)}</td><td>{_fmt_diff(u, u.absolute.value)} <span class='ci'>"
        f"({_fmt_diff(u, u.absolute.ci_low)} to {_fmt_diff(u, u.absolute.ci_high)})</span></td>"
        f"<td>{_rel(u)}</td><td>{_p(u.p_value)}</td><td>{_fmt_diff(u, u.mde, sign=False)}</td>"
        "</tr>" for u in report.uplifts)
    seg_rows = "".join(_segment_row(s, primary) for s in report.segments)
    q = report.qini
    qini_text = ("" if not q.available else
                 f"<p>Targeting quality of the model's uplift scores over {q.n:,} members: "
                 f"Qini coefficient {q.qini_auc:.3f} (0 = no better than random, 1 = perfect), "
                 f"uplift AUC {q.uplift_auc:.3f}. Among the 10% of members with the highest "
                 f"predicted uplift, offers changed the purchase rate by "
                 f"{_pts(q.uplift_at_10)}; among the top 30%, by {_pts(q.uplift_at_30)}.</p>")
    b = report.budget
    budget = "" if b is None else (
        f"<h2>Budget</h2><p>{escape(b.sentence)}</p><table><tr><th>reward cost per member "
        f"(personalized)</th><th>extra cost per member</th><th>extra spend per member</th>"
        f"<th>extra spend per point</th><th>extra buyers per 1,000 points</th></tr><tr><td>"
        f"{_money(b.cost_per_member)}</td><td>{_money(b.incremental_cost_per_member)}</td><td>"
        f"{_ci(b.incremental_spend_per_member, 'money')}</td><td>"
        f"{_ci(b.incremental_spend_per_point, 'money')}</td><td>"
        f"{_money(b.incremental_purchases_per_1000_points)}</td></tr></table>"
        "<p class='ci'>The interval for spend per point treats the reward cost as known "
        "(it varies far less than spend).</p>")
    warnings = "".join(f"<div class='warn'>{escape(w)}</div>" for w in report.warnings)
    summary = "".join(f"<p>{escape(s)}</p>" for s in report.summary) or (
        "<p>No members have been exposed to this experiment yet.</p>")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Experiment {escape(e.name)}</title><style>{_CSS}</style></head><body>
<h1>{escape(e.name)}</h1>
<p class="meta">Experiment <code>{escape(e.id)}</code> · {e.start:%Y-%m-%d %H:%M} to
{e.end:%Y-%m-%d %H:%M} UTC · main measure: {escape(e.primary_metric.replace('_', ' '))} ·
outcomes counted for {e.attribution_window_days} days after each member's first visit in the
experiment · {report.members:,} members · report of {report.as_of:%Y-%m-%d %H:%M} UTC</p>
{escape(e.description) and f"<p>{escape(e.description)}</p>"}
<section id="answer" class="answer">{summary}</section>{warnings}
<h2>The arms</h2>
<div class="charts">{_bar_chart('arms-chart', _conv_title(primary), report.arms, 'conversion_rate')}
{_bar_chart('spend-chart', 'Spend per member', report.arms, 'spend_per_member', money=True)}</div>
<table id="arms-table"><tr><th>arm</th><th>share</th><th>members</th><th>shown an offer</th>
<th>{escape(_conv_title(primary))}</th><th>purchase rate</th><th>spend per member</th>
<th>reward cost per member</th></tr>{arms_rows}</table>
<h2>Uplift: what the offers changed</h2>
{_uplift_chart(report.uplifts)}
<table id="uplift-table"><tr><th>comparison</th><th>measure</th><th>difference (95% CI)</th>
<th>relative (95% CI)</th><th>p-value</th><th>smallest detectable</th></tr>{uplift_rows}</table>
<h2>Targeting: does the model pick the right members?</h2>{_qini_chart(report)}{qini_text}
<h2>By segment</h2><table id="segment-table"><tr><th>segment</th><th>value</th>
<th>members (personalized)</th><th>members (comparison)</th>
<th>{_measure(primary)}: personalized</th><th>{_measure(primary)}: comparison</th>
<th>difference (95% CI)</th>
<th>purchase rate difference (95% CI)</th></tr>{seg_rows}</table>
{budget}
<h2>How to read this page</h2><ul>
<li><b>95% confidence interval</b>: the range the true value lies in, given the members we
happened to get; if the range for a difference includes 0, the data cannot tell the arms apart.</li>
<li><b>p-value</b>: how often a difference this large would show up by pure chance if the offers
changed nothing; below 0.05 is the usual bar.</li>
<li><b>Smallest detectable</b>: the smallest difference this many members can reliably reveal.</li>
<li>Members are assigned to arms by a fixed random draw on their member id, so the arms are
comparable; everyone counts in their arm whether or not they used an offer.</li></ul>
</body></html>"""


def _segment_row(s: SegmentRow, primary: str) -> str:
    rate = _money if primary == "spend" else _pct
    return (f"<tr><td>{escape(s.segment)}</td><td>{escape(s.value)}</td><td>{s.n_treated:,}</td>"
            f"<td>{s.n_control:,}</td><td>{rate(s.treated_rate)}</td>"
            f"<td>{rate(s.control_rate)}</td><td>{_seg_uplift(s.uplift, primary)}</td>"
            f"<td>{_seg_uplift(s.purchase_uplift, 'purchased')}</td></tr>")


def _conv_title(primary: str) -> str:
    return {"redeemed": "Redemption rate", "completed": "Challenge completion rate"}.get(
        primary, "Purchase rate")


def _p(p: float) -> str:
    return "&lt; 0.001" if p < 0.001 else f"{p:.3f}"


def _measure(primary: str) -> str:
    return "spend per member" if primary == "spend" else _conv_title(primary).lower()


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f} percentage points"


def _fmt_diff(u: Uplift, x: float, sign: bool = True) -> str:
    if u.outcome == "spend":
        return f"{x:+,.2f}" if sign else f"{x:,.2f}"
    return f"{x * 100:+.1f} pts" if sign else f"{x * 100:.1f} pts"


def _rel(u: Uplift) -> str:
    r = u.relative
    return "–" if r is None else (f"{r.value:+.0%} <span class='ci'>({r.ci_low:+.0%} to "
                                  f"{r.ci_high:+.0%})</span>")


def _seg_uplift(i: Interval | None, primary: str) -> str:
    if i is None:
        return "–"
    if primary == "spend":
        return f"{i.value:+,.2f} <span class='ci'>({i.ci_low:+,.2f} to {i.ci_high:+,.2f})</span>"
    return (f"{i.value * 100:+.1f} pts <span class='ci'>({i.ci_low * 100:+.1f} to "
            f"{i.ci_high * 100:+.1f})</span>")


# --- PNG charts (CLI, MLflow) -------------------------------------------------------------------


def render_pngs(report: ExperimentReport, out_dir: Path) -> list[Path]:
    """The same three charts as PNG files (matplotlib, headless Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    rows = [a for a in report.arms if a.conversion_rate is not None]
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, pick, title, scale in ((axes[0], "conversion_rate",
                                        _conv_title(report.primary_outcome), 100),
                                       (axes[1], "spend_per_member", "Spend per member", 1)):
            vals = [(a.arm, getattr(a, pick)) for a in rows if getattr(a, pick) is not None]
            x = range(len(vals))
            ax.bar(x, [i.value * scale for _, i in vals],
                   color=[COLORS.get(a, "#999") for a, _ in vals],
                   yerr=[[(i.value - i.ci_low) * scale for _, i in vals],
                         [(i.ci_high - i.value) * scale for _, i in vals]], capsize=6)
            ax.set_xticks(list(x), [ARM_TITLE.get(a, a) for a, _ in vals])
            ax.set_title(title + (" (%)" if scale == 100 else "") + ", 95% CI")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "arms.png"))
    ups = [u for u in report.uplifts if u.outcome != "spend"]
    if ups:
        fig, ax = plt.subplots(figsize=(8, 0.8 + 0.6 * len(ups)))
        for j, u in enumerate(ups):
            a = u.absolute
            ax.errorbar([a.value * 100], [j], xerr=[[(a.value - a.ci_low) * 100],
                                                    [(a.ci_high - a.value) * 100]],
                        fmt="o", color=COLORS["model"], capsize=5)
        ax.axvline(0, color="#9ca3af", linestyle="--")
        ax.set_yticks(range(len(ups)), [f"{ARM_TITLE[u.treatment]} vs {u.control}: {u.label}"
                                        for u in ups])
        ax.set_xlabel("difference, percentage points (95% CI)")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "uplift.png"))
    q = report.qini
    if q.available:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(q.curve_x, q.curve_y, color=COLORS["model"], label="model's uplift score")
        ax.plot([0, q.curve_x[-1]], [0, q.curve_y[-1]], "--", color="#9ca3af", label="random")
        ax.set_xlabel("share of members targeted")
        ax.set_ylabel("extra buyers (Qini)")
        ax.set_title(f"Qini curve (Qini coefficient {q.qini_auc:.3f})")
        ax.legend()
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "qini.png"))
    return paths


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: ExperimentReport, out_dir: Path) -> dict[str, Path]:
    """``report.html``, ``report.json`` and the PNG charts into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report), encoding="utf-8")
    json_path = out_dir / "report.json"
    json_path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    files = {"html": html_path, "json": json_path}
    files.update({p.stem: p for p in render_pngs(report, out_dir)})
    return files
