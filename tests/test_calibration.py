"""Calibration sets: sources, determinism, the content hash, skipped files, errors."""
import numpy as np
import pytest
from PIL import Image

from calibration import content_hash, load_set
from exporters.models.zoo import DIGITS_PREPROCESSING as PP
from runtime.errors import UserError
from runtime.preprocess import Preprocessing


def test_digits_hash_is_deterministic_and_sensitive():
    a = load_set("digits", PP, size=64, seed=0, part="train", progress=False)
    b = load_set("digits", PP, size=64, seed=0, part="train", progress=False)
    assert a.sha256 == b.sha256 and np.array_equal(a.inputs, b.inputs) and a.ids == b.ids
    assert load_set("digits", PP, size=64, seed=1, part="train", progress=False).sha256 != a.sha256
    assert load_set("digits", PP, size=63, seed=0, part="train", progress=False).sha256 != a.sha256
    other_pp = Preprocessing(**{**PP.__dict__, "mean": (0.4, 0.4, 0.4)})
    assert content_hash(a.ids, other_pp, 0) != content_hash(a.ids, PP, 0)


def test_calibration_and_evaluation_splits_do_not_overlap():
    train = load_set("digits", PP, size=None, part="train", progress=False)
    hold = load_set("digits", PP, size=None, part="holdout", progress=False)
    assert not set(train.ids) & set(hold.ids)
    assert len(train) + len(hold) == 1797 and hold.labels is not None


def test_folder_with_class_subfolders_gets_labels(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("3", "7"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.jpg")
    s = load_set(tmp_path, PP, size=None, progress=False)
    assert len(s) == 6 and sorted(set(s.labels.tolist())) == [3, 7]
    assert s.inputs.shape == (6, 3, 32, 32)


def test_npy_npz_and_list_sources(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", imgs)
    np.savez(tmp_path / "b.npz", images=imgs, labels=np.arange(5))
    assert len(load_set(tmp_path / "a.npy", PP, size=None, progress=False)) == 5
    s = load_set(tmp_path / "b.npz", PP, size=3, progress=False)
    assert len(s) == 3 and s.labels is not None
    pre = np.zeros((4, 3, 32, 32), np.float32)
    np.save(tmp_path / "pre.npy", pre)
    assert np.array_equal(load_set(tmp_path / "pre.npy", PP, size=None, progress=False).inputs, pre)
    for i in range(2):
        Image.fromarray(imgs[i]).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("0.png\n# comment\n1.png\n")
    assert len(load_set(tmp_path / "list.txt", PP, size=None, progress=False)) == 2


def test_bad_array_shape(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 7), np.float32))
    with pytest.raises(UserError, match="expected"):
        load_set(tmp_path / "bad.npy", PP, progress=False)


def test_size_zero_is_an_error():
    with pytest.raises(UserError, match="at least 1"):
        load_set("digits", PP, size=0, progress=False)


def test_batches_pad_the_last_one():
    s = load_set("digits", PP, size=5, part="train", progress=False)
    batches = list(s.batches(2))
    assert [b.shape[0] for b in batches] == [2, 2, 2] and np.array_equal(batches[-1][1], s.inputs[-1])


def test_a_stray_image_or_a_foreign_folder_is_named_when_labels_are_dropped(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from calibration.sources import from_folder
    for folder in ("0", "1"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / folder / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "stray.png")
    (tmp_path / "misc").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "misc" / "b.png")
    raw = from_folder(tmp_path, {"0": 0, "1": 1})
    assert raw.labels == [None] * 4
    note = raw.notes[-1]
    assert "labels dropped for the whole set" in note and "stray.png" in note and "misc" in note
    assert "warning: labels dropped" in capsys.readouterr().err


def test_an_unreadable_folder_is_counted_and_named(tmp_path, monkeypatch):
    """A folder os.walk cannot list (PermissionError, simulated: CI runs as root, which reads any folder) is named
    in the notes instead of vanishing, as Path.rglob let it."""
    import os

    import numpy as np
    from PIL import Image

    from calibration.sources import from_folder
    (tmp_path / "ok").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok" / "a.png")
    (tmp_path / "locked").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "locked" / "b.png")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    raw = from_folder(tmp_path, None)
    assert raw.ids == ["ok/a.png"] and "1 folder(s) could not be read" in raw.notes[0] and "locked" in raw.notes[0]
