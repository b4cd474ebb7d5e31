"""The one report module: report.json, report.md (and, for matrices, html and png plots).

``python -m exporters`` and ``python -m benchmarks`` both render through here.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from exporters.report.plots import FIGURES
from runtime.environment import one_line


def _fmt(v, digits=2, pct=False):
    if v is None:
        return "–"
    if pct:
        return f"{v * 100:.{digits}f}%"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _throughput_cell(r: dict) -> list[str]:
    tp = r.get("throughput_mode")
    return [f"{tp['images_per_s']:.1f} ({tp['streams']} in flight)" if tp else "–"]


DENSE_HEAD = "pixel agree | mean IoU"  # a segmentation model's columns where a classifier has top-1 agree | top-1


NO_CLASSES = ("features", "embedding")  # tasks whose outputs have no classes: no top-1 to agree on


def _agreement_cells(values: dict, dense: bool, task: str | None = None) -> list[str]:
    """A classifier's top-1 agreement and top-1, or a segmentation model's pixel agreement and mean IoU (both
    against the reference's class maps); "–" for a backbone or an embedding, whose outputs have no classes."""
    if task in NO_CLASSES:
        return ["–", "–"]
    if dense:
        return [_fmt(values.get("pixel_agreement"), 2, pct=True), _fmt(values.get("mean_iou"), 4)]
    return [_fmt(values.get("top1_agreement"), 2, pct=True), _fmt(values.get("top1"), 2, pct=True)]


def results_table(results: list[dict]) -> str:
    """Markdown table of result rows; an 'img/s, throughput mode' column when any row was measured so."""
    tp = any(r.get("throughput_mode") for r in results)
    sized = any(r.get("input_size") for r in results)  # a multi-size bundle's combined rows
    dense = any((r.get("checks") or {}).get("dense") for r in results)
    head = (("| input size " if sized else "") + "| target | precision | status | device | p50 ms | p90 ms | img/s | "
            + ("img/s, throughput mode | " if tp else "")
            + f"speedup | GFLOP/s | cosine min | {DENSE_HEAD if dense else 'top-1 agree | top-1'} | size MB | passed |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in results:
        lat, acc = r.get("latency_ms") or {}, r.get("accuracy") or {}
        lines.append("| " + " | ".join([
            *([r.get("input_size", "")] if sized else []),
            r["target"], r["precision"], r.get("status", "built"), str(r.get("device", "")),
            _fmt(lat.get("p50")), _fmt(lat.get("p90")), _fmt(r.get("throughput_ips"), 1),
            *(_throughput_cell(r) if tp else []),
            _fmt(r.get("speedup_vs_reference")) + ("×" if r.get("speedup_vs_reference") else ""),
            _fmt(r.get("gflops"), 1), _fmt(acc.get("cosine_min"), 6),
            *_agreement_cells(((r.get("checks") or {}).get("dense") or {}) if dense else acc, dense,
                              (r.get("checks") or {}).get("task")),
            _fmt(r.get("size_mb"), 1),
            {True: "yes", False: "**NO**", None: "–"}[r.get("passed")],
        ]) + " |")
    return "\n".join(lines)


def budget_table(r: dict) -> list[str]:
    """The accuracy budget's steps for one row (exporters/verify/budget.py): what was kept, and what it bought and cost."""
    b = (r.get("checks") or {}).get("budget")
    if not b:
        return []
    limits = ", ".join(x for x in (f"top-1 drop <= {b['max_drop']} points" if b["max_drop"] is not None else "",
                                   f"cosine_min >= {b['min_cosine']}" if b["min_cosine"] is not None else "") if x)
    out = [f"**Accuracy budget, {r['target']} {r['precision']}** ({limits}): {'met' if b['met'] else 'NOT met'}", "",
           "| step | kept in higher precision (cumulative) | top-1 drop (points) | cosine min | top-1 agreement | p50 ms |",
           "|---|---|---|---|---|---|"]
    for i, s in enumerate(b["steps"]):
        kept = ", ".join(s["kept"]) or "(as built)"
        out.append(f"| {i} | {kept}{' (no gain: left out of the next step)' if s.get('no_gain') else ''} | "
                   f"{_fmt(s['drop_points'], 3)} | {s['cosine_min']:.6f} | {s['top1_agreement'] * 100:.2f}% | "
                   f"{_fmt(s['p50_ms'], 2)} |")
    return out + [""]


def repair_table(r: dict) -> list[str]:
    """The repair ladder for one failed row (verify/proof.py): every runtime configuration tried, gated and timed."""
    rep = (r.get("checks") or {}).get("repair")
    if not rep:
        return []
    verdict = (f"repaired with {rep['kept']}" if rep["kept"] else
               f"no configuration passed; continued with {rep['continued_with']}" if rep.get("continued_with")
               else "no configuration passed")
    return attempts_table(f"**Repair, {r['target']} {r['precision']}** (failed its gate as built): {verdict}",
                          rep["attempts"])


def recipe_table(r: dict) -> list[str]:
    """``--recipe auto`` for one row (exporters/verify/recipes.py): every candidate recipe, gated and timed here."""
    rec = (r.get("checks") or {}).get("recipes")
    if not rec:
        return []
    return attempts_table(f"**INT8 recipes, {r['target']} {r['precision']}** (tuned on {rec['tuned_on']}): "
                          f"{'kept ' + rec['kept'] if rec['kept'] else 'none passed'}, {rec['why']}", rec["attempts"],
                          column="recipe, unquantized ops")


def attempts_table(title: str, attempts: list[dict], column: str = "configuration") -> list[str]:
    """Candidates of one loop (runtime/repair.py): passed or not, the measured fidelity, p50, what was missed."""
    dense = any("pixel_agreement" in (a.get("values") or {}) for a in attempts)
    out = [title, "", f"| {column} | passed | cosine min | {DENSE_HEAD if dense else 'top-1 agree | top-1'} | p50 ms | "
           "missed |", "|---|---|---|---|---|---|---|"]
    for a in attempts:
        v = a.get("values") or {}
        missed = (a.get("error") and f"did not open: {a['error']}" or a.get("skipped") and f"not gated: {a['skipped']}"
                  or "; ".join(a.get("failures") or []) or "–")
        passed = "yes" if a.get("passed") else "–" if a.get("skipped") else "**NO**"
        out.append(f"| {a['name']}{' (kept)' if a.get('kept') else ''} | {passed} | "
                   f"{_fmt(v.get('cosine_min'), 6)} | {' | '.join(_agreement_cells(v, dense))} | "
                   f"{_fmt(a.get('p50_ms'), 2)} | {missed[:160]} |")
    return out + [""]


def drift_table(res: dict) -> list[str]:
    """Block-by-block drift of one artefact (exporters/verify/probes.py rows, graph order): its first large step, each
    module's worst-sample cosine and max abs error, and the modules its compiler fused or renamed."""
    step, lines = res.get("first_large_step"), []
    if step:
        lines += [f"**First large step: `{step['module']}`** (1 - cosine grows by {step['growth']:.2e} over the worst "
                  f"before it ({step['step']:.1f}x), to {step['error']:.2e})", ""]
    lines += ["| # | module | cosine min | 1 - cosine min | max abs err | max abs of the reference |",
              "|---|---|---|---|---|---|"]
    for i, r in enumerate(res["rows"]):
        lines.append(f"| {i} | `{r['module']}` | {r['cosine_min']:.6f} | {1 - r['cosine_min']:.2e} | "
                     f"{r['max_abs']:.4g} | {r['ref_max_abs']:.4g} |")
    if res.get("not_found"):
        lines += ["", "Not located in this artefact (fused or renamed by its compiler): "
                  + ", ".join(f"`{n}`" for n in res["not_found"])]
    return lines


def drift_section(report: dict) -> list[str]:
    """A dense model's drift by module name at export (exporters/verify/dense.py), one table per artefact."""
    out = []
    for name, res in (report.get("drift") or {}).items():
        out += [f"**Drift by module, {name}** against PyTorch, on the {res['samples']} samples whose maps agree worst; "
                f"artefact values from {res['artefact_values_from']}; cosine per sample (the worst shown)", "",
                *drift_table(res), ""]
    return out


def golden_line(report: dict) -> str:
    g = report.get("golden")
    if not g:
        return ""
    return (f"Golden set: {g['samples']} samples, {g['bytes'] / 1e6:.2f} MB ({g['file']}), {g['chosen']}; reference: "
            f"{g['reference']}. `python -m runtime verify` runs it on another machine with each artefact's gates.")


def failed_gates(results: list[dict]) -> list[str]:
    """One line per failed row: which tolerance it missed, and by how much."""
    return [f"{r['target']} {r['precision']}: " + "; ".join(r["failures"]) for r in results if r.get("failures")]


def describe_trt_check(check: dict) -> str:
    """One line: what NVIDIA's ONNX parser and TensorRT-RTX builder made of a TensorRT ONNX."""
    if check.get("ok") is None:
        return f"NOT checked by NVIDIA's parser: {check.get('error')}"
    prec = ", ".join(f"{k} {v}" for k, v in check["compute_layers_by_precision"].items())
    return (f"{check['library']} {check['version']} parsed and AOT-built it on this machine: {check['layers']} "
            f"layers (compute layers by output precision: {prec}; Q/DQ layers {check['qdq_layers']}), built in "
            f"{check['build_s']:.1f} s, engine {check['engine_bytes'] / 1e6:.1f} MB")


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
    sel = report.get("selection")
    if sel:
        out += [f"**Default artefact (--precision auto): {sel['target']} {sel['precision']}**, p50 {sel['p50_ms']:.2f} ms, "
                f"the fastest that passed its gate ({sel['chosen_on']}); the runtime opens it unless told otherwise.", ""]
    failed = failed_gates(report["results"])
    if failed:
        out += ["**Accuracy gates missed** (the artefact is kept; the limits are in runtime/tolerances.py):", "",
                *[f"- {line}" for line in failed], ""]
    for r in report["results"]:
        out += recipe_table(r)
        out += repair_table(r)
        out += budget_table(r)
    out += drift_section(report)
    if golden_line(report):
        out += [golden_line(report), ""]
    if report.get("signed_by"):
        out += [f"Signed: `model.sig` (OpenSSF model-signing format) covers every file of this bundle; key id "
                f"`{report['signed_by'][:16]}…`. Check it with `python -m runtime verify BUNDLE --trust KEY.pub.pem` or "
                "model-signing's own `verify key` command.", ""]
    if any((r.get("checks") or {}).get("budget") for r in report["results"]):
        out += ["![accuracy budget, step by step](plot_accuracy_budget.png)", ""]
    for r in report["results"]:
        for n in r.get("notes", []):
            out.append(f"- {r['target']} {r['precision']}: {n}")
        if (r.get("checks") or {}).get("trt_parse"):
            out.append(f"- {r['target']} {r['precision']}: NVIDIA check: {describe_trt_check(r['checks']['trt_parse'])}")
    if _roofline_line(report):
        out += ["", _roofline_line(report)]
    graph = report.get("graph")
    if graph:
        out += ["", f"Graph: {graph['num_nodes']} nodes, contract "
                f"{'passed' if graph['contract'].get('passed') else 'NOT passed'}; rewrites: "
                + ", ".join(f"{k} ×{v}" for k, v in report.get("rewrites", {}).get("replaced", {}).items() if v), ""]
        out.append("Ops: " + ", ".join(f"{k} {v}" for k, v in graph["op_counts"].items()))
    return "\n".join(out) + "\n"


def _roofline_line(rep: dict) -> str:
    rl = rep.get("roofline") or {}
    if not rl.get("flops_per_image"):
        return ""
    return (f"Roofline: {rl['flops_per_image'] / 1e9:.2f} GFLOP per image; measured float32 GEMM peak on this "
            f"machine {rl.get('gemm_peak_gflops', 0):.0f} GFLOP/s ({rep['environment'].get('threads')} threads)")


def write_report(report: dict, folder: Path) -> list[Path]:
    """report.json, report.md, report.html and the PNG plots for one model."""
    folder.mkdir(parents=True, exist_ok=True)
    j, m = folder / "report.json", folder / "report.md"
    j.write_text(json.dumps(report, indent=2, default=str))
    m.write_text(render_markdown(report))
    return [j, m, *write_html([report], folder, f"python -m exporters {report['model']}")]


def trt_check_table(rep: dict) -> list[str]:
    """The NVIDIA parser/builder evidence of a report's TensorRT rows, as a Markdown table (or nothing)."""
    rows = [r for r in rep["results"] if (r.get("checks") or {}).get("trt_parse", {}).get("ok")]
    if not rows:
        return []
    lines = ["| target | precision | library | layers | compute layers by output precision | Q/DQ layers | "
             "AOT build s | engine MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["checks"]["trt_parse"]
        prec = ", ".join(f"{k} {v}" for k, v in c["compute_layers_by_precision"].items())
        lines.append(f"| {r['target']} | {r['precision']} | {c['library']} {c['version']} | {c['layers']} | {prec} | "
                     f"{c['qdq_layers']} | {c['build_s']:.1f} | {c['engine_bytes'] / 1e6:.1f} |")
    return ["NVIDIA's ONNX parser and TensorRT-RTX AOT builder, on this machine's CPU:", "", *lines, ""]


def size_table(reports: list[dict]) -> list[str]:
    """Reports of one model at several input sizes: p50 ms and worst cosine per (target, precision) and size."""
    sizes = [f"{rep['input_shape'][-2]}x{rep['input_shape'][-1]}" for rep in reports]
    if len(set(sizes)) < 2:
        return []
    cells: dict[str, dict] = {}
    for size, rep in zip(sizes, reports):
        for r in rep["results"]:
            lat, acc = r.get("latency_ms") or {}, r.get("accuracy") or {}
            ok = {True: "", False: " **NO**", None: ""}[r.get("passed")]
            cells.setdefault(f"{r['target']} {r['precision']}", {})[size] = (
                f"{_fmt(lat.get('p50'))} · {_fmt(acc.get('cosine_min'), 5)}{ok}")
    head = "| target precision | " + " | ".join(sizes) + " |"
    lines = ["Per input size: p50 ms · worst cosine against PyTorch at that size (**NO**: gate failed).", "", head,
             "|" + "---|" * (len(sizes) + 1)]
    lines += [f"| {k} | " + " | ".join(v.get(s, "–") for s in sizes) + " |" for k, v in cells.items()]
    return [*lines, ""]


def render_matrix_markdown(reports: list[dict], command: str) -> str:
    env = reports[0]["environment"] if reports else {}
    out = ["# vitdeploy benchmark matrix" if not size_table(reports) else f"# {reports[0]['model']} at several "
           "input sizes", "", f"Command: `{command}`", "", f"Machine: {one_line(env)}" if env else "", "",
           *size_table(reports)]
    for rep in reports:
        out += [f"## {rep['model']} (`{rep['source']}`, weights: {rep['weights']}, input {rep['input_shape']})", "",
                results_table(rep["results"]), "", *trt_check_table(rep)]
        failed = failed_gates(rep["results"])
        if failed:
            out += ["Accuracy gates missed:", "", *[f"- {line}" for line in failed], ""]
        steps = rep.get("step_seconds", {})
        if steps:
            out.append("Build steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
            out.append("")
    return "\n".join(out) + "\n"


def write_matrix(reports: list[dict], folder: Path, command: str) -> list[Path]:
    """report.json (the list of single-model reports), report.md, report.html and PNGs for a matrix."""
    folder.mkdir(parents=True, exist_ok=True)
    j, m = folder / "report.json", folder / "report.md"
    j.write_text(json.dumps({"command": command, "reports": reports}, indent=2, default=str))
    m.write_text(render_matrix_markdown(reports, command))
    return [j, m, *write_html(reports, folder, command)]


def _html_table(results: list[dict]) -> str:
    return _html_from_md(results_table(results).splitlines())


def _html_from_md(md: list[str]) -> str:
    """A Markdown table (header, rule, rows) as an HTML table; a ``**NO**`` cell is marked bad."""
    head = [c.strip() for c in md[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md[2:]]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(
        f"<td class='{'bad' if c == '**NO**' else ''}'>{html.escape(c.replace('**', ''))}</td>" for c in row) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _html_budgets(results: list[dict]) -> str:
    """Each repair ladder and accuracy-budget loop: its one-line verdict and its table."""
    out = ""
    for r in results:
        checks = r.get("checks") or {}
        for lines, ok in ((recipe_table(r), (checks.get("recipes") or {}).get("kept")),
                          (repair_table(r), (checks.get("repair") or {}).get("kept")),
                          (budget_table(r), (checks.get("budget") or {}).get("met"))):
            if lines:
                title = lines[0].replace("**", "")
                out += f"<p class='{'' if ok else 'bad'}'>{html.escape(title)}</p>"
                out += _html_from_md([line for line in lines[2:] if line])
    return out


def write_html(reports: list[dict], folder: Path, command: str) -> list[Path]:
    """One self-contained report.html (plots embedded as base64 PNG) plus the same plots as PNG files."""
    pngs, written = {}, []
    for name, fn in FIGURES.items():
        data = fn(reports)
        if data is None:
            continue
        pngs[name] = data
        p = folder / f"plot_{name}.png"
        p.write_bytes(pngs[name])
        written.append(p)
    env = reports[0]["environment"] if reports else {}
    parts = [f"<h1>vitdeploy report</h1><p class='meta'>Command: <code>{html.escape(command)}</code><br>"
             f"Machine: {html.escape(one_line(env)) if env else ''}</p>"]
    for rep in reports:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in rep.get("notes", []))
        notes += "".join(f"<li class='bad'>accuracy gate missed: {html.escape(n)}</li>"
                         for n in failed_gates(rep["results"]))
        parts.append(f"<h2>{html.escape(rep['model'])} <small>{html.escape(rep['source'])}, weights: "
                     f"{html.escape(str(rep['weights']))}, input {rep['input_shape']}</small></h2>"
                     f"<ul class='notes'>{notes}</ul>{_html_table(rep['results'])}{_html_budgets(rep['results'])}"
                     f"<p>{html.escape(_roofline_line(rep))}</p>")
    for name, data in pngs.items():
        parts.append(f"<figure><img alt='{name}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
                     f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
             "td.bad,li.bad{background:#fdd;font-weight:bold}.meta,small{color:#555}.notes{color:#a40;font-size:13px}"
             "figure{display:inline-block;margin:1em}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>vitdeploy report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    h = folder / "report.html"
    h.write_text(page)
    return [h, *written]
