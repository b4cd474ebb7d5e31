"""Several input sizes: which sizes a model takes, one bundle holding each, and the runtime serving each size."""
import json
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

import runtime
from runtime import values
from runtime.errors import UserError

SIZES = [(32, 32), (48, 48)]


def test_img_size_flag_parses_one_several_and_non_square():
    assert values.img_sizes("384") == [(384, 384)]
    assert values.img_sizes("224,384") == [(224, 224), (384, 384)]
    assert values.img_sizes("800x1344") == [(800, 1344)]
    assert values.img_sizes([224, (512, 1024)]) == [(224, 224), (512, 1024)]
    for bad in ("224,224", "0", "3x", "a", []):
        with pytest.raises(UserError):
            values.check("img_size", bad, values.img_sizes)


def _windows(model):
    return [tuple(stage.blocks[0].window_size) for stage in model.layers]


def test_swin_keeps_its_windows_where_they_tile_and_scales_them_where_not():
    import timm

    from exporters.models.sizes import model_at_size
    from exporters.models.zoo import create_model
    model, spec = create_model("swin_t")
    big, big_spec = model_at_size(model, spec, (448, 448), "swin_t")
    assert _windows(big) == [(7, 7)] * 4 and big_spec.input_shape == (3, 448, 448)
    assert big_spec.preprocessing.input_size == (448, 448) and _windows(model) == [(7, 7)] * 4  # original untouched
    r384, _ = model_at_size(model, spec, (384, 384), "swin_t")
    assert _windows(r384) == [(12, 12)] * 4  # timm's 384 fine-tunes' window
    twin = timm.create_model("swin_tiny_patch4_window7_224")
    twin.load_state_dict(model.state_dict())
    twin.set_input_size(img_size=(384, 384))  # what timm itself makes of the same weights at 384
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(r384(x), twin.eval()(x))
    wide, _ = model_at_size(model, spec, (224, 448), "swin_t")  # non-square: the trained 7 tiles both sides
    with torch.no_grad():
        assert wide(torch.randn(1, 3, 224, 448)).shape == (1, 1000)
    with pytest.raises(UserError, match=r"--img-size 250 does not fit swin_t: .*padding.*nearest sizes that do: 224, 256"):
        model_at_size(model, spec, (250, 250), "swin_t")


def test_vit_takes_multiples_of_its_patch_only():
    from exporters.models.sizes import model_at_size
    from exporters.models.zoo import create_model
    model, spec = create_model("digits_vit")
    r, _ = model_at_size(model, spec, (48, 48), "digits_vit")
    assert r.pos_embed.shape[1] == 1 + 12 * 12
    with pytest.raises(UserError, match="not a multiple of the 4-px patch; nearest sizes that do: 32, 36"):
        model_at_size(model, spec, (34, 34), "digits_vit")


def test_a_size_that_does_not_fit_is_one_line_before_any_work(tmp_path, capsys):
    from tests.conftest import cli_in_process
    code, out, err = cli_in_process(capsys, "exporters", "digits_swin", "--img-size", "32,36", "--out", tmp_path)
    assert code == 2 and err.strip().count("\n") == 0 and "nearest sizes that do: 32, 40" in err
    assert "Traceback" not in err and not (tmp_path / "digits_swin").exists()


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    """digits_swin at 32 and 48 px, OpenVINO INT8, one bundle.

    # reason: OpenVINO only. At 48 px the model (trained at 32) is out of its distribution (top-1 44 %), its logits
    # are flat and ONNX Runtime INT8 flips 6 of 539 samples where the gate allows 5: an honest failure, not one
    # this test is about."""
    from exporters import export
    out = tmp_path_factory.mktemp("sized")
    report = export("digits_swin", targets="openvino", precision="int8", img_size=SIZES,
                    out=out, runs=5)
    return out / "digits_swin", report


