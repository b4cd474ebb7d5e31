"""One validation layer for values (runtime/values.py): every numeric flag of every CLI refuses NaN, infinities,
values outside its range and garbage before any work, in one line that names the flag, exit 2; the Python APIs
apply the same rules."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import values
from runtime.errors import UserError
from tests.conftest import cli_in_process

# every CLI and subcommand, with positionals that would otherwise be valid enough to reach the flags
COMMANDS = {
    "exporters": ["digits_vit"],
    "runtime": ["BUNDLE", "img.png"], "runtime bench": ["BUNDLE"], "runtime build": ["BUNDLE"],
    "runtime verify": ["BUNDLE"],
    "benchmarks": ["digits_vit"], "benchmarks rewrites": ["digits_vit"], "benchmarks ort-int8": [],
    "benchmarks compare": ["a.json", "b.json"], "benchmarks vs-naive": ["digits_vit"],
    "benchmarks op-profile": ["digits_vit"], "benchmarks eval": ["BUNDLE", "--data", "D"],
    "benchmarks drift": ["BUNDLE"],
}


class _Parsed(Exception):
    pass


def _parser_of(command: str, monkeypatch) -> values.Parser:
    """The parser a command builds, caught at ``parse_args`` (nothing runs)."""
    import importlib
    module, *sub = command.split()
    main = importlib.import_module(f"{module}.__main__")
    monkeypatch.setattr(values.Parser, "parse_args", lambda self, *a, **k: (_ for _ in ()).throw(_Parsed(self)))
    try:
        (main._main if module == "exporters" else main._dispatch)(sub + COMMANDS[command])
    except _Parsed as got:
        return got.args[0]
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{command} built no values.Parser")


def numeric_flags(monkeypatch) -> list[tuple[str, str, object]]:
    out = []
    for command in COMMANDS:
        for action in _parser_of(command, monkeypatch)._actions:
            if action.option_strings and hasattr(action.type, "lo"):
                out.append((command, action.option_strings[0], action.type))
    return out


def test_every_numeric_flag_of_every_cli_goes_through_the_validation_layer(monkeypatch):
    """No ``type=int`` / ``type=float`` left: a flag that takes a number takes it through runtime/values.py."""
    for command in COMMANDS:
        for action in _parser_of(command, monkeypatch)._actions:
            assert action.type not in (int, float), f"{command} {action.option_strings}: bare {action.type.__name__}"
    flags = numeric_flags(monkeypatch)
    assert len(flags) >= 30 and ("exporters", "--max-drop", values.POINTS) in flags


def bad_values(kind) -> st.SearchStrategy[str]:
    """Values the flag must refuse: non-finite, garbage, and numbers just outside and far outside its range."""
    hi, lo = kind.hi, kind.lo
    out = [st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "", "ten", "0x10", "1,5"])]
    below = st.integers(max_value=lo - 1) if kind.whole else st.floats(max_value=lo, exclude_max=not kind.lo_open,
                                                                        allow_nan=False, allow_infinity=False)
    out.append(below.map(str))
    if hi is not None:
        above = st.integers(min_value=hi + 1) if kind.whole else st.floats(min_value=hi, exclude_min=True,
                                                                            allow_nan=False, allow_infinity=False)
        out.append(above.map(str))
    if kind.whole:
        out.append(st.sampled_from(["1.5", "2e3"]))
    return st.one_of(out)


@pytest.fixture(scope="module")
def flags():
    mp = pytest.MonkeyPatch()
    try:
        return numeric_flags(mp)
    finally:
        mp.undo()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_numbers_are_one_line_exit_2_and_write_nothing(flags, tmp_path, capsys, data):
    command, flag, kind = data.draw(st.sampled_from(flags))
    value = data.draw(bad_values(kind))
    module, *sub = command.split()
    out = tmp_path / "o"
    code, _, err = cli_in_process(capsys, module, *sub, *COMMANDS[command], f"{flag}={value}", "--out", out)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (command, flag, value, err)
    assert f"argument {flag}" in lines[0] or f"argument {flag.split('=')[0]}" in lines[0], (flag, lines)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("flag, value, message", [
    ("--max-drop", "nan", "argument --max-drop: must be a finite number in [0, 100] (got nan)"),
    ("--min-cosine", "0", "argument --min-cosine: must be a finite number in (0, 1] (got 0)"),
    ("--batch", "100000", "argument --batch: must be in [1, 1024] (got 100000)"),
    ("--threads", "5000", "argument --threads: must be in [1, 4096] (got 5000)"),
    ("--runs", "1e3", "argument --runs: must be a whole number in [1, 100000] (got '1e3')"),
])
def test_messages_name_the_flag_and_the_range(tmp_path, capsys, flag, value, message):
    code, _, err = cli_in_process(capsys, "exporters", "digits_vit", flag, value, "--out", tmp_path / "o")
    assert code == 2 and message in err, err


def test_the_python_apis_apply_the_same_rules(tmp_path):
    import exporters
    import runtime
    for kw, message in (({"batch": 0}, "batch must be in [1, 1024] (got 0)"),
                        ({"max_drop": float("nan")}, "max_drop must be a finite number in [0, 100] (got nan)"),
                        ({"threads": 10_000}, "threads must be in [1, 4096] (got 10000)"),
                        ({"runs": True}, "runs must be in [1, 100000] (got True)")):
        with pytest.raises(exporters.ExportError, match=message.replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)").replace("]", r"\]")):
            exporters.export("digits_vit", out=tmp_path, **kw)
    with pytest.raises(UserError, match="threads must be in"):
        runtime.open(Path(tmp_path), threads=0)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text, suffix, message", [
    ("a\nb\na\n", ".txt", "label 'a' is given twice (classes 0 and 2)"),
    ('{"0": "a", "2": "c"}', ".json", "needs the keys 0..1 exactly (missing 1)"),
    ('{"0": "a", "x": "c"}', ".json", "keys that are not indices"),
    ('["a", "b\\nc"]', ".json", "holds a control character"),
    ('["a", ""]', ".json", "label 1 is empty"),
    ('["a", null]', ".json", "label 1 is NoneType"),
])
def test_labels_that_lie_are_one_line(tmp_path, text, suffix, message):
    from exporters.models.saved import read_labels
    p = tmp_path / f"labels{suffix}"
    p.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        read_labels(p)


def test_dense_json_labels_keep_their_order(tmp_path):
    from exporters.models.saved import read_labels
    (tmp_path / "l.json").write_text('{"1": "one", "0": "zero", "2": "two"}')
    assert read_labels(tmp_path / "l.json") == ["zero", "one", "two"]


def test_duplicate_labels_from_the_cli_are_exit_2(tmp_path, capsys):
    names = [str(i) for i in range(9)] + ["0"]
    (tmp_path / "labels.txt").write_text("\n".join(names))
    code, _, err = cli_in_process(capsys, "exporters", "digits_vit", "--labels", tmp_path / "labels.txt",
                                  "--out", tmp_path / "o")
    assert code == 2 and "label '0' is given twice (classes 0 and 9)" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_threads_above_the_usable_cores_are_clamped_with_a_warning(capsys):
    cores = values.usable_cores()
    assert values.threads(str(cores + 7)) == cores
    assert f"{cores + 7} threads asked for, {cores} usable core(s) here: using {cores}" in capsys.readouterr().err
    assert values.threads("1") == 1


@pytest.mark.parametrize("images, message", [
    ([], "no images given"),
    ([None], "image 0 is NoneType"),
    ([b"\x89PNG"], "image 0 is bytes"),
    ([np.zeros((32, 32, 3), np.float32)], "arrays must be uint8 [H, W, 3] (got float32 [32, 32, 3])"),
    ([np.zeros((3, 32, 32), np.uint8)], "channels first? transpose to [H, W, 3]"),
    (42, "images must be a list"),
])
def test_predict_refuses_what_is_not_an_image_in_one_line(digits_bundles, images, message):
    import runtime
    out, _ = digits_bundles
    with runtime.open(out / "digits_vit", target="onnxruntime", precision="fp32") as s:
        with pytest.raises(UserError) as exc:
            s.predict(images)
        assert message in str(exc.value)


def test_predict_takes_one_path_as_one_image(digits_bundles, tmp_path):
    from PIL import Image

    import runtime
    out, _ = digits_bundles
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    with runtime.open(out / "digits_vit", target="onnxruntime", precision="fp32") as s:
        one, listed = s.predict(str(tmp_path / "x.png")), s.predict([tmp_path / "x.png"])
    assert len(one) == 1 and one[0].indices == listed[0].indices


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path, capsys):
    """The bound on --batch is the machine's: activations per sample are measured on a batch-1 forward pass."""
    from exporters.models.memory import ACTIVATION_COPIES, check_batch
    from exporters.models.zoo import create_model
    model, spec = create_model("digits_vit")
    est = check_batch(model, spec.input_shape, 8, available=1 << 40)
    assert est["activation_bytes_per_sample"] > 0 and est["need_bytes"] > est["weight_bytes"]
    # more samples need more memory, by the measured activations per sample
    assert check_batch(model, spec.input_shape, 16, available=1 << 40)["need_bytes"] - est["need_bytes"] == \
        ACTIVATION_COPIES * 8 * est["activation_bytes_per_sample"]
    with pytest.raises(UserError, match=r"--batch 512 needs about .* use --batch \d+ or less"):
        check_batch(model, spec.input_shape, 512, available=est["need_bytes"])
    # swin_t at the largest batch the flag takes: hundreds of GiB of activations on any machine of ours
    out = tmp_path / "o"
    code, _, err = cli_in_process(capsys, "exporters", "swin_t", "--batch", "1024", "--out", out, "--quiet")
    assert code == 2 and "--batch 1024 needs about" in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())
