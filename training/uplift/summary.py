"""The terminal version of the uplift report: what a reader needs first, in a few lines."""

from __future__ import annotations

from typing import Any


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Data, features, balance flags, per-arm learners with intervals, the policy, warnings."""
    d, f, b, p = report["data"], report["features"], report["balance"], report["policy"]
    lines = [f"rows: {d['rows_used']} used, {d['rows_dropped']} in other groups; per arm: "
             + ", ".join(f"{k} {v}" for k, v in d["rows_per_arm"].items()),
             f"features used ({len(f['used'])}): {', '.join(f['used'])}",
             "left out: " + ", ".join(f"{e['column']} ({e['reason']})" for e in f["excluded"])]
    for c in b["columns"]:
        if c["flagged"]:
            lines.append(f"  FLAGGED {c['column']}: {'; '.join(c['reasons'])}")
    lines.append(f"balance: arm predicted from the unflagged columns with AUC "
                 f"{b['overall_auc']:.3f} -> randomization "
                 f"{'looks fine' if b['randomization_ok'] else 'MAY BE BROKEN'}")
    for a in report["arms"]:
        lines.append("")
        lines.append(f"arm {a['arm']} vs {d['control']}: rate {a['rate_treated']:.4f} vs "
                     f"{a['rate_control']:.4f}, ATE {a['ate']:+.4f} {_ci(a['ate_ci'])} "
                     f"p={a['ate_p_value']:.3g}")
        n = a["nested"]
        lines.append(f"  {'chosen inside folds':<22} qini {n['qini_auc']:+.4f} "
                     f"{_ci(n['qini_ci'])}  ({', '.join(n['chosen_per_fold'])})")
        for r in a["learners"]:
            tag = "deployed" if r["chosen"] else r["role"] if r["role"] == "baseline" else ""
            lines.append(f"  {r['learner']:<22} qini {r['qini_auc']:+.4f} {_ci(r['qini_ci'])}"
                         f"  {tag}")
        for name, v in a["versus_baselines"].items():
            lines.append(f"  chosen - {name}: {v['qini_difference']:+.4f} {_ci(v['ci'])}")
    lines += ["", f"best-arm policy: rate {p['value']:.4f} {_ci(p['ci'])}; vs nothing "
              f"{p['lift_vs_control']:+.4f} {_ci(p['lift_vs_control_ci'])}; vs everyone "
              f"{p['best_single_arm']} {p['lift_vs_best_arm']:+.4f} "
              f"{_ci(p['lift_vs_best_arm_ci'])}",
              "  members per arm: " + ", ".join(f"{k} {v:.0%}"
                                                for k, v in p["share_assigned"].items())]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    if "predictions_out" in report:
        lines.append(f"per-row scores: {report['predictions_out']}")
    if "report" in report:
        lines.append(f"report: {report['report']['html']}")
    return lines
