"""Image datasets as uint8 arrays: CIFAR-10 (official python format), sklearn's digits, a synthetic toy set.

Every loader returns an `ImageData`: uint8 images N x 32 x 32 x 3 (HWC, the layout the files and
albumentations use) and int64 labels. Anything wrong with the user's files becomes a `DataError` whose
message is one line naming the file and what to do about it; the CLI prints it and exits with status 2.

The CIFAR-10 batches are pickles, and unpickling runs code named inside the file, so they are read with
an unpickler that resolves only the few numpy names the format needs and refuses everything else.
"""
from __future__ import annotations

import codecs
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pooch
import torch
import torch.nn.functional as F

from .files import removed_on_error

__all__ = ["DataError", "ImageData", "DATASETS", "CIFAR10_URL", "CIFAR10_MD5", "load_dataset", "dataset_label", "canonical_dataset", "load_cifar10",
           "load_digits32", "make_synthetic", "train_val_split"]

DATASETS = ("cifar10", "digits", "synthetic")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_FOLDER = "cifar-10-batches-py"
_ARCHIVE = "cifar-10-python.tar.gz"
_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_PIXELS = 32 * 32 * 3  # one image in a batch file: 1024 red, then 1024 green, then 1024 blue bytes


class DataError(Exception):
    """Missing, corrupt or untrusted data; the message is one line saying which file and what to do."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """Train and test images of one dataset. Images are uint8 N x 32 x 32 x 3 (HWC), labels int64."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    classes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        # From each channel's histogram of the 256 levels: exact, and no float copy of the images (which
        # would be 1.2 GB for CIFAR-10 in float64).
        counts = np.zeros(3 * 256, np.int64)  # red levels, then green, then blue
        offsets = np.array([0, 256, 512], np.uint16)
        for start in range(0, len(self.x_train), 4096):
            counts += np.bincount((self.x_train[start:start + 4096].reshape(-1, 3) + offsets).ravel(), minlength=768)
        p = counts.reshape(3, 256) / max(counts[:256].sum(), 1)
        levels = np.arange(256) / 255.0
        mean = p @ levels
        std = np.sqrt(np.maximum((p * (levels - mean[:, None]) ** 2).sum(1), 0.0))
        return mean.astype(np.float32), std.astype(np.float32)

    @property
    def mean(self) -> np.ndarray:
        """Per-channel (RGB) mean of the training images, in [0, 1] units."""
        return self._moments[0]

    @property
    def std(self) -> np.ndarray:
        """Per-channel (RGB) standard deviation of the training images, in [0, 1] units."""
        return self._moments[1]

    def subset(self, n_train: int | None, n_test: int | None, seed: int = 0) -> ImageData:
        """A random subset with classes as balanced as the data allows (None keeps a part whole)."""
        rng = np.random.default_rng(seed)
        train = _balanced_pick(self.y_train, n_train, rng)
        test = _balanced_pick(self.y_test, n_test, rng)
        return replace(self, x_train=self.x_train[train], y_train=self.y_train[train],
                       x_test=self.x_test[test], y_test=self.y_test[test])


