"""Datasets: the CIFAR-10 file reader (good, damaged and hostile files), archives, splits, digits, synthetic."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from tests.search_helpers import write_cifar_batches
from train.data import (DataError, ImageData, load_cifar10, load_dataset, load_digits32, make_synthetic,
                        train_val_split)


@pytest.fixture
def small() -> ImageData:
    return make_synthetic(n_train=60, n_test=20, seed=3)


@pytest.fixture
def cifar_dir(tmp_path, small):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", small)
    return tmp_path


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def indexed(labels: np.ndarray) -> ImageData:
    """Images whose first two pixels spell their own index, so splits can be traced back."""
    n = len(labels)
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return ImageData("toy", x, np.asarray(labels, np.int64), x[:4], np.asarray(labels[:4], np.int64),
                     tuple(str(c) for c in range(int(max(labels)) + 1)))


def index_of(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 0, 1].astype(np.int64)


# ---------------------------------------------------------------- reading the official format

def test_official_format_round_trips_images_labels_and_classes(cifar_dir, small):
    data = load_cifar10(cifar_dir, download=False)
    assert data.name == "cifar10" and data.classes == small.classes
    assert data.x_train.shape == (60, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.y_train.dtype == np.int64
    np.testing.assert_array_equal(data.x_train, small.x_train)
    np.testing.assert_array_equal(data.y_train, small.y_train)
    np.testing.assert_array_equal(data.x_test, small.x_test)
    np.testing.assert_array_equal(data.y_test, small.y_test)


def test_batch_rows_are_channel_major_like_the_official_files(tmp_path):
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[0, :, :, 0], x[0, :, :, 2] = 10, 30  # red 10, green 0, blue 30
    data = ImageData("toy", x, np.array([0]), x, np.array([0]), ("a",))
    folder = write_cifar_batches(tmp_path / "cifar-10-batches-py", data, n_train_batches=1)
    with open(folder / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][0]
    assert (row[:1024] == 10).all() and (row[1024:2048] == 0).all() and (row[2048:] == 30).all()


def py2_dict(items: dict) -> bytes:
    """A pickle as Python 2 wrote CIFAR-10: keys and names are py2 str (SHORT_BINSTRING opcodes)."""
    def py2_str(s: str) -> bytes:
        return b"U" + bytes([len(s)]) + s.encode("latin1")

    out = [b"\x80\x02}("]
    for key, value in items.items():
        out.append(py2_str(key))
        if isinstance(value, list) and value and isinstance(value[0], str):
            out.append(b"](" + b"".join(py2_str(v) for v in value) + b"e")
        else:
            out.append(pickle.dumps(value, protocol=3)[2:-1])  # the value's opcodes without PROTO and STOP
    return b"".join(out + [b"u."])


def test_python2_str_keys_are_read_like_bytes_keys(tmp_path, small):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = small.x_train.transpose(0, 3, 1, 2).reshape(60, 3072)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]):
        sel = slice(i * 12, (i + 1) * 12)
        (folder / name).write_bytes(py2_dict({"labels": small.y_train[sel].tolist(), "data": rows[sel]}))
    (folder / "test_batch").write_bytes(py2_dict({"labels": small.y_train[:5].tolist(), "data": rows[:5]}))
    (folder / "batches.meta").write_bytes(py2_dict({"label_names": list(small.classes)}))
    data = load_cifar10(tmp_path, download=False)
    np.testing.assert_array_equal(data.x_train, small.x_train)
    assert data.classes == small.classes


def test_truncated_batch_is_refused_with_file_name(cifar_dir):
    path = cifar_dir / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        load_cifar10(cifar_dir, download=False)
    msg = one_line(err)
    assert "data_batch_3" in msg and "truncated" in msg and "delete it" in msg


@pytest.mark.parametrize("payload, name", [
    (b"cos\nsystem\n(S'touch PWNED'\ntR.", "os.system"),
    (b"c__builtin__\neval\n(S'print(1)'\ntR.", "__builtin__.eval"),
    (b"\x80\x02cbuiltins\ngetattr\nq\x00.", "builtins.getattr"),
])
def test_pickle_that_would_run_code_is_refused_without_running_it(cifar_dir, monkeypatch, payload, name):
    monkeypatch.chdir(cifar_dir)
    (cifar_dir / "cifar-10-batches-py" / "data_batch_1").write_bytes(payload)
    with pytest.raises(DataError) as err:
        load_cifar10(cifar_dir, download=False)
    msg = one_line(err)
    assert f"refused to unpickle '{name}'" in msg and "data_batch_1" in msg
    assert not (cifar_dir / "PWNED").exists()


def write_batch(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)


@pytest.mark.parametrize("data, labels, expected", [
    (np.zeros((4, 3072), np.uint8), [0, 1, 2], "4 images but labels"),
    (np.zeros((4, 3072), np.uint8), [0, 1, 2, 10], "labels outside 0..9"),
    (np.zeros((4, 1024), np.uint8), [0, 1, 2, 3], "should be uint8 [N, 3072]"),
    (np.zeros((4, 3072), np.float32), [0, 1, 2, 3], "should be uint8 [N, 3072]"),
])
def test_inconsistent_batch_is_refused_with_reason(cifar_dir, data, labels, expected):
    write_batch(cifar_dir / "cifar-10-batches-py" / "test_batch", data, labels)
    with pytest.raises(DataError) as err:
        load_cifar10(cifar_dir, download=False)
    assert expected in one_line(err) and "test_batch" in str(err.value)


def test_missing_batch_file_is_named(cifar_dir):
    os.remove(cifar_dir / "cifar-10-batches-py" / "data_batch_5")
    with pytest.raises(DataError, match="data_batch_5: file is missing"):
        load_cifar10(cifar_dir, download=False)


# ---------------------------------------------------------------- archive, missing data, download

def make_archive(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_archive_is_extracted_when_folder_is_absent(tmp_path, cifar_dir, small):
    folder = cifar_dir / "cifar-10-batches-py"
    target = tmp_path / "fresh"
    target.mkdir()
    make_archive(target / "cifar-10-python.tar.gz",
                 {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in folder.iterdir()})
    data = load_cifar10(target, download=False)
    np.testing.assert_array_equal(data.y_train, small.y_train)
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_archive_with_path_traversal_is_refused(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    make_archive(target / "cifar-10-python.tar.gz", {"../escaped.txt": b"x", "cifar-10-batches-py/a": b"y"})
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: cannot extract"):
        load_cifar10(target, download=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not (target / "cifar-10-batches-py").exists()


def test_missing_data_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    msg = one_line(err)
    assert str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg


def test_failed_download_says_how_to_provide_the_data(tmp_path, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=True)
    msg = one_line(err)
    assert "could not be downloaded" in msg and "copy cifar-10-python.tar.gz" in msg and str(tmp_path) in msg


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DataError, match="unknown dataset 'imagenet': no such file or folder; give cifar10, digits or synthetic, a folder"):
        load_dataset("imagenet", None)


# ---------------------------------------------------------------- statistics, subsets, splits

def test_mean_and_std_are_per_channel_in_unit_range_from_training_images_only(small):
    pixels = small.x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(small.mean, pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(small.std, pixels.std(0), atol=1e-6)
    assert small.mean.dtype == np.float32 and small.std.shape == (3,)


def test_subset_keeps_classes_balanced_and_is_seeded(small):
    sub = small.subset(30, None, seed=1)
    assert len(sub.y_train) == 30 and len(sub.y_test) == len(small.y_test)
    assert np.bincount(sub.y_train, minlength=10).tolist() == [3] * 10
    np.testing.assert_array_equal(sub.x_train, small.subset(30, None, seed=1).x_train)


def test_split_preserves_class_proportions_is_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [400, 200, 100, 100])  # imbalanced on purpose
    data = indexed(labels)
    split = train_val_split(data, val_size=200, seed=7)
    assert split.name == "toy:val" and len(split.y_test) == 200 and len(split.y_train) == 600
    assert np.bincount(split.y_test).tolist() == [100, 50, 25, 25]
    train_ids, val_ids = index_of(split.x_train), index_of(split.x_test)
    assert not set(train_ids) & set(val_ids) and len(set(train_ids) | set(val_ids)) == 800
    np.testing.assert_array_equal(labels[val_ids], split.y_test)  # labels travel with their images
    np.testing.assert_array_equal(val_ids, index_of(train_val_split(data, 200, seed=7).x_test))
    assert set(val_ids) != set(index_of(train_val_split(data, 200, seed=8).x_test))


def test_fractional_validation_size_is_a_share_of_the_training_images():
    split = train_val_split(indexed(np.arange(100) % 5), val_size=0.1)
    assert len(split.y_test) == 10 and np.bincount(split.y_test).tolist() == [2] * 5


@pytest.mark.parametrize("val_size", [3, 98, 1.5, 0.0])
def test_impossible_split_is_a_clear_data_error(val_size):
    with pytest.raises(DataError):
        train_val_split(indexed(np.arange(100) % 5), val_size=val_size)


# ---------------------------------------------------------------- offline datasets

def test_digits_are_32x32_rgb_with_ten_classes_and_a_stratified_test_part():
    data = load_dataset("digits", None)
    assert data.x_train.shape[1:] == (32, 32, 3) and data.x_train.dtype == np.uint8
    assert len(data.y_train) + len(data.y_test) == 1797 and len(data.y_test) == 450
    assert data.classes == tuple("0123456789") and data.num_classes == 10
    assert (data.x_train[..., 0] == data.x_train[..., 2]).all() and data.x_train.max() > 200
    assert np.bincount(data.y_test).min() >= 43  # about 45 of each digit
    np.testing.assert_array_equal(load_digits32(seed=0).y_test, data.y_test)


def test_synthetic_is_deterministic_for_a_seed_and_balanced():
    a, b, c = make_synthetic(100, 50, seed=1), make_synthetic(100, 50, seed=1), make_synthetic(100, 50, seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape == (100, 32, 32, 3) and np.bincount(a.y_train).tolist() == [10] * 10


def test_the_cifar_folder_itself_is_accepted_as_the_data_dir(tmp_path):
    from train.data import load_cifar10, make_synthetic
    from tests.search_helpers import write_cifar_batches

    data = make_synthetic(50, 20)
    write_cifar_batches(tmp_path / "cifar-10-batches-py", data)
    parent = load_cifar10(tmp_path, download=False)
    itself = load_cifar10(tmp_path / "cifar-10-batches-py", download=False)  # as users point at it
    assert (itself.x_train == parent.x_train).all() and (itself.y_test == parent.y_test).all()
    assert not (tmp_path / "cifar-10-batches-py" / "cifar-10-batches-py").exists()
