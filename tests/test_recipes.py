"""INT8 recipes (exporters/verify/recipes.py, exporters/targets/openvino.py): each named recipe builds the IR it says,
``--recipe auto`` gates and times every candidate on this machine and keeps the fastest that passes, and the
report and manifest say which won and why."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("openvino", reason="INT8 recipes are OpenVINO's: pip install 'vitdeploy[openvino]'")
pytest.importorskip("nncf", reason="INT8 recipes need NNCF: pip install 'vitdeploy[openvino-int8]'")
pytestmark = pytest.mark.slow

from exporters.targets.openvino import RECIPES, OpenVinoOptions, recipe_candidates  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def activation_fq(xml: Path) -> dict:
    """What an INT8 IR quantizes: activation FakeQuantize ops, how many are asymmetric (a zero point), and how many
    feed the fused attention op."""
    import openvino as ov
    model = ov.Core().read_model(str(xml))
    act = [o for o in model.get_ordered_ops() if o.get_type_name() == "FakeQuantize"
           and o.input(0).get_source_output().get_node().get_type_name() != "Constant"]
    asym = 0
    for o in act:
        lo, hi = (o.input(i).get_source_output().get_node().get_data() for i in (1, 2))
        symmetric = np.all(lo == 0) or np.allclose(lo, -hi * 128 / 127, rtol=1e-3) or np.allclose(lo, -hi, rtol=1e-3)
        asym += not symmetric
    attention = sum(1 for o in act for t in o.output(0).get_target_inputs()
                    if t.get_node().get_type_name() == "ScaledDotProductAttention")
    return {"activations": len(act), "asymmetric": asym, "attention": attention}


def qdq_facts(path: Path) -> dict:
    """What an ONNX Runtime QDQ model quantizes: activation zero-point types, and DequantizeLinear ops feeding an
    activation-by-activation MatMul (attention)."""
    import onnx
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}

    def weight(name: str) -> bool:  # an initializer, or a DequantizeLinear of one (a quantized weight)
        p = producer.get(name)
        return name in inits or (p is not None and p.op_type == "DequantizeLinear" and p.input[0] in inits)
    att = {n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(weight(i) for i in n.input)}
    zp_types = {inits[n.input[2]].data_type for n in proto.graph.node if n.op_type == "QuantizeLinear"
                and len(n.input) > 2 and n.input[2] in inits}
    into_attention = sum(1 for n in proto.graph.node if n.name in att for i in n.input
                         if i in producer and producer[i].op_type == "DequantizeLinear")
    return {"zero_point_types": zp_types, "into_attention": into_attention}


def build_each_recipe(tmp_path_factory, name: str, options, facts) -> dict:
    """digits_swin's INT8 artefact of target ``name`` under each named recipe, from one export and one calibration set."""
    from calibration import load_set
    from exporters.graph.onnx import export_onnx
    from exporters.graph.rewrites import apply_rewrites
    from exporters.models.zoo import create_model
    from exporters.targets import BuildContext, target
    d = tmp_path_factory.mktemp(f"recipes-{name}")
    model, spec = create_model("digits_swin")
    model, _ = apply_rewrites(model, (1, *spec.input_shape))
    exp = export_onnx(model, (1, *spec.input_shape), d / "model.onnx")
    calib = load_set("digits", spec.preprocessing, size=32, part="train", progress=False)
    out = {}
    for recipe in RECIPES:
        (d / recipe).mkdir()
        ctx = BuildContext(spec=spec, model=model, onnx_path=exp.path, workdir=d / recipe, batch=1, threads=None,
                           calib=lambda: calib)
        art = target(name).build(ctx, "int8", options(recipe=recipe))
        assert art.runtime_config["recipe"] == recipe and f"recipe {recipe}" in art.notes[0]
        out[recipe] = facts(art.primary)
    return out


@pytest.fixture(scope="module")
def recipe_irs(tmp_path_factory):
    return build_each_recipe(tmp_path_factory, "openvino", OpenVinoOptions, activation_fq)


