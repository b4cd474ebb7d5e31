"""The dense API's make-test case, printed: the trained digits Swin under an FPN head (tests/fixtures/segmenter.py),
exported with ``task="segmentation"`` to every target at FP32 and INT8, and each row's gates against the module.

    python docs/repro/dense_digits.py [OUT]          # default /tmp/dense_digits; about two minutes on 2 cores
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.fixtures, from a clone

import exporters  # noqa: E402
from exporters.models.zoo import DIGITS_PREPROCESSING  # noqa: E402
from tests.fixtures.segmenter import dataset_iou, trained_segmenter  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dense_digits")
model = trained_segmenter()
acc, miou = dataset_iou(model)
print(f"the module against the digits' own masks (hold-out): pixel accuracy {acc:.4f}, mean IoU {miou:.4f}")
rep = exporters.export(model, input_shape=(3, 32, 32), task="segmentation", precision=["fp32", "int8"],
                       targets=["onnxruntime", "openvino", "tensorrt_rtx", "coreml"], preprocessing=DIGITS_PREPROCESSING,
                       labels=["background", *map(str, range(10))], out=out, name="digitseg", runs=20)
print("| target | precision | passed | cosine min | pixel agreement | mean IoU | p50 ms | accuracy from | repair |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rep.results:
    d = (r.get("checks") or {}).get("dense") or {}
    kept = ((r.get("checks") or {}).get("repair") or {}).get("kept")
    p50 = (r.get("latency_ms") or {}).get("p50")
    print(f"| {r['target']} | {r['precision']} | {r['passed']} | {(r.get('accuracy') or {}).get('cosine_min', 0):.6f} | "
          f"{d.get('pixel_agreement', 0):.4f} | {d.get('mean_iou', 0):.4f} | {p50 if p50 is None else round(p50, 2)} | "
          f"{r.get('accuracy_kind', '-')} | {kept or '-'} |")
print(f"bundle: {rep.bundle}")
