"""The graph contract: rewritten exports are free of shape plumbing; violations name the node."""
import onnx
import pytest
from onnx import TensorProto, helper

from exporters.graph.onnx import check_contract, contract_violations, export_onnx
from exporters.graph.rewrites import apply_rewrites
from exporters.models.zoo import create_model
from runtime.errors import UserError


def _export(name, tmp_path, rewrites=True, dynamic=False, simplify=True):
    model, spec = create_model(name)
    shape = (1, *spec.input_shape)
    if rewrites:
        model, _ = apply_rewrites(model, shape)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return export_onnx(model, shape, tmp_path / f"{name.replace(':', '_')}.onnx", dynamic_batch=dynamic,
                       enforce_contract=rewrites, simplify=simplify)


@pytest.mark.parametrize("name", ["digits_swin", "digits_vit"])
def test_digits_models_pass(name, tmp_path):
    exp = _export(name, tmp_path)
    assert exp.contract["passed"] and exp.op_counts.get("LayerNormalization", 0) > 0


@pytest.fixture(scope="module")
def swin_t_rewritten(tmp_path_factory):
    """swin_t's rewritten export, made once for the tests that read it."""
    return _export("swin_t", tmp_path_factory.mktemp("swin_t"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_t", "tv:swin_t", "vit_s"])
def test_full_size_models_pass(name, tmp_path, request):
    exp = request.getfixturevalue("swin_t_rewritten") if name == "swin_t" else _export(name, tmp_path)
    assert exp.contract["passed"]
    for op in ("Shape", "ConstantOfShape", "Range", "ScatterND", "NonZero"):
        assert op not in exp.op_counts, op
    # Swin at 224 divides by its windows: no Pad at all; ViT keeps one (the class-token prepend)
    assert exp.op_counts.get("Pad", 0) == (1 if name == "vit_s" else 0)


@pytest.mark.slow
def test_rewritten_swin_t_is_smaller_than_naive(tmp_path, swin_t_rewritten):
    import onnxslim
    raw = _export("swin_t", tmp_path / "raw", rewrites=False, simplify=False)
    slim = onnxslim.slim(onnx.load(str(raw.path)))  # what the exporter's simplification makes of the naive export
    ours = swin_t_rewritten
    assert ours.num_nodes < len(slim.graph.node) <= raw.num_nodes
    # the raw upstream export carries Pads that pad nothing; the checker names them
    assert not raw.contract["passed"] and any("Pad that pads nothing" in v for v in raw.contract["violations"])


def test_dynamic_batch_export_is_shape_free(tmp_path):
    exp = _export("digits_swin", tmp_path, dynamic=True)
    model = onnx.load(str(exp.path))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and exp.contract["passed"]


def _graph(nodes, inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(inits)))


def test_violation_names_the_node():
    g = _graph([helper.make_node("Shape", ["x"], ["s"], name="my_shape"),
                helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)])
    with pytest.raises(UserError, match="Shape node 'my_shape'"):
        check_contract(g, "toy")


def test_gather_over_constant_table_and_noop_pad_are_caught():
    table = helper.make_tensor("table", TensorProto.FLOAT, [3, 4], [0.0] * 12)
    idx = helper.make_tensor("idx", TensorProto.INT64, [2], [0, 2])
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 0, 0, 0])
    g = _graph([helper.make_node("Gather", ["table", "idx"], ["t"], name="bias_gather"),
                helper.make_node("Pad", ["x", "pads"], ["p"], name="noop_pad"),
                helper.make_node("Add", ["p", "t"], ["y"])], [table, idx, pads])
    bad = contract_violations(g)
    assert any("bias_gather" in b and "constant table" in b for b in bad)
    assert any("noop_pad" in b for b in bad)


def test_real_pad_and_activation_gather_are_allowed():
    idx = helper.make_tensor("idx", TensorProto.INT64, [1], [0])
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 0])
    g = _graph([helper.make_node("Pad", ["x", "pads"], ["p"]),
                helper.make_node("Gather", ["p", "idx"], ["y"], axis=1)], [idx, pads])
    assert contract_violations(g) == []
