"""Matplotlib figures for the reports: latency bars with p90 whiskers, accuracy drop against
speedup, artefact size, and the accuracy budget's steps. Each returns PNG bytes (Agg backend, no
display needed), or None when the reports hold nothing to draw."""
from __future__ import annotations

import io

_SHORT = {"onnxruntime": "ORT", "openvino": "OpenVINO", "tensorrt": "TensorRT", "coreml": "Core ML",
          "pytorch": "PyTorch"}


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported on the first figure (it costs half a second at import)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label(r: dict) -> str:
    return f"{_SHORT.get(r['target'], r['target'])}\n{r['precision']}"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def _timed(reports):
    return [(rep, r) for rep in reports for r in rep["results"] if r.get("latency_ms")]


def latency_bars(reports: list[dict]) -> bytes:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(reports), figsize=(max(6, 4.5 * len(reports)), 4), squeeze=False)
    for ax, rep in zip(axes[0], reports):
        rows = [r for r in rep["results"] if r.get("latency_ms")]
        p50 = [r["latency_ms"]["p50"] for r in rows]
        err = [max(0.0, r["latency_ms"]["p90"] - r["latency_ms"]["p50"]) for r in rows]
        colors = ["#777" if r["target"] == "pytorch" else "#2b7bba" if r["precision"] == "fp32" else
                  "#e08214" if r["precision"] == "fp16" else "#1a9641" for r in rows]
        ax.bar(range(len(rows)), p50, yerr=[[0] * len(err), err], color=colors, capsize=3)
        ax.set_xticks(range(len(rows)), [_label(r) for r in rows], fontsize=7)
        ax.set_ylabel("latency p50 ms (whisker: p90)")
        ax.set_title(f"{rep['model']} (batch {rep['input_shape'][0]})", fontsize=10)
    return _png(fig)


def drop_vs_speedup(reports: list[dict]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for rep, r in _timed(reports):
        acc = r.get("accuracy") or {}
        if r["target"] == "pytorch" or r.get("speedup_vs_reference") is None:
            continue
        drop = (1.0 - acc.get("top1_agreement", 1.0)) * 100
        ax.scatter(r["speedup_vs_reference"], drop, marker="o" if r.get("passed") else "x")
        ax.annotate(f"{rep['model']} {r['target']} {r['precision']}", (r["speedup_vs_reference"], drop), fontsize=6)
    ax.axvline(1.0, color="#999", lw=0.8)
    ax.set_xlabel("speedup over PyTorch eager FP32 (same run)")
    ax.set_ylabel("top-1 disagreement with PyTorch (%)")
    ax.set_title("accuracy cost against speed (x: failed its gate)", fontsize=10)
    return _png(fig)


def size_bars(reports: list[dict]) -> bytes:
    rows = [(rep["model"], r) for rep in reports for r in rep["results"] if r.get("size_mb")]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [r["size_mb"] for _, r in rows], color="#6a51a3")
    ax.set_xticks(range(len(rows)), [f"{m}\n{_label(r)}" for m, r in rows], fontsize=6)
    ax.set_ylabel("artefact size (MB)")
    ax.set_title("artefact size", fontsize=10)
    return _png(fig)


def budget_steps(reports: list[dict]) -> bytes | None:
    """Each accuracy-budget loop (verify/budget.py): 1 - cosine_min and top-1 drop per step, and p50 where timed."""
    loops = [(rep["model"], r) for rep in reports for r in rep["results"] if (r.get("checks") or {}).get("budget")]
    if not loops:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(loops), figsize=(max(6, 5 * len(loops)), 4), squeeze=False)
    for ax, (model, r) in zip(axes[0], loops):
        b = r["checks"]["budget"]
        steps = b["steps"]
        x = range(len(steps))
        ax.semilogy(x, [max(1 - s["cosine_min"], 1e-9) for s in steps], marker="o", ms=9, lw=3, color="#2b7bba",
                    alpha=0.6, label="1 - cosine min (left)")
        if b["min_cosine"] is not None:
            ax.axhline(1 - b["min_cosine"], color="#2b7bba", ls=":", lw=1)
        ax.set_ylabel("1 - cosine min (dotted: budget)")
        labels = ["as built"] + [s["kept"][-1] for s in steps[1:]]
        ax.set_xticks(list(x), [f"+{t}" if i else t for i, t in enumerate(labels)], rotation=30, ha="right", fontsize=7)
        twin = ax.twinx()
        drops = [s["drop_points"] for s in steps]
        if any(d is not None for d in drops):
            twin.plot(x, [d if d is not None else float("nan") for d in drops], marker="s", color="#d7301f",
                      label="top-1 drop, points (right)")
            twin.set_ylabel("top-1 drop, points (red); p50 ms (green)")
        p50 = [s["p50_ms"] for s in steps]
        if any(p is not None for p in p50):
            twin.plot(x, [p if p is not None else float("nan") for p in p50], marker="^", color="#1a9641",
                      label="p50 ms (right)")
        lines = ax.get_lines()[:1] + twin.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="upper center")
        ax.set_title(f"{model} {r['target']} {r['precision']}: budget {'met' if b['met'] else 'NOT met'}", fontsize=9)
    return _png(fig)


def latency_vs_size(reports: list[dict]) -> bytes | None:
    """p50 against input pixels, one line per (target, precision), when the reports hold several input sizes."""
    sizes = {tuple(rep["input_shape"][-2:]) for rep in reports}
    if len(sizes) < 2:
        return None
    lines: dict[str, list] = {}
    for rep in reports:
        h, w = rep["input_shape"][-2:]
        for r in rep["results"]:
            if r.get("latency_ms"):
                lines.setdefault(_label(r).replace("\n", " "), []).append((h * w, r["latency_ms"]["p50"], f"{h}x{w}"))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, pts in lines.items():
        pts.sort()
        ax.plot([p[0] / 1e3 for p in pts], [p[1] for p in pts], marker="o", label=name)
    ticks = sorted({(h * w, f"{h}x{w}") for h, w in sizes})
    ax.set_xticks([t[0] / 1e3 for t in ticks], [t[1] for t in ticks], fontsize=7)
    ax.set_xlabel("input size (x: thousands of pixels)")
    ax.set_ylabel("latency p50 ms (same run per size)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"{reports[0]['model']}: latency against resolution", fontsize=10)
    return _png(fig)


FIGURES = {"latency": latency_bars, "accuracy_vs_speedup": drop_vs_speedup, "size": size_bars,
           "accuracy_budget": budget_steps, "latency_vs_size": latency_vs_size}
