"""Render a ``/monitoring`` snapshot as a summary a person reads in a terminal."""

from __future__ import annotations

from typing import Any


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_status(snap: dict[str, Any], top: int = 10) -> str:
    windows = snap["windows"]
    lines = [
        f"{snap['model']}:{snap['version']}"
        + ("  (live)" if snap.get("live") == snap["version"] else f"  (live: {snap.get('live')})"),
        f"windows      {windows['inputs']} input rows, {windows['labels']} labelled rows; "
        f"{snap['totals']['predictions']} predictions, {snap['totals']['labelled']} labelled "
        f"in all (coverage {_pct(snap.get('label_coverage'))})",
    ]
    state = snap.get("state")
    if state and (not state.get("available") or state.get("waiting_rows")):
        lines.append(
            f"state        BEHIND: {state.get('waiting_rows', 0)} answered rows wait on this "
            "machine to be replayed; figures leave them out until then"
            + ("" if state.get("available") else " (the shared state is unavailable)")
        )
    perf = snap.get("performance")
    estimate = snap.get("estimated_accuracy")
    if perf:
        lines.append(
            f"accuracy     {_num(perf['accuracy'])} realized on {perf['n']} labels, "
            f"{_num(estimate)} estimated without labels"
        )
        lines.append(
            f"macro        precision {_num(perf['macro_precision'])}  "
            f"recall {_num(perf['macro_recall'])}  f1 {_num(perf['macro_f1'])}"
        )
        worst = sorted(zip(perf["labels"], perf["f1"], strict=True), key=lambda x: x[1])[:3]
        lines.append("weakest f1   " + ", ".join(f"class {c}: {f:.3f}" for c, f in worst))
    else:
        lines.append(f"accuracy     no labels yet; {_num(estimate)} estimated without labels")
    delay = snap.get("label_delay_seconds")
    if delay:
        lines.append(
            "label delay  " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(delay.items()))
        )
    anomaly = snap.get("anomaly") or {}
    lines.append(
        f"anomalies    {_pct(anomaly.get('ratio'))} of the input window above the threshold "
        f"{_num(anomaly.get('threshold'), 2)}"
    )
    pdrift = snap.get("prediction_drift")
    if pdrift:
        lines.append(
            f"predictions  class PSI {_num(pdrift['class_psi'])}, chi-square p "
            f"{_num(pdrift['chi2_pvalue'])}, confidence PSI {_num(pdrift['confidence_psi'])}"
        )
    drift = snap.get("drift")
    if not drift:
        lines.append("input drift  no input rows yet")
        return "\n".join(lines)
    verdict = "DRIFT DETECTED" if drift["drift_detected"] else "no drift"
    drifted = [f for f in drift["features"] if f["drifted"]]
    lines.append(
        f"input drift  {verdict}: {len(drifted)} of {len(drift['features'])} features drifted "
        f"({_pct(drift['drift_share'])}; alarm at {_pct(drift['share_threshold'])}, "
        f"BH alpha {drift['alpha']}, min PSI {drift['min_psi']})"
    )
    multi = snap.get("multivariate_drift")
    if multi:
        verdict = "DRIFT DETECTED" if multi["detected"] else "no drift"
        lines.append(
            f"multivariate {verdict}: effect {_num(multi['effect'], 3)} (min "
            f"{multi['min_effect']}), p-value {multi['p_value']:.2e} (alpha {multi['alpha']}), "
            f"{multi['window_rows']} rows against {multi['reference_rows']} held-out"
        )
    if drifted:
        lines.append(f"  {'feature':<16}{'PSI':>9}{'JS':>8}{'KS':>8}{'p-value':>11}")
        for f in sorted(drifted, key=lambda f: (-f["psi"], -f["ks_statistic"]))[:top]:
            lines.append(
                f"  {f['name']:<16}{f['psi']:>9.3f}{f['js_distance']:>8.3f}"
                f"{f['ks_statistic']:>8.3f}{f['ks_pvalue']:>11.2e}"
            )
        if len(drifted) > top:
            lines.append(f"  ... and {len(drifted) - top} more")
    return "\n".join(lines)


def render_comparison(doc: dict[str, Any]) -> str:
    """The ``candidate`` section: live against its shadow or canary (``/monitoring/compare``)."""
    cand, live, comp = doc["candidate"], doc["live"], doc["comparison"]
    verdict = comp["verdict"]
    lines = [
        f"candidate    {cand['role']} {cand['version']} ({_pct(cand['share'])}) against live "
        f"{live['version']}",
    ]
    for who, side in (("  live     ", live), ("  candidate", cand)):
        lines.append(
            f"{who}  estimated {_num(side['estimated_accuracy'])}, anomalies "
            f"{_pct(side['anomaly_ratio'])}, drift {_pct(side['drift_share'])}, "
            f"{side['input_rows']} input rows, {side['labelled_rows']} labelled"
        )
    if comp["agreement"] is not None:
        lines.append(f"  agreement  {_pct(comp['agreement'])} of {comp['rows']} shadowed rows")
    lines.append(
        f"  accuracy   live {_num(comp['live_accuracy'])}, candidate "
        f"{_num(comp['candidate_accuracy'])} on {comp['labelled']} labelled rows"
        + (" (the same rows)" if comp["agreement"] is not None else "")
    )
    worse = "WORSE" if verdict["worse"] else "not worse"
    p_value = "-" if verdict["p_value"] is None else f"{verdict['p_value']:.3g}"
    pairs = "" if verdict["discordant"] is None else f", {verdict['discordant']} discordant pairs"
    lines.append(
        f"  verdict    {worse} by more than {verdict['margin']} ({verdict['test']}, p {p_value}"
        f"{pairs})"
    )
    return "\n".join(lines)


def render_history(doc: dict[str, Any]) -> str:
    """``/monitoring/history`` as a compact table, oldest first, with the switches."""
    import time

    header = (
        f"{'time':<9} {'version':<10} {'accuracy':>8} {'estimate':>8} {'f1':>6} "
        f"{'drift':>6} {'anomaly':>7} {'pred/s':>7}"
    )
    rows: list[tuple[float, str]] = []
    for p in doc["points"]:
        rate = p.get("predictions_per_s")
        rows.append((
            p["t"],
            f"{time.strftime('%H:%M:%S', time.localtime(p['t'])):<9} {p['version'][:10]:<10} "
            f"{_num(p.get('accuracy')):>8} {_num(p.get('estimated_accuracy')):>8} "
            f"{_num(p.get('macro_f1'), 3):>6} {_pct(p.get('drift_share')):>6} "
            f"{_pct(p.get('anomaly_ratio')):>7} {'-' if rate is None else f'{rate:.1f}':>7}",
        ))  # fmt: skip
    for e in doc["events"]:
        clock = time.strftime("%H:%M:%S", time.localtime(e["t"]))
        rows.append(
            (e["t"], f"{clock:<9} -- {e['reason']}: {e['version']} live (was {e['previous']})")
        )
    if not rows:
        return f"{doc['model']}: no history yet (a point every ARGUS_HISTORY_SECONDS)"
    return "\n".join(
        [f"{doc['model']}", header] + [line for _, line in sorted(rows, key=lambda r: r[0])]
    )
