"""Monitoring after deployment: scores, reader feedback and input drift per scanner.

``mammotriage monitor [--json]`` and the app's monitoring view report, per model
version and per scanner (manufacturer / model):

- exam score distribution over time (ISO weeks: n, mean, median, 90th percentile,
  fraction above the "suspicious" operating point),
- readers' feedback on the marks: accepted, rejected (false positives) and missed
  findings they added, with the acceptance rate,
- input drift: per-image intensity statistics of the breast region (computed when the
  image is triaged) against the model's training reference, as a standardised mean
  difference; above :data:`DRIFT_THRESHOLD` it warns, and so does a scanner that the
  training data never contained,
- double reading (key ``double_reading``, :func:`double_reading_figures`): per reader
  pair, over the exams both read (their current signed reads), the recall concordance
  (fraction of exams with the same recall decision), Cohen's kappa over the recall
  decision, and unweighted Cohen's kappa over the BI-RADS categories per breast (0, 1, 2,
  3, 4A, 4B, 4C, 5, 6 as nine categories; one pair per breast both assessed); with the
  exams discordant under the site's rule, awaiting arbitration and arbitrated.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mammotriage.dicom.voi import image_statistics  # noqa: F401  (re-exported)
from mammotriage.store import db
from mammotriage.store.consensus import cohen_kappa
from mammotriage.store.double_reading import DoubleReadingPolicy, ExamStatus, exam_statuses

DRIFT_THRESHOLD = 1.0  # |mean_new - mean_ref| / sd_ref


def _week(iso: str) -> str:
    d = _dt.datetime.fromisoformat(iso).date()
    year, week, _ = d.isocalendar()
    return f"{year}-W{week:02d}"


def monitor_report(archive_path: str | Path, model_metadata: dict[str, Any] | None = None,
                   suspicious_threshold: float | None = None) -> dict[str, Any]:
    """The monitoring summary as a JSON-ready dict (see the module docstring)."""
    conn = db.connect(Path(archive_path))
    try:
        report = _report(conn, model_metadata or {}, suspicious_threshold)
        rule = DoubleReadingPolicy.load(Path(archive_path).parent).discordance
        report["double_reading"] = double_reading_figures(exam_statuses(conn, rule).values(), rule)
        return report
    finally:
        conn.close()


def reader_pair_agreement(statuses: Iterable[ExamStatus]) -> list[dict[str, Any]]:
    """Per reader pair (names in order), over the exams both have a current signed read of:
    ``exams``, ``recall_concordance``, ``recall_kappa`` and ``birads_kappa`` (``{"n": breasts,
    "kappa"}``), and how many of those exams were ``discordant`` under the rule and
    ``arbitrated``. Kappas are ``None`` where undefined (no pairs, or one category only)."""
    recalls: dict[tuple[str, str], list[tuple[bool, bool]]] = defaultdict(list)
    birads: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    discordant: dict[tuple[str, str], int] = defaultdict(int)
    arbitrated: dict[tuple[str, str], int] = defaultdict(int)
    for status in statuses:
        if len(status.reads) != 2:
            continue
        a, b = sorted(status.reads, key=lambda r: r.reader)
        pair = (a.reader, b.reader)
        recalls[pair].append((a.recall, b.recall))
        breasts_a, breasts_b = a.assessment.get("breasts") or {}, b.assessment.get("breasts") or {}
        for side in sorted(set(breasts_a) & set(breasts_b)):
            birads[pair].append((str(breasts_a[side]["birads"]), str(breasts_b[side]["birads"])))
        discordant[pair] += bool(status.reasons)
        arbitrated[pair] += status.state == "arbitrated"
    out = []
    for pair, values in sorted(recalls.items()):
        n = len(values)
        out.append({
            "readers": list(pair), "exams": n,
            "recall_concordance": round(sum(1 for x, y in values if x == y) / n, 6),
            "recall_kappa": cohen_kappa(values),
            "birads_kappa": {"n": len(birads[pair]), "kappa": cohen_kappa(birads[pair])},
            "discordant": discordant[pair], "arbitrated": arbitrated[pair],
        })
    return out


def double_reading_figures(statuses: Iterable[ExamStatus], rule: str = "recall") -> dict[str, Any]:
    """The ``double_reading`` key of the monitoring report (see the module docstring)."""
    statuses = list(statuses)
    return {
        "discordance_rule": rule,
        "exams_double_read": sum(1 for s in statuses if len(s.reads) == 2),
        "awaiting_second_read": sum(1 for s in statuses if s.state == "first read"),
        "awaiting_arbitration": sum(1 for s in statuses if s.state == "discordant"),
        "arbitrated": sum(1 for s in statuses if s.state == "arbitrated"),
        "pairs": reader_pair_agreement(statuses),
        "definition": "per reader pair over the exams both read (current signed reads): recall_concordance "
                      "= exams with the same recall decision / exams; recall_kappa = Cohen's kappa over "
                      "the recall decisions; birads_kappa = unweighted Cohen's kappa over the per-breast "
                      "BI-RADS categories (nine: 0, 1, 2, 3, 4A, 4B, 4C, 5, 6) of the breasts both assessed",
    }


def _scanner(manufacturer: str, model: str) -> str:
    return f"{manufacturer or 'unknown'} / {model or 'unknown'}"


def _report(conn: sqlite3.Connection, meta: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    # exam -> scanner (the scanner of its first image)
    exam_scanner: dict[str, str] = {}
    for r in conn.execute(
            "SELECT st.exam_key, se.manufacturer, se.model FROM studies st JOIN series se "
            "ON se.study_uid = st.study_uid ORDER BY st.exam_key"):
        exam_scanner.setdefault(r["exam_key"], _scanner(r["manufacturer"], r["model"]))
    sop_scanner = {r["sop_uid"]: _scanner(r["manufacturer"], r["model"]) for r in conn.execute(
        "SELECT i.sop_uid, se.manufacturer, se.model FROM images i JOIN series se ON se.series_uid = i.series_uid")}

    scores: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in conn.execute("SELECT exam_key, model_version, score, created_at FROM ai_exam_results"):
        scanner = exam_scanner.get(r["exam_key"], _scanner("", ""))
        scores[(r["model_version"], scanner)][_week(r["created_at"])].append(float(r["score"]))

    feedback: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"accepted": 0, "rejected": 0, "added": 0})
    undone = {r["target"] for r in conn.execute("SELECT target FROM correction_events WHERE action = 'undo'")}
    for r in conn.execute("SELECT event_id, sop_uid, model_version, action FROM correction_events "
                          "WHERE action IN ('accept', 'reject', 'add', 'adjust')"):
        if r["event_id"] in undone:
            continue
        key = (r["model_version"] or "none", sop_scanner.get(r["sop_uid"], _scanner("", "")))
        name = {"accept": "accepted", "adjust": "accepted", "reject": "rejected", "add": "added"}[r["action"]]
        feedback[key][name] += 1

    stats: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in conn.execute("SELECT sop_uid, mean, p95 FROM image_stats"):
        stats[sop_scanner.get(r["sop_uid"], _scanner("", ""))].append((float(r["mean"]), float(r["p95"])))

    reference = meta.get("input_reference") or {}
    training_scanners = {s.lower() for s in meta.get("training_scanners", [])}
    warnings: list[str] = []
    versions: dict[str, Any] = {}
    for (version, scanner), by_week in sorted(scores.items()):
        weeks = []
        for week, values in sorted(by_week.items()):
            a = np.asarray(values)
            weeks.append({"week": week, "n": int(a.size), "mean": round(float(a.mean()), 4),
                          "median": round(float(np.median(a)), 4), "p90": round(float(np.percentile(a, 90)), 4),
                          "suspicious_fraction": (round(float((a >= threshold).mean()), 4)
                                                  if threshold is not None else None)})
        versions.setdefault(version, {"scanners": {}})["scanners"][scanner] = {"weeks": weeks}
    for (version, scanner), counts in feedback.items():
        entry = versions.setdefault(version, {"scanners": {}})["scanners"].setdefault(scanner, {"weeks": []})
        reviewed = counts["accepted"] + counts["rejected"]
        entry["marks"] = dict(counts, accept_rate=round(counts["accepted"] / reviewed, 4) if reviewed else None)
    scanners: dict[str, Any] = {}
    for scanner, pairs in sorted(stats.items()):
        a = np.asarray(pairs)
        drift: dict[str, Any] = {"n_images": int(len(a)), "mean": round(float(a[:, 0].mean()), 2),
                                 "p95": round(float(a[:, 1].mean()), 2)}
        if reference.get("mean") and reference.get("mean_sd"):
            smd = abs(drift["mean"] - float(reference["mean"])) / max(float(reference["mean_sd"]), 1e-6)
            drift["mean_smd"] = round(smd, 3)
            drift["warning"] = bool(smd > DRIFT_THRESHOLD)
            if drift["warning"]:
                warnings.append(f"input drift on {scanner}: breast intensity mean {drift['mean']:.1f} vs "
                                f"training {float(reference['mean']):.1f} (SMD {smd:.2f} > {DRIFT_THRESHOLD})")
        else:
            drift["mean_smd"] = None
            drift["warning"] = None
        seen = any(part.strip().lower() in training_scanners for part in (scanner, scanner.split(" / ")[0]))
        if training_scanners and not seen:
            warnings.append(f"scanner not seen in training: {scanner}")
        scanners[scanner] = {"drift": drift, "seen_in_training": seen if training_scanners else None}
    if not reference:
        warnings.append("the model metadata has no input reference: drift cannot be measured")
    return {"generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "drift_threshold": DRIFT_THRESHOLD, "model_versions": versions, "scanners": scanners,
            "warnings": warnings}


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Score-over-time and drift plots (PNG) for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for version, entry in report["model_versions"].items():
        for scanner, data in entry["scanners"].items():
            weeks = data.get("weeks") or []
            if weeks:
                ax.plot([w["week"] for w in weeks], [w["median"] for w in weeks], marker="o",
                        label=f"{version} · {scanner}")
    ax.set_ylabel("median exam score")
    ax.set_ylim(0, 1)
    ax.set_title("Exam scores per week")
    ax.tick_params(axis="x", rotation=45)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "scores.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(report["scanners"])
    smd = [report["scanners"][n]["drift"].get("mean_smd") or 0.0 for n in names]
    ax.barh(names or ["(no images)"], smd or [0.0], color=["#c33" if v > DRIFT_THRESHOLD else "#3a7" for v in smd] or None)
    ax.axvline(DRIFT_THRESHOLD, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("input drift (standardised mean difference vs training)")
    fig.tight_layout()
    paths.append(out_dir / "drift.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def report_text(report: dict[str, Any]) -> str:
    lines = []
    for version, entry in report["model_versions"].items():
        lines.append(f"model {version}")
        for scanner, data in entry["scanners"].items():
            weeks = data.get("weeks") or []
            n = sum(w["n"] for w in weeks)
            last = weeks[-1] if weeks else None
            marks = data.get("marks")
            text = f"  {scanner}: {n} exams"
            if last:
                text += f", last week {last['week']} median score {last['median']:.2f}"
            if marks:
                rate = marks["accept_rate"]
                text += (f"; marks accepted {marks['accepted']}, rejected {marks['rejected']}, missed added "
                         f"{marks['added']}" + (f" (accept rate {rate:.0%})" if rate is not None else ""))
            lines.append(text)
    for scanner, data in report["scanners"].items():
        d = data["drift"]
        smd = "n/a" if d.get("mean_smd") is None else f"{d['mean_smd']:.2f}"
        lines.append(f"input {scanner}: {d['n_images']} images, breast mean {d['mean']:.1f}, drift SMD {smd}")
    for pair in (report.get("double_reading") or {}).get("pairs", []):
        kappa, bk = pair["recall_kappa"], pair["birads_kappa"]["kappa"]
        lines.append(f"double reading {' / '.join(pair['readers'])}: {pair['exams']} exams, recall concordance "
                     f"{pair['recall_concordance']:.0%}, recall kappa {'n/a' if kappa is None else f'{kappa:.2f}'}, "
                     f"BI-RADS kappa {'n/a' if bk is None else f'{bk:.2f}'}, {pair['discordant']} discordant, "
                     f"{pair['arbitrated']} arbitrated")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines) if lines else "no triage results yet"


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