def _reference(size, images):
    from exporters.models.sizes import model_at_size
    from exporters.models.zoo import create_model
    from runtime.preprocess import preprocess_batch
    model, spec = create_model("digits_swin")
    if size != (32, 32):
        model, spec = model_at_size(model, spec, size, "digits_swin")
    x = preprocess_batch(images, spec.preprocessing)
    with torch.no_grad():
        return x, model(torch.from_numpy(x)).numpy()


def _cosines(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_one_bundle_holds_every_size_and_each_passes_its_gates(sized):
    bundle, report = sized
    sizes = json.loads((bundle / "sizes.json").read_text())
    assert [tuple(e["input_size"]) for e in sizes["sizes"]] == SIZES
    assert report.sizes == ["32x32", "48x48"]
    for size in report.sizes:
        row = report.result("openvino", "int8", size)
        assert row["passed"] is True, (size, row.get("failures"))
        manifest = json.loads((bundle / size / "manifest.json").read_text())
        assert manifest["input"]["shape"][-2:] == [int(v) for v in size.split("x")]
    md = (bundle / "report.md").read_text()
    assert "Per input size" in md and "| 32x32 | 48x48 |" in md
    assert (bundle / "plot_latency_vs_size.png").stat().st_size > 1000


def test_runtime_serves_each_size_with_its_own_artefact(sized):
    from PIL import Image

    from calibration.digits import digits_subset
    bundle, _ = sized
    images = list(digits_subset("holdout")[0][:16])
    with runtime.open(bundle, target="openvino") as s:
        for size in SIZES:
            x, ref = _reference(size, images)
            got = s.logits(x)  # a preprocessed tensor goes to the artefact of its size
            assert s.last.manifest.input.shape[-2:] == list(size)
            assert _cosines(got, ref).min() > 0.99 and (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
        with pytest.raises(UserError, match="no artefact takes 40x40 inputs; the bundle's sizes: 32x32, 48x48"):
            s.logits(np.zeros((1, 3, 40, 40), np.float32))
        pics = [Image.fromarray(images[0]).resize((48, 48)), Image.fromarray(images[1]).resize((44, 40))]
        preds = s.predict(pics, topk=1)
        assert preds[0].served == "48x48 artefact (the input's size)"
        assert preds[1].served == "48x48 artefact (nearest declared size to the 40x44 image; resized)"
    with runtime.open(bundle, size=32) as one:  # one size asked for: a plain session
        assert one.manifest.input.shape[-2:] == [32, 32]


def test_verify_and_bench_go_through_every_size(sized, capsys):
    from tests.conftest import cli_in_process
    bundle, _ = sized
    code, out, _ = cli_in_process(capsys, "runtime", "verify", bundle)
    assert code == 0 and "input 32x32" in out and "input 48x48" in out and out.count("| openvino int8 |") == 2
    code, out, _ = cli_in_process(capsys, "runtime", "bench", bundle, "--runs", "3", "--warmup", "1")
    assert code == 0 and out.startswith("32x32 openvino int8") and "\n48x48 openvino int8" in out
    code, out, _ = cli_in_process(capsys, "runtime", "bench", bundle, "--size", "48", "--runs", "3", "--warmup", "1",
                                  "--throughput", "--seconds", "0.2")  # the throughput reopen keeps the size asked
    assert code == 0 and out.startswith("openvino int8 batch 1") and "throughput mode:" in out


def test_a_changed_size_manifest_is_refused_and_a_signature_covers_every_size(sized, tmp_path):
    from runtime import signing
    from tests.test_signing import key_pair
    bundle, _ = sized
    copy = shutil.copytree(bundle, tmp_path / "b")
    private, public = key_pair(tmp_path, "k")
    signing.sign_bundle(copy, private)
    with runtime.open(copy, trust=public) as s:
        assert s.signed_by and s.logits(np.zeros((1, 3, 48, 48), np.float32)).shape == (1, 10)
    m = copy / "48x48" / "manifest.json"
    m.write_text(m.read_text().replace('"digits_swin"', '"digits_swim"', 1))
    with pytest.raises(UserError, match="48x48/manifest.json"):  # the signature names the changed file
        runtime.open(copy, trust=public)
    with runtime.open(copy) as s:  # no trust key: sizes.json's hash catches it
        with pytest.raises(UserError, match="sha256 mismatch for 48x48/manifest.json"):
            s.logits(np.zeros((1, 3, 48, 48), np.float32))


def test_runtime_build_on_a_size_set_records_each_engine_and_keeps_the_hash_chain(sized, tmp_path, monkeypatch,
                                                                                   capsys):
    """The engine build itself needs a GPU; what is ours is the walk over sizes and the sizes.json update. The
    builder is replaced by one that records a file in the size's manifest, as the real one does."""
    import runtime.backends.tensorrt as trt_backend
    from runtime.manifest import read_manifest, sha256_file
    from tests.conftest import cli_in_process
    bundle, _ = sized
    copy = shutil.copytree(bundle, tmp_path / "b")
    built = []

    def fake_build(sub, precision=None, workspace_gb=4.0, lib="tensorrt", trust=None):
        m = read_manifest(sub)
        (sub / "engines").mkdir(exist_ok=True)
        engine = sub / "engines" / f"{lib}-int8.engine"
        engine.write_bytes(b"engine for " + sub.name.encode())
        m.sha256["engines/" + engine.name] = sha256_file(engine)
        m.write(sub)
        built.append(sub.name)
        return engine
    monkeypatch.setattr(trt_backend, "build_bundle_engine", fake_build)
    code, out, _ = cli_in_process(capsys, "runtime", "build", copy, "--size", "48")
    assert code == 0 and built == ["48x48"] and out.count("engine: ") == 1
    code, out, _ = cli_in_process(capsys, "runtime", "build", copy)
    assert code == 0 and built == ["48x48", "32x32", "48x48"]
    with runtime.open(copy) as s:  # sizes.json carries the new manifests' hashes: every size still opens
        for hw in SIZES:
            assert s.logits(np.zeros((1, 3, *hw), np.float32)).shape == (1, 10)
    code, _, err = cli_in_process(capsys, "runtime", "build", copy, "--size", "64")
    assert code == 2 and "no 64x64 artefacts; its sizes: 32x32, 48x48" in err


# --- what a hostile round found (issue: proof that can't be fooled) ---------------------------------------------

def test_a_size_set_is_a_bundle_of_ours_and_is_replaced_by_a_new_export(sized, tmp_path, capsys):
    from runtime.staging import is_bundle, staged_bundle
    from tests.conftest import cli_in_process
    bundle, _ = sized
    out = tmp_path / "o"
    shutil.copytree(bundle, out / "digits_swin")
    assert is_bundle(out / "digits_swin")
    with staged_bundle(out, "digits_swin") as work:  # what a second multi-size run commits through
        (work / "sizes.json").write_text((bundle / "sizes.json").read_text())
    code, _, err = cli_in_process(capsys, "exporters", "digits_swin", "--out", out, "--runs", "2", "--quiet")
    assert code == 0, err  # a single-size export replaces it too
    assert (out / "digits_swin" / "manifest.json").is_file() and not (out / "digits_swin" / "sizes.json").exists()


def test_every_size_is_checked_before_any_is_relaid(tmp_path, capsys, monkeypatch):
    import exporters.pipeline.multisize as multisize
    from tests.conftest import cli_in_process
    relaid = []
    monkeypatch.setattr(multisize, "model_at_size", lambda *a, **k: relaid.append(a) or (_ for _ in ()).throw(
        AssertionError("re-laid before every size was checked")))
    sizes = ",".join(str(s) for s in range(32, 32 + 16 * 14, 16)) + ",33"  # 15 that fit, the last one does not
    code, _, err = cli_in_process(capsys, "exporters", "digits_swin", "--img-size", sizes, "--out", tmp_path / "o")
    assert code == 2 and "--img-size 33 does not fit" in err and relaid == [] and not (tmp_path / "o").exists()
    many = ",".join(str(s) for s in range(32, 32 + 16 * 17, 16))
    code, _, err = cli_in_process(capsys, "exporters", "digits_swin", "--img-size", many, "--out", tmp_path / "o")
    assert code == 2 and "names 17 sizes; one bundle holds at most 16" in err


@pytest.mark.parametrize("model, size", [("digits_swin", "4096"), ("digits_vit", "8192")])
def test_a_size_that_cannot_fit_in_memory_is_refused_from_shapes(model, size, tmp_path, capsys):
    import time

    from tests.conftest import cli_in_process
    t0 = time.perf_counter()
    code, _, err = cli_in_process(capsys, "exporters", model, "--img-size", size, "--out", tmp_path / "o")
    assert code == 2 and "GiB is available here" in err and "Traceback" not in err, err
    assert time.perf_counter() - t0 < 60 and not (tmp_path / "o").exists()


def test_a_size_with_no_fitting_neighbour_says_so_and_tiny_sizes_name_theirs(capsys, tmp_path):
    from tests.conftest import cli_in_process
    code, _, err = cli_in_process(capsys, "exporters", "digits_swin", "--img-size", "1", "--out", tmp_path / "o")
    assert code == 2 and re.search(r"nearest sizes that do: \d+, \d+$", err.strip()), err


@pytest.mark.parametrize("bad", [[0, 48], [-32, 48], [48, 9000]])
def test_a_size_list_with_an_impossible_size_is_refused(bad, sized, tmp_path, capsys):
    from tests.conftest import cli_in_process
    bundle, _ = sized
    copy = shutil.copytree(bundle, tmp_path / "b")
    s = json.loads((copy / "sizes.json").read_text())
    s["sizes"][1]["input_size"] = bad
    (copy / "sizes.json").write_text(json.dumps(s))
    code, _, err = cli_in_process(capsys, "runtime", "verify", copy)
    assert code == 2 and "not a valid vitdeploy size list" in err and "Traceback" not in err, err


def test_swapped_size_entries_are_refused_not_served_under_the_wrong_name(sized, tmp_path):
    bundle, _ = sized
    copy = shutil.copytree(bundle, tmp_path / "b")
    s = json.loads((copy / "sizes.json").read_text())
    a, b = s["sizes"]
    a["bundle"], b["bundle"] = b["bundle"], a["bundle"]
    a["manifest_sha256"], b["manifest_sha256"] = b["manifest_sha256"], a["manifest_sha256"]
    (copy / "sizes.json").write_text(json.dumps(s))
    with runtime.open(copy, target="openvino") as sess:
        with pytest.raises(UserError, match="names 48x48 for 32x32 inputs, but its manifest takes 48x48"):
            sess.logits(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.parametrize("kw, match", [({"threads": 0}, "threads"), ({"verify": "bogus"}, "verify must be one of"),
                                       ({"mode": "bogus"}, "unknown mode"), ({"target": "nosuch"}, "unknown target"),
                                       ({"precision": "int4"}, "precision must be one of")])
def test_a_size_set_refuses_bad_arguments_when_opened(kw, match, sized):
    bundle, _ = sized
    with pytest.raises(UserError, match=match):
        runtime.open(bundle, **kw)


def test_a_pack_of_one_size_keeps_its_hash_chain_and_serves_it(sized, tmp_path, capsys):
    from tests.conftest import cli_in_process
    bundle, _ = sized
    code, out, err = cli_in_process(capsys, "runtime", "pack", bundle, "--out", tmp_path / "p", "--size", "48")
    assert code == 0 and out.count("48x48: openvino int8") == 1, err
    sizes = json.loads((tmp_path / "p" / "sizes.json").read_text())
    assert [tuple(e["input_size"]) for e in sizes["sizes"]] == [(48, 48)]
    code, out, err = cli_in_process(capsys, "runtime", "verify", tmp_path / "p")
    assert code == 0 and "input 48x48" in out and "32x32" not in out, err
    with runtime.open(tmp_path / "p") as s:
        assert s.logits(np.zeros((1, 3, 48, 48), np.float32)).shape == (1, 10)


def test_the_sizes_share_one_copy_of_their_weights(sized, tmp_path):
    bundle, _ = sized
    import onnx
    shared = json.loads((bundle / "report.json").read_text())["shared_weights"]
    assert shared["after"] < 0.8 * shared["before"]
    assert sorted(p.name for p in (bundle / "shared").iterdir()) == [
        "model-32x32.onnx", "model-48x48.onnx", "onnx.data", "openvino-int8.bin"]
    for size in ("32x32", "48x48"):
        assert not list((bundle / size).glob("*.bin")) and not list((bundle / size).glob("*.onnx"))
        manifest = json.loads((bundle / size / "manifest.json").read_text())
        art = next(a for a in manifest["artifacts"] if a["target"] == "openvino")
        assert art["weights_file"] == "../shared/openvino-int8.bin" and manifest["onnx"] == f"../shared/model-{size}.onnx"
    # the ONNX weights once; each size adds only its own attention bias (in this tiny model, folded whole below
    # onnxslim's limit, 0.33 MB at 48 px against 0.98 MB of weights)
    one = onnx.load(str(bundle / "shared" / "model-32x32.onnx"), load_external_data=True)
    own = sum(len(t.raw_data) for t in one.graph.initializer)
    assert (bundle / "shared" / "onnx.data").stat().st_size < 1.4 * own
    # the INT8 IRs share what NNCF leaves alike (SmoothQuant scales weights by each size's activations)
    offsets = [{d.get("offset") for d in ET.parse(bundle / size / "openvino-int8.xml").iter("data") if d.get("offset")}
               for size in ("32x32", "48x48")]
    assert len(offsets[0] & offsets[1]) >= 10
    import onnxruntime as ort
    x = np.random.default_rng(0).random((1, 3, 48, 48), dtype=np.float32)
    ran = ort.InferenceSession(str(bundle / "shared" / "model-48x48.onnx"), providers=["CPUExecutionProvider"])
    with runtime.open(bundle / "48x48") as s:  # one size's folder, opened inside its bundle
        assert _cosines(ran.run(None, {ran.get_inputs()[0].name: x})[0], s.logits(x)).min() > 0.99
    alone = tmp_path / "alone"
    shutil.copytree(bundle / "32x32", alone)  # one size's folder without the bundle it shares weights with
    with pytest.raises(UserError, match="shares its weights with the other sizes"):
        runtime.open(alone)


def test_an_options_error_in_a_multi_size_run_is_refused_before_any_model_is_built(tmp_path, monkeypatch):
    import exporters.pipeline.multisize
    import exporters.pipeline.stages
    from exporters import export

    def built(*a, **k):
        raise AssertionError("a model was built before the options were checked")
    for stage in (exporters.pipeline.stages, exporters.pipeline.multisize):  # where the pipeline builds models
        monkeypatch.setattr(stage, "create_model", built)
    with pytest.raises(UserError, match="--recipe applies to"):  # a recipe for an FP32-only run
        export("digits_swin", targets="openvino", precision="fp32", img_size=SIZES, out=tmp_path, recipe="auto")
    with pytest.raises(UserError, match="io-fp16|io_fp16"):  # a TensorRT flag, no TensorRT target
        export("digits_swin", targets="openvino", img_size=SIZES, out=tmp_path, io_fp16=True)
    assert not any(tmp_path.iterdir())


def test_the_sizes_share_one_copy_of_their_int8_weights(sized):
    """Each size's INT8 weights are quantized from the weights alone (SmoothQuant off in a bundle of several sizes),
    so every INT8 constant of one size's IR points at the same bytes as the other's: stored once."""
    bundle, report = sized

    def int8_consts(size):
        return [(d.get("offset"), d.get("size")) for d in ET.parse(bundle / size / "openvino-int8.xml").iter("data")
                if d.get("element_type") == "i8" and d.get("offset")]
    small, large = int8_consts("32x32"), int8_consts("48x48")
    assert len(small) >= 10 and sorted(small) == sorted(large)
    assert all(r["passed"] for r in report.results)
    notes = " ".join(n for r in report.results if r["target"] == "openvino" for n in r.get("notes", []))
    assert "SmoothQuant off" in notes
