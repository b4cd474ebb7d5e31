"""``python -m benchmarks compare OLD/report.json NEW/report.json``: ratios and regressions.

Results are matched by (model, target, precision, batch). A latency ratio compares two runs, so
it is labelled a ratio, never a speedup: speedups are only computed within one run.
"""
from __future__ import annotations

import json
from pathlib import Path

from runtime.errors import UserError


def load_results(path: Path) -> dict[tuple, dict]:
    """``(model, target, precision, batch) -> result`` from a report.json or a matrix report.json."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read report {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a JSON report: {str(exc).splitlines()[0][:120]}") from None
    reports = data.get("reports") if isinstance(data, dict) and "reports" in data else [data]
    out = {}
    try:
        for rep in reports:
            for r in rep.get("results", []):
                out[(rep["model"], r["target"], r["precision"], rep["input_shape"][0])] = r
    except (AttributeError, KeyError, TypeError, IndexError):
        raise UserError(f"{path} is not a vitdeploy report (no model/results/input_shape where expected)") from None
    if not out:
        raise UserError(f"{path} holds no results")
    return out


def check_same_models(old: dict, new: dict) -> None:
    """Refuse to compare reports of different models: every row would be 'only in old/new'."""
    a, b = sorted({k[0] for k in old}), sorted({k[0] for k in new})
    if not set(a) & set(b):
        raise UserError(f"the reports are of different models ({', '.join(a)} against {', '.join(b)}); "
                        f"pass --allow-different-models to compare them anyway")


def compare_reports(old: dict, new: dict, threshold: float = 0.10, acc_threshold: float = 0.5) -> list[dict]:
    """One row per result in both; ``regression`` when p50 rose by more than ``threshold`` (a fraction)
    or top-1 agreement fell by more than ``acc_threshold`` points."""
    rows = []
    for key in sorted(set(old) | set(new)):
        o, n = old.get(key), new.get(key)
        row = {"model": key[0], "target": key[1], "precision": key[2], "batch": key[3],
               "old_p50": None, "new_p50": None, "ratio": None, "agreement_delta": None, "regression": False,
               "note": ""}
        if o is None or n is None:
            row["note"] = "only in " + ("new" if o is None else "old")
            rows.append(row)
            continue
        lo, ln = (o.get("latency_ms") or {}).get("p50"), (n.get("latency_ms") or {}).get("p50")
        row["old_p50"], row["new_p50"] = lo, ln
        if lo and ln:
            row["ratio"] = round(ln / lo, 3)
            if row["ratio"] > 1 + threshold:
                row["regression"], row["note"] = True, f"latency +{(row['ratio'] - 1) * 100:.0f}%"
        ao, an = (o.get("accuracy") or {}).get("top1_agreement"), (n.get("accuracy") or {}).get("top1_agreement")
        if ao is not None and an is not None:
            row["agreement_delta"] = round((an - ao) * 100, 2)
            if -row["agreement_delta"] > acc_threshold:
                row["regression"] = True
                row["note"] = (row["note"] + "; " if row["note"] else "") + f"agreement {row['agreement_delta']:+.2f} pt"
        if o.get("passed") and n.get("passed") is False:
            row["regression"] = True
            row["note"] = (row["note"] + "; " if row["note"] else "") + "now fails its gate"
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| model | target | precision | batch | old p50 ms | new p50 ms | new/old | agreement Δ pt | flag |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(f"| {r['model']} | {r['target']} | {r['precision']} | {r['batch']} | {f(r['old_p50'])} | "
                     f"{f(r['new_p50'])} | {f(r['ratio'], 3)} | {f(r['agreement_delta'])} | "
                     f"{'**REGRESSION** ' if r['regression'] else ''}{r['note']} |")
    return "\n".join(lines)
