"""The benchmark matrix end to end on digits_vit: every CPU target × fp32/int8, one report."""
import json

import pytest

pytestmark = pytest.mark.slow


def test_matrix_on_digits_vit(tmp_path, capsys):
    from benchmarks.__main__ import main
    out = tmp_path / "bench"
    assert main(["digits_vit", "--targets", "onnxruntime,openvino,tensorrt", "--precisions", "fp32,int8",
                 "--runs", "3", "--throughput", "--out", str(out)]) == 0
    data = json.loads((out / "report.json").read_text())
    rows = {(r["target"], r["precision"]): r for r in data["reports"][0]["results"]}
    assert {("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
            ("openvino", "int8"), ("tensorrt", "int8")} <= set(rows)
    assert rows[("tensorrt", "int8")]["status"] in ("deferred", "built")  # listed, never dropped
    for key in (("onnxruntime", "int8"), ("openvino", "int8")):
        assert rows[key]["passed"] and rows[key]["gflops"] > 0
        assert rows[key]["throughput_mode"]["images_per_s"] > 0
    assert "img/s, throughput mode" in (out / "report.md").read_text()
    assert data["reports"][0]["roofline"]["gemm_peak_gflops"] > 0
    for name in ("report.md", "report.html", "plot_latency.png", "plot_accuracy_vs_speedup.png", "plot_size.png"):
        assert (out / name).is_file(), name