def test_onnxruntime_recipes_build_what_they_say(tmp_path_factory):
    import onnx

    from exporters.targets.onnxruntime import RECIPES as ORT_RECIPES
    from exporters.targets.onnxruntime import OnnxRuntimeOptions
    assert set(ORT_RECIPES) == set(RECIPES)  # one --recipe flag, the same names on every CPU INT8 target
    got = build_each_recipe(tmp_path_factory, "onnxruntime", OnnxRuntimeOptions, qdq_facts)
    assert got["mixed"]["zero_point_types"] == {onnx.TensorProto.UINT8} and got["mixed"]["into_attention"] > 0
    assert onnx.TensorProto.INT8 in got["symmetric"]["zero_point_types"]
    assert got["projections"]["into_attention"] == 0


def test_each_recipe_builds_what_it_says(recipe_irs):
    mixed, sym, proj = recipe_irs["mixed"], recipe_irs["symmetric"], recipe_irs["projections"]
    assert mixed["asymmetric"] > 0 and mixed["attention"] > 0  # zero points, INT8 attention
    assert sym["asymmetric"] == 0 and sym["activations"] == mixed["activations"]  # same ops, no zero points
    assert proj["attention"] == 0 and proj["activations"] == mixed["activations"] - mixed["attention"]


def test_candidates_cover_every_recipe_under_each_hint():
    cands = recipe_candidates(OpenVinoOptions())
    assert {r for r, _ in cands} == set(RECIPES)
    assert {c["inference_precision"] for _, c in cands} >= {"f32"}
    assert len(cands) == len(RECIPES) * len({c["inference_precision"] for _, c in cands})


def test_recipe_auto_keeps_the_fastest_that_passes(tmp_path, capsys):
    code, _, err = run_cli(["digits_swin", "--target", "openvino", "--int8", "--recipe", "auto", "--out", tmp_path,
                            "--runs", "5", "--quiet"], capsys)
    assert code == 0, err
    bundle = tmp_path / "digits_swin"
    rep = json.loads((bundle / "report.json").read_text())
    row = next(r for r in rep["results"] if r["target"] == "openvino")
    rec = row["checks"]["recipes"]
    assert len(rec["attempts"]) == len(recipe_candidates(OpenVinoOptions()))
    passing = [a for a in rec["attempts"] if a["passed"]]
    kept = next(a for a in rec["attempts"] if a["kept"])
    assert kept["p50_ms"] == min(a["p50_ms"] for a in passing) and rec["kept"] == kept["name"]
    assert "fastest of" in rec["why"] and rec["tuned_on"]
    # fidelity first: every kept candidate is within FIDELITY_EPS of the default recipe's worst-sample cosine
    from exporters.verify.recipes import FIDELITY_EPS
    floor = rec["fidelity_floor"]
    assert floor is not None and rec["fidelity_eps"] == FIDELITY_EPS
    assert all(a["values"]["cosine_min"] >= floor - FIDELITY_EPS for a in passing)
    art = next(a for a in json.loads((bundle / "manifest.json").read_text())["artifacts"] if a["target"] == "openvino")
    assert art["runtime_config"]["recipe"] == kept["config"]["recipe"]
    assert art["runtime_config"]["inference_precision"] == kept["config"]["inference_precision"]
    assert not list(bundle.glob(".recipe-*"))  # the losing candidates are gone
    assert "INT8 recipes, openvino int8" in (bundle / "report.md").read_text()
    import runtime
    with runtime.open(bundle, target="openvino", verify="always") as s:  # the kept files are the manifest's
        assert s.verdict.passed


def test_recipe_for_a_build_without_recipes_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["digits_swin", "--target", "openvino", "--fp16", "--recipe", "symmetric", "--out",
                            tmp_path, "--quiet"], capsys)
    assert code == 2 and "--recipe applies to onnxruntime int8 and openvino int8 builds" in err, err
    code, _, err = run_cli(["digits_swin", "--target", "openvino", "--int8", "--recipe", "fastest", "--out",
                            tmp_path, "--quiet"], capsys)
    assert code == 2 and "--recipe" in err and "Traceback" not in err, err