def _balanced_pick(labels: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of n samples taken round-robin over the classes in random order, sorted ascending."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    order = rng.permutation(len(labels))
    # rank of each shuffled sample within its own class: the first of every class, then the second, ...
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    picked = order[np.argsort(rank[order], kind="stable")[:n]]
    return np.sort(picked)


def _image_data(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                classes: tuple[str, ...]) -> ImageData:
    return ImageData(name, np.ascontiguousarray(x_train, np.uint8), np.asarray(y_train, np.int64),
                     np.ascontiguousarray(x_test, np.uint8), np.asarray(y_test, np.int64), tuple(classes))


def dataset_label(name: str) -> str:
    """A short name for file and study names: the dataset's name, or the stem of the user's folder or .npz."""
    return name if name in DATASETS else (Path(name).expanduser().resolve().stem or "data")


def canonical_dataset(name: str) -> str:
    """A known dataset's name as it is, a path as its absolute form (what a study stores, so that a resume from
    another folder names the same data); DataError where the path does not exist."""
    if name in DATASETS:
        return name
    path = Path(name).expanduser()
    if not path.exists():
        raise DataError(f"unknown dataset {name!r}: no such file or folder; give cifar10, digits or synthetic, "
                        "a folder of class folders (optionally inside train/ and test/) or an .npz file")
    return str(path.resolve())


def load_dataset(name: str, data_dir: str | Path | None, download: bool = True,
                 test_size: int | float | None = None) -> ImageData:
    """The dataset called `name` ("cifar10", "digits" or "synthetic"), or the user's at the path `name` (a
    folder of class folders or an .npz: train.userdata); only cifar10 reads data_dir, only a folder of class
    folders without test/ reads test_size (images, or a fraction of them, carved out as its test set)."""
    if name not in DATASETS:
        # import cycle: train.userdata builds on this module's ImageData and DataError
        from .userdata import load_user_dataset
        return load_user_dataset(name, test_size)
    if test_size is not None:
        raise DataError(f"--test-size applies to a folder of class folders; {name} has its own test set")
    if name == "cifar10":
        if data_dir is None:
            raise DataError("dataset 'cifar10' needs a data directory (the folder holding cifar-10-batches-py)")
        return load_cifar10(data_dir, download=download)
    if name == "digits":
        return load_digits32()
    if name == "synthetic":
        return make_synthetic()
    raise AssertionError(name)  # every name of DATASETS is handled above


# ---------------------------------------------------------------- CIFAR-10, official python format

def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 batch may name: numpy's array/dtype rebuilders under both of the module
    paths numpy has used (numpy.core before 2.0, numpy._core since), and `_codecs.encode`, which Python 3
    emits for bytes in a protocol-2 pickle. All of them just build data."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _Refused(pickle.UnpicklingError):
    """The pickle names a global outside the CIFAR-10 format (it would run code, not just build data)."""


class _RestrictedUnpickler(pickle.Unpickler):
    allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refused(f"refused to unpickle '{module}.{name}' (not part of the CIFAR-10 format)") from None


def _key(d: dict, key: str) -> Any:
    """d[key] whether the pickle stored it as Python-2 str (read as str) or as bytes."""
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise KeyError(key)


def _read_pickle(path: Path) -> dict:
    remedy = "delete it and re-download or re-create the data"
    try:
        with open(path, "rb") as f:
            # latin1 is what numpy recommends for Python-2 pickles: py2 str keys become str, array bytes survive.
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing (the folder holds an incomplete copy of CIFAR-10); delete the "
                        f"folder {path.parent} and download again (drop --no-download), or copy the whole "
                        "cifar-10-batches-py/ there") from None
    except _Refused as e:
        raise DataError(f"{path}: {e}; the file is not a genuine CIFAR-10 batch, {remedy}") from None
    except Exception as e:  # EOFError, ValueError, struct.error...: a damaged file, whatever the opcode
        raise DataError(f"{path}: corrupt or truncated ({type(e).__name__}: {e}); {remedy}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not a CIFAR-10 dict; {remedy}")
    return obj


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 32 x 32 x 3 uint8, labels int64) of one batch file, checked for consistency."""
    d = _read_pickle(path)
    remedy = "delete it and re-download or re-create the data"
    try:
        data, labels = _key(d, "data"), np.asarray(_key(d, "labels"))
        labels = labels if labels.size else labels.astype(np.int64)  # an empty list reads as float64
    except KeyError as e:
        raise DataError(f"{path}: no {e} entry; {remedy}") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == _PIXELS):
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"{path}: data should be uint8 [N, {_PIXELS}], got {shape}; {remedy}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape}; {remedy}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}; {remedy}")
    # channel-major rows (1024 R, 1024 G, 1024 B) -> HWC images
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def load_cifar10(data_dir: str | Path, download: bool = True) -> ImageData:
    """CIFAR-10 from data_dir/cifar-10-batches-py, extracting data_dir/cifar-10-python.tar.gz or (if
    `download`) downloading that archive first when the folder is absent. Smaller batches are accepted."""
    data_dir = Path(data_dir)
    if data_dir.name == _FOLDER and (data_dir / "batches.meta").is_file():  # the folder itself, as users name it
        data_dir = data_dir.parent
    folder = data_dir / _FOLDER
    if not folder.is_dir():
        archive = data_dir / _ARCHIVE
        if not archive.is_file():
            if not download:
                raise DataError(f"CIFAR-10 not found: put {_FOLDER}/ or {_ARCHIVE} into {data_dir} "
                                "(or allow the download)")
            # A failed download leaves no folder behind that was not there before.
            with removed_on_error(data_dir):
                _download(data_dir)
        _extract(archive, data_dir)
    meta = _read_pickle(folder / "batches.meta")
    try:
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in _key(meta, "label_names"))
    except KeyError:
        raise DataError(f"{folder / 'batches.meta'}: no label_names entry; delete it and re-create the data") from None
    parts = [_read_batch(folder / name, len(classes)) for name in _TRAIN_FILES]
    x_test, y_test = _read_batch(folder / "test_batch", len(classes))
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"{folder}: no training or no test images; delete it and re-create the data")
    return _image_data("cifar10", x_train, y_train, x_test, y_test, classes)


def _download(data_dir: Path) -> None:
    try:
        pooch.retrieve(CIFAR10_URL, known_hash=f"md5:{CIFAR10_MD5}", fname=_ARCHIVE, path=data_dir,
                       progressbar=False)
    except Exception as e:  # no network, proxy, checksum mismatch: all mean "provide the file yourself"
        raise DataError(f"CIFAR-10 is missing from {data_dir} and could not be downloaded "
                        f"({type(e).__name__}); copy {_ARCHIVE} or {_FOLDER}/ into {data_dir}") from None


def _extract(archive: Path, data_dir: Path) -> None:
    """Unpack the archive's cifar-10-batches-py/ into data_dir, all or nothing."""
    # Extract beside the target and rename at the end, so an interrupted run leaves no half folder behind.
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # "data" refuses absolute paths, '..', links out, devices
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{archive}: cannot extract ({type(e).__name__}: {e}); delete it and download "
                            "it again") from None
        if not (Path(tmp) / _FOLDER).is_dir():
            raise DataError(f"{archive}: has no {_FOLDER}/ folder; it is not the CIFAR-10 python archive")
        shutil.move(str(Path(tmp) / _FOLDER), str(data_dir / _FOLDER))


