"""Reports: the HTML is self-contained and its embedded plots decode; compare flags regressions."""
import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from benchmarks.compare import compare_reports, load_results, render
from exporters.report.render import write_matrix


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.external = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.external.append(a)


def _report(model="m", p50=10.0, agreement=1.0, passed=True):
    res = lambda t, p, lat, agr, ok: {  # noqa: E731
        "target": t, "precision": p, "status": "built", "device": "CPU", "artifact": "x", "size_mb": 1.0,
        "latency_ms": {"p50": lat, "p90": lat * 1.1, "p99": lat * 1.2, "mean": lat}, "throughput_ips": 1000 / lat,
        "accuracy": {"max_abs_err": 0.0, "mean_abs_err": 0.0, "cosine_min": 1.0, "top1_agreement": agr,
                     "top5_agreement": 1.0, "top1": 0.9}, "speedup_vs_reference": 20.0 / lat, "passed": ok,
        "notes": []}
    return {"model": model, "source": "timm:x", "weights": "random", "input_shape": [1, 3, 32, 32],
            "environment": {"cpu": {"model": "cpu", "flags": []}, "gpu": None, "threads": 2, "versions": {}},
            "results": [res("pytorch", "fp32", 20.0, 1.0, True), res("onnxruntime", "int8", p50, agreement, passed)]}


def test_html_is_self_contained_and_plots_decode(tmp_path):
    paths = write_matrix([_report("a"), _report("b", 5.0)], tmp_path, "python -m benchmarks a b")
    html = (tmp_path / "report.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert not parser.external and len(parser.srcs) == 3
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.size[0] > 200 and img.size[1] > 100
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) == 3 and all(Image.open(p).format == "PNG" for p in pngs)
    assert "| onnxruntime | int8 |" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["reports"][1]["model"] == "b"


def test_compare_flags_latency_and_accuracy_regressions(tmp_path):
    old, new = _report(), _report(p50=12.0, agreement=0.98, passed=False)
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps({"command": "x", "reports": [new]}))
    rows = compare_reports(load_results(tmp_path / "old.json"), load_results(tmp_path / "new.json"))
    row = next(r for r in rows if r["target"] == "onnxruntime")
    assert row["ratio"] == pytest.approx(1.2) and row["regression"]
    assert row["agreement_delta"] == pytest.approx(-2.0) and "fails its gate" in row["note"]
    assert not next(r for r in rows if r["target"] == "pytorch")["regression"]
    assert "REGRESSION" in render(rows)


def test_compare_cli_exit_codes(tmp_path, capsys):
    from benchmarks.__main__ import main
    (tmp_path / "a.json").write_text(json.dumps(_report()))
    (tmp_path / "b.json").write_text(json.dumps(_report(p50=10.5)))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0  # +5% is under 10%
    (tmp_path / "c.json").write_text(json.dumps(_report(p50=14.0)))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 1
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2


def test_only_in_one_report_is_listed_not_dropped():
    old = {("m", "openvino", "int8", 1): _report()["results"][1]}
    rows = compare_reports(old, {})
    assert rows[0]["note"] == "only in old"


def test_a_failed_row_names_each_tolerance_missed_and_by_how_much(tmp_path):
    import numpy as np

    from exporters.report.render import render_markdown
    from runtime.accuracy import compare, judge
    from runtime.tolerances import Tolerance
    ref = np.eye(4) * 5
    out = ref.copy()
    out[0] = [0, 5, 0, 0]
    ok, why = judge(compare(ref, out, np.arange(4)), 1.0, Tolerance(cosine_min=0.99, top1_agreement=0.99, top1_drop=0.5))
    assert not ok
    assert why[1] == "top1_agreement 0.7500 < 0.99 (short by 24.00 points)"
    assert why[2] == "top-1 drop 25.00 points > 0.5 (over by 24.50 points)"
    rep = _report(agreement=0.75, passed=False)
    rep["results"][1]["failures"] = why
    write_matrix([rep], tmp_path, "cmd")
    for text in (render_markdown(rep), (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()):
        assert "onnxruntime int8: cosine_min" in text and "short by 24.00 points" in text and "over by 24.50" in text


def test_backbone_and_embedding_rows_show_no_top1_columns():
    from exporters.report.render import results_table
    row = {"target": "openvino", "precision": "int8", "accuracy": {"cosine_min": 0.999, "top1_agreement": 0.72,
           "top1": None}, "passed": True}
    classifier = results_table([row])
    assert "72.00%" in classifier
    for task in ("features", "embedding"):
        table = results_table([{**row, "checks": {"task": task}}])
        assert "72.00%" not in table and "| 0.999000 | – | – |" in table
