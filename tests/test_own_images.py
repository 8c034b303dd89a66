"""--dataset PATH: the user's own images as a folder of class folders (with or without train/ and test/) or an
.npz, decoded once into a cache, searched, retrained and exported with their class names; bad data refused."""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train.userdata as userdata
from search import run as run_cmd
from search.storage import open_storage
from search.study import load_study, stored_settings
from tests.search_helpers import call, last_error_line, one_error_line, write_cifar_batches
from tests.test_readme import README, blocks
from train import run as train_run
from train.data import ImageData, load_cifar10, load_dataset, make_synthetic
from train.deploy import read_onnx
from train.userdata import fit_image

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# A digits-size search: one trained candidate (seed003_net, the presets over 100k parameters rejected), one
# epoch each for it and the final retrain.
FAST = ["--trials", "1", "--batch-size", "16", "--trial-epochs", "1", "--final-epochs", "1", "--max-params", "100000", "--quiet"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache folder (never the user's ~/.cache)."""
    monkeypatch.setenv("TINYNAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cifar_like(n_train: int = 300, n_test: int = 100) -> ImageData:
    """A few hundred learnable 32 x 32 images under CIFAR-10's class names."""
    d = make_synthetic(n_train, n_test, num_classes=10, seed=3)
    return ImageData("cifar10", d.x_train, d.y_train, d.x_test, d.y_test, CIFAR_CLASSES)


def write_folder(root: Path, data: ImageData) -> Path:
    """data as root/train/CLASS/NNNNN.png and root/test/CLASS/NNNNN.png, NNNNN the image's index in its part
    (so the folder's order, class then file name, is the parts' order sorted stably by label)."""
    for part, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / part / data.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return root


def by_label(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


def search(tmp_path: Path, dataset: Path, capsys, *flags: str) -> tuple[int, str, str]:
    argv = ["--dataset", str(dataset), "--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "out"), *FAST, *flags]
    return call(run_cmd.main, argv, capsys)


def test_a_folder_of_cifar_pngs_loads_bit_for_bit_what_the_batches_and_the_npz_hold(tmp_path):
    data = cifar_like()
    known = load_cifar10(write_cifar_batches(tmp_path / "cifar" / "cifar-10-batches-py", data).parent, download=False)
    folder = load_dataset(str(write_folder(tmp_path / "pngs", data)), None)
    np.savez(tmp_path / "arrays.npz", x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
             y_test=data.y_test, classes=np.array(CIFAR_CLASSES))
    npz = load_dataset(str(tmp_path / "arrays.npz"), None)
    assert folder.classes == npz.classes == known.classes == CIFAR_CLASSES
    for part in ("train", "test"):
        expected = by_label(getattr(known, f"x_{part}"), getattr(known, f"y_{part}"))
        np.testing.assert_array_equal(getattr(folder, f"x_{part}"), expected[0])
        np.testing.assert_array_equal(getattr(folder, f"y_{part}"), expected[1])
        np.testing.assert_array_equal(getattr(npz, f"x_{part}"), getattr(known, f"x_{part}"))
        np.testing.assert_array_equal(getattr(npz, f"y_{part}"), getattr(known, f"y_{part}"))
    np.testing.assert_allclose(folder.mean, known.mean)  # the same images: the same normalisation


def test_a_search_on_a_cifar_png_folder_exports_and_reports_its_class_names(tmp_path, capsys):
    root = write_folder(tmp_path / "pngs", cifar_like())
    code, out, err = search(tmp_path, root, capsys)
    assert code == 0, err
    assert "study pngs-nas (new)" in out  # the study is named after the folder
    o = tmp_path / "out"
    model_py = (o / "best_model.py").read_text()
    assert f"CLASSES = {CIFAR_CLASSES!r}" in model_py
    assert read_onnx(o / "best_model.onnx").classes == CIFAR_CLASSES
    assert read_onnx(o / "best_model.int8.onnx").classes == CIFAR_CLASSES
    report = (o / "report.md").read_text()
    assert all(c in report for c in CIFAR_CLASSES) and "images per class (training / test)" in report
    final = json.loads((o / "final.json").read_text())
    assert final["classes"] == list(CIFAR_CLASSES) and sum(final["train_counts"]) == 300 and final["n_test"] == 100
    study = load_study(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "pngs-nas")
    assert stored_settings(study).dataset == str(root.resolve())
    assert study.user_attrs["normalisation"]["classes"] == list(CIFAR_CLASSES)


def write_mixed(root: Path, per_kind: int = 4) -> Path:
    """3 classes, each of four kinds of file: 64 x 64 RGB PNG, 20 x 24 grayscale JPEG named .JPG, RGBA PNG,
    palette PNG; each class a brightness of its own, so that the net has something to learn."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ants", "bees", "wasps")):
        folder = root / name
        folder.mkdir(parents=True)
        level = 40 + 80 * c
        for i in range(per_kind):
            noise = lambda *shape: np.clip(level + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)  # noqa: E731
            Image.fromarray(noise(64, 64, 3)).save(folder / f"rgb{i}.png")
            Image.fromarray(noise(24, 20), "L").save(folder / f"grey{i}.JPG", format="JPEG")
            Image.fromarray(np.dstack([noise(32, 32, 3), np.full((32, 32), 255, np.uint8)]), "RGBA").save(folder / f"rgba{i}.png")
            Image.fromarray(noise(40, 36, 3)).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / f"pal{i}.png")
    return root


def test_mixed_sizes_and_formats_become_32x32_rgb(tmp_path):
    root = write_mixed(tmp_path / "bugs")
    (root / "ants" / "clear.png").parent.mkdir(exist_ok=True)
    clear = np.zeros((8, 8, 4), np.uint8)  # fully transparent black: laid over white, it is white
    Image.fromarray(clear, "RGBA").save(root / "ants" / "clear.png")
    data = load_dataset(str(root), None, test_size=6)
    assert data.classes == ("ants", "bees", "wasps") and data.x_train.shape[1:] == (32, 32, 3)
    assert len(data.y_train) + len(data.y_test) == 3 * 16 + 1 and np.bincount(data.y_test).tolist() == [2, 2, 2]
    grey = np.asarray(userdata._decode(root / "bees" / "grey0.JPG"))
    assert grey.shape == (32, 32, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert (userdata._decode(root / "ants" / "clear.png") == 255).all()


def test_a_3_class_folder_trains_a_3_way_head_whose_exported_code_predicts_3_classes(tmp_path, capsys):
    root = write_mixed(tmp_path / "bugs")
    code, _, err = search(tmp_path, root, capsys, "--batch-size", "4", "--test-size", "6")
    assert code == 0, err
    o = tmp_path / "out"
    spec = importlib.util.spec_from_file_location("exported_bugs", o / "best_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.Net()
    net.load_state_dict(torch.load(o / "best_model.pt", weights_only=True))
    net.eval()
    x = (torch.rand(5, 3, 32, 32) - torch.tensor(module.MEAN).view(1, 3, 1, 1)) / torch.tensor(module.STD).view(1, 3, 1, 1)
    assert module.CLASSES == ("ants", "bees", "wasps") and net(x).shape == (5, 3)
    # README's snippet on a photo of the folder: fit_image, then its two `x = ` lines, then CLASSES[argmax]
    (code,) = [b for b in blocks(README, "python") if "permute" in b]
    scope = {"torch": torch, "img": fit_image(Image.open(root / "bees" / "rgb0.png")), "MEAN": module.MEAN,
             "STD": module.STD}
    for line in (line for line in code.splitlines() if line.startswith("x = ")):
        exec(re.sub(r"\s+#.*$", "", line), scope)
    assert module.CLASSES[net(scope["x"]).argmax(1)] in module.CLASSES and scope["x"].shape == (1, 3, 32, 32)
    final = json.loads((o / "final.json").read_text())
    assert final["n_test"] == 6  # --test-size 6: 2 of each class, carved out, recorded with the study
    study = load_study(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "bugs-nas")
    assert stored_settings(study).test_size == 6


def test_the_second_load_decodes_nothing_and_touching_a_file_decodes_again(tmp_path, monkeypatch):
    root = write_mixed(tmp_path / "bugs", per_kind=2)
    decoded: list[Path] = []
    real = userdata._decode
    monkeypatch.setattr(userdata, "_decode", lambda p: decoded.append(p) or real(p))
    first = load_dataset(str(root), None)
    assert len(decoded) == 24
    second = load_dataset(str(root), None)
    assert len(decoded) == 24  # all from the cache
    np.testing.assert_array_equal(first.x_train, second.x_train)
    st = (root / "bees" / "rgb0.png").stat()
    os.utime(root / "bees" / "rgb0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_dataset(str(root), None)
    assert len(decoded) == 48


def test_hidden_and_non_image_files_are_ignored_and_counted(tmp_path, capsys):
    root = write_mixed(tmp_path / "bugs", per_kind=2)
    for junk in (root / ".DS_Store", root / "README.txt", root / "ants" / "Thumbs.db", root / "bees" / "notes.txt"):
        junk.write_text("not an image")
    (root / "wasps" / ".hidden").mkdir()  # a hidden folder is skipped whole (its x.png is not an image of wasps)
    (root / "wasps" / ".hidden" / "x.png").write_bytes(b"junk")
    data = load_dataset(str(root), None)
    assert len(data.y_train) + len(data.y_test) == 24
    assert "ignored 4 files that are not images" in capsys.readouterr().err


def npz(path: Path, **changes) -> Path:
    arrays = dict(x_train=np.zeros((20, 32, 32, 3), np.uint8), y_train=np.arange(20) % 2,
                  x_test=np.zeros((6, 32, 32, 3), np.uint8), y_test=np.arange(6) % 2)
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def bad_folder(kind: str, root: Path) -> tuple[Path, str]:
    """A broken dataset of one kind and the text its error line must hold."""
    if kind == "missing":
        return root / "nowhere", "no such file or folder"
    if kind == "one_class":
        write_mixed(root, per_kind=1)
        for c in ("bees", "wasps"):
            for f in (root / c).iterdir():
                f.unlink()
            (root / c).rmdir()
        return root, "1 class folder; a dataset needs at least 2"
    if kind == "empty_class":
        write_mixed(root, per_kind=1)
        (root / "moths").mkdir()
        (root / "moths" / "README.txt").write_text("to do")
        return root, "moths: a class folder with no images"
    if kind == "split_classes":
        write_mixed(root / "train", per_kind=1)
        write_mixed(root / "test", per_kind=1)
        (root / "test" / "wasps").rename(root / "test" / "hornets")
        return root, "train/ and test/ hold different class folders (hornets, wasps"
    if kind == "corrupt_image":
        write_mixed(root, per_kind=1)
        (root / "bees" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
        return root, "broken.jpg: cannot be decoded as an image"
    if kind == "too_small":  # 1 training image a class: none left to validate on
        for part in ("train", "test"):
            for c in ("a", "b"):
                (root / part / c).mkdir(parents=True)
                Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(root / part / c / "0.png")
        return root, "cannot hold out"
    root.mkdir()
    cases = {"npz_missing_key": (dict(y_test=None), "no y_test array"),
             "npz_lengths": (dict(y_train=np.arange(19) % 2), "y_train has shape (19,) but x_train holds 20 images"),
             "npz_labels": (dict(y_test=np.array([0, 1, 2, 0, 1, 0]), classes=np.array(["a", "b"])),
                            "y_test has labels outside 0..1"),
             "npz_dtype": (dict(x_train=np.zeros((20, 32, 32, 3), np.float32)), "x_train is float32; it must be uint8"),
             "npz_shape": (dict(x_test=np.zeros((6, 32, 32, 2), np.uint8)), "x_test has shape (6, 32, 32, 2)")}
    changes, text = cases[kind]
    return npz(root / "data.npz", **changes), text


BAD = ["missing", "one_class", "empty_class", "split_classes", "corrupt_image", "too_small", "npz_missing_key",
       "npz_lengths", "npz_labels", "npz_dtype", "npz_shape"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_data_is_one_error_line_exit_2_and_nothing_written(kind, tmp_path, capsys):
    dataset, text = bad_folder(kind, tmp_path / "data")
    code, _, err = search(tmp_path, dataset, capsys, "--batch-size", "2")
    assert code == 2
    one_error_line(err, text)
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt_image", "npz_labels"])
def test_train_run_refuses_bad_data_the_same_way(kind, tmp_path, capsys):
    dataset, text = bad_folder(kind, tmp_path / "data")
    code, _, err = call(train_run.main, ["seed003_net", "--dataset", str(dataset), "--out", str(tmp_path / "out")],
                        capsys)
    assert code == 2
    one_error_line(err, text)
    assert not (tmp_path / "out").exists()


def test_test_size_on_a_dataset_with_its_own_test_set_is_refused(tmp_path, capsys):
    code, _, err = search(tmp_path, npz(tmp_path / "d.npz"), capsys, "--test-size", "0.3")
    assert code == 2
    one_error_line(err, "holds its own test set; leave --test-size out")
    assert not (tmp_path / "s.db").exists()


def test_resuming_after_the_folder_gained_an_image_is_refused_before_anything_is_trained(tmp_path, capsys):
    root = write_mixed(tmp_path / "bugs")
    code, _, err = search(tmp_path, root, capsys, "--batch-size", "4", "--test-size", "6", "--no-final")
    assert code == 0, err
    study = load_study(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "bugs-nas")
    before = len(study.trials)
    Image.new("RGB", (40, 40), (10, 200, 30)).save(root / "ants" / "new.png")
    code, _, err = search(tmp_path, root, capsys, "--batch-size", "4", "--trials", "2", "--no-final")
    assert code == 2, err
    last_error_line(err, "changed since it began (42 training images")
    assert len(load_study(open_storage(f"sqlite:///{tmp_path / 's.db'}"), "bugs-nas").trials) == before