# ---------------------------------------------------------------- offline datasets and splits

def load_digits32(seed: int = 0, test_size: float = 0.25) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1,797 images) as 32x32 RGB uint8, split stratified and seeded."""
    from sklearn.datasets import load_digits  # start-up cost: ~0.19 s on top of sklearn.model_selection's
    from sklearn.model_selection import train_test_split  # start-up cost: ~0.7 s (see train_val_split)

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]  # values 0..16 -> 0..255
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    x = big.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    x = np.repeat(x[..., None], 3, axis=-1)  # grey -> 3 identical channels
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    return _image_data("digits", x_tr, y_tr, x_te, y_te, tuple(str(d) for d in range(10)))


def make_synthetic(n_train: int = 512, n_test: int = 256, num_classes: int = 10, seed: int = 0) -> ImageData:
    """A tiny learnable set: each class is a fixed 4x4 grid of random colours (8x8-pixel blocks) plus noise."""
    templates = np.random.default_rng(1234).integers(0, 256, (num_classes, 4, 4, 3))  # same task for every seed
    templates = templates.repeat(8, axis=1).repeat(8, axis=2).astype(np.float32)
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % num_classes)
        noise = rng.normal(0.0, 40.0, (n, 32, 32, 3))  # intensity units, out of 255
        return np.clip(templates[y] + noise, 0, 255).round().astype(np.uint8), y

    (x_tr, y_tr), (x_te, y_te) = draw(n_train), draw(n_test)
    return _image_data("synthetic", x_tr, y_tr, x_te, y_te, tuple(f"class{c}" for c in range(num_classes)))


def train_val_split(data: ImageData, val_size: int | float = 5000, seed: int = 0) -> ImageData:
    """Hold out a stratified, seeded validation part of the training images. The result's train part is the
    rest of the training images and its *test* part is the validation images; the real test set is dropped.
    `val_size` is a number of images, or a fraction of the training images when a float in (0, 1)."""
    # start-up cost: ~0.7 s (-X importtime, after torch), spared the commands that load data but never split it
    from sklearn.model_selection import train_test_split

    n = len(data.y_train)
    if isinstance(val_size, float) and not 0.0 < val_size < 1.0:
        raise DataError(f"validation fraction {val_size} must lie strictly between 0 and 1")
    count = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    classes_present = len(np.unique(data.y_train))
    if not classes_present <= count <= n - classes_present:
        raise DataError(f"{data.name}: cannot hold out {count} of {n} training images with every one of the "
                        f"{classes_present} classes on both sides; choose a validation size in "
                        f"{classes_present}..{n - classes_present}")
    try:
        train, val = train_test_split(np.arange(n), test_size=count, stratify=data.y_train, random_state=seed)
    except ValueError as e:  # e.g. a class with a single image cannot be stratified
        raise DataError(f"{data.name}: cannot split stratified ({e})") from None
    train, val = np.sort(train), np.sort(val)
    return replace(data, name=f"{data.name}:val", x_train=data.x_train[train], y_train=data.y_train[train],
                   x_test=data.x_train[val], y_test=data.y_train[val])