def test_precision_auto_means_recipe_auto_unless_one_is_named():
    from exporters.targets import target
    from exporters.verify.recipes import wants_auto
    t = target("openvino")

    def job(precision, options):
        return SimpleNamespace(opts=SimpleNamespace(precision=precision, options=options),
                               target_options={"openvino": OpenVinoOptions(**options)})
    assert wants_auto(job("auto", {}), t, "int8")
    assert not wants_auto(job("auto", {"recipe": "mixed"}), t, "int8")
    assert wants_auto(job("int8", {"recipe": "auto"}), t, "int8")
    assert not wants_auto(job("int8", {}), t, "int8")
    assert not wants_auto(job("auto", {}), t, "fp16")
    assert not wants_auto(job("auto", {}), t, "fp32")


def test_onnxruntime_recipes_share_one_calibration(tmp_path):
    """The recipes of one --recipe auto differ only after calibration: a recipe quantized from the ranges the first
    one saved equals the same recipe calibrated on its own, scale for scale."""
    import dataclasses

    import onnx
    from onnx import numpy_helper

    from calibration import load_set
    from exporters.graph.onnx import export_onnx
    from exporters.models.zoo import create_model
    from exporters.targets import BuildContext, target
    from exporters.targets.onnxruntime import OnnxRuntimeOptions, _cache
    if not _cache(tmp_path / "probe.json"):
        pytest.skip("this ONNX Runtime's quantize_static has no calibration_cache_path (1.32+)")
    model, spec = create_model("digits_swin")
    exp = export_onnx(model, (1, *spec.input_shape), tmp_path / "model.onnx")
    calib = load_set("digits", spec.preprocessing, size=16, part="train", progress=False)
    base = BuildContext(spec=spec, model=model, onnx_path=exp.path, workdir=tmp_path, batch=1, threads=None,
                        calib=lambda: calib)
    cache = tmp_path / "calib.json"

    def build(recipe: str, folder: str, cached: bool) -> dict:
        (tmp_path / folder).mkdir()
        ctx = dataclasses.replace(base, workdir=tmp_path / folder, calibration_cache=cache if cached else None)
        art = target("onnxruntime").build(ctx, "int8", OnnxRuntimeOptions(recipe=recipe))
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(art.primary)).graph.initializer}
    build("mixed", "first", cached=True)
    assert cache.is_file()
    alone = {}
    for recipe in ("symmetric", "projections"):
        shared, alone[recipe] = build(recipe, f"{recipe}-shared", True), build(recipe, f"{recipe}-alone", False)
        assert shared.keys() == alone[recipe].keys()
        assert all(np.array_equal(shared[k], alone[recipe][k]) for k in shared), recipe
    # and the shared ranges are what it used: widen them in the cache and the scales follow
    data = json.loads(cache.read_text())
    for rng in data["data"].values():
        rng["lowest"]["data"] = [v * 2 for v in rng["lowest"]["data"]]
        rng["highest"]["data"] = [v * 2 for v in rng["highest"]["data"]]
    cache.write_text(json.dumps(data))
    widened = build("symmetric", "symmetric-widened", True)
    assert widened.keys() == alone["symmetric"].keys()
    assert any(not np.array_equal(widened[k], alone["symmetric"][k]) for k in widened)


def test_auto_refuses_a_faster_recipe_that_gives_up_fidelity():
    from exporters.verify.recipes import FIDELITY_EPS, fidelity_judge

    def judge(runner):  # the gate passes both; one of them is less faithful than the default
        return True, {"cosine_min": runner}, []
    strict = fidelity_judge(judge, floor=0.999)
    assert strict(0.999 - FIDELITY_EPS / 2) == (True, {"cosine_min": 0.999 - FIDELITY_EPS / 2}, [])
    passed, _, failures = strict(0.956)
    assert not passed and "below the default recipe's 0.999000" in failures[0]
    assert fidelity_judge(judge, None) is judge  # no floor (the default failed its gate): the gate alone decides
