"""The one report module: report.json, report.md (and, for matrices, html and png plots).

``python -m exporters`` and ``python -m benchmarks`` both render through here.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.environment import one_line


def _fmt(v, digits=2, pct=False):
    if v is None:
        return "–"
    if pct:
        return f"{v * 100:.{digits}f}%"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def results_table(results: list[dict]) -> str:
    head = ("| target | precision | status | device | p50 ms | p90 ms | img/s | speedup | cosine min | "
            "top-1 agree | top-1 | size MB | passed |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in results:
        lat, acc = r.get("latency_ms") or {}, r.get("accuracy") or {}
        lines.append("| " + " | ".join([
            r["target"], r["precision"], r.get("status", "built"), str(r.get("device", "")),
            _fmt(lat.get("p50")), _fmt(lat.get("p90")), _fmt(r.get("throughput_ips"), 1),
            _fmt(r.get("speedup_vs_reference")) + ("×" if r.get("speedup_vs_reference") else ""),
            _fmt(acc.get("cosine_min"), 6), _fmt(acc.get("top1_agreement"), 2, pct=True),
            _fmt(acc.get("top1"), 2, pct=True), _fmt(r.get("size_mb"), 1),
            {True: "yes", False: "**NO**", None: "–"}[r.get("passed")],
        ]) + " |")
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    out = [f"# {report['model']} — vitdeploy report", "",
           f"- source: `{report['source']}`, weights: **{report['weights']}**, input: {report['input_shape']}",
           f"- data: {report.get('data', {}).get('source')} ({report.get('data', {}).get('size')} samples, "
           f"sha256 {str(report.get('data', {}).get('sha256', ''))[:12]})",
           f"- environment: {one_line(report['environment'])}", ""]
    for n in report.get("notes", []):
        out.append(f"> **{n}**" if n.startswith("RANDOM") else f"> {n}")
    if report.get("notes"):
        out.append("")
    out += [results_table(report["results"]), ""]
    for r in report["results"]:
        for n in r.get("notes", []):
            out.append(f"- {r['target']} {r['precision']}: {n}")
    graph = report.get("graph")
    if graph:
        out += ["", f"Graph: {graph['num_nodes']} nodes, contract "
                f"{'passed' if graph['contract'].get('passed') else 'NOT passed'}; rewrites: "
                + ", ".join(f"{k} ×{v}" for k, v in report.get("rewrites", {}).get("replaced", {}).items() if v), ""]
        out.append("Ops: " + ", ".join(f"{k} {v}" for k, v in graph["op_counts"].items()))
    return "\n".join(out) + "\n"


def write_report(report: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    j, m = folder / "report.json", folder / "report.md"
    j.write_text(json.dumps(report, indent=2, default=str))
    m.write_text(render_markdown(report))
    return [j, m]


def render_matrix_markdown(reports: list[dict], command: str) -> str:
    env = reports[0]["environment"] if reports else {}
    out = ["# vitdeploy benchmark matrix", "", f"Command: `{command}`", "",
           f"Machine: {one_line(env)}" if env else "", ""]
    for rep in reports:
        out += [f"## {rep['model']} (`{rep['source']}`, weights: {rep['weights']}, input {rep['input_shape']})", "",
                results_table(rep["results"]), ""]
        steps = rep.get("step_seconds", {})
        if steps:
            out.append("Build steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
            out.append("")
    return "\n".join(out) + "\n"


def write_matrix(reports: list[dict], folder: Path, command: str) -> list[Path]:
    """report.json (the list of single-model reports) and report.md for a whole matrix."""
    folder.mkdir(parents=True, exist_ok=True)
    j, m = folder / "report.json", folder / "report.md"
    j.write_text(json.dumps({"command": command, "reports": reports}, indent=2, default=str))
    m.write_text(render_matrix_markdown(reports, command))
    return [j, m]
