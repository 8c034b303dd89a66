"""The user's own images as an `ImageData`: a folder of class folders (with or without train/ and test/), or an .npz.

Layouts (`load_user_dataset`):
    ROOT/train/CLASS/*.png and ROOT/test/CLASS/*.png   the user's own split; the same class folders in both
    ROOT/CLASS/*.png                                   the test split is carved out of it (`carve_test`)
    FILE.npz                                           x_train, y_train, x_test, y_test (uint8 N x H x W x C or
                                                       N x H x W, integer labels), optionally classes
Class names are the folder names, sorted; images are ordered by class, then by their path inside the class
folder, so a folder always loads in the same order.

Every image becomes 32 x 32 RGB uint8, the input the search space and its rules are defined for: grayscale
and palette images are converted to RGB, transparent pixels are laid over white, and an image of any other
size has its shorter side resized to 32 pixels (bilinear, Pillow's antialiased resize) and is cropped to the
central 32 x 32. A 32 x 32 RGB image passes through unchanged, bit for bit.

Decoding runs once per folder: the decoded arrays are cached in the user's cache folder (`cache_dir`), keyed by
the folder's absolute path and checked against every file's path, size and modification time, so a file
added, removed or touched decodes the folder again. The cache is written whole (a temporary file renamed).
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .data import DataError, ImageData

__all__ = ["IMAGE_SUFFIXES", "DEFAULT_TEST_SIZE", "SPLIT_SEED", "SIZE", "cache_dir",
           "load_user_dataset", "load_npz", "load_folder", "carve_test", "fit_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")  # compared lower-cased
DEFAULT_TEST_SIZE = 0.2  # a folder of class folders only: this fraction of each class becomes the test set
SPLIT_SEED = 0  # the test split's seed: fixed, so every run (and every --seed) tests on the same images
SIZE = 32  # pixels, each side: the input size the search space is defined for
_PROGRESS_FROM = 1000  # images: a folder this large says how far its decoding has got
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def cache_dir() -> Path:
    """$TINYNAS_CACHE if set, else $XDG_CACHE_HOME/tinynas, else ~/.cache/tinynas."""
    if os.environ.get("TINYNAS_CACHE"):
        return Path(os.environ["TINYNAS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinynas"


def load_user_dataset(path: str | Path, test_size: int | float | None = None) -> ImageData:
    """The dataset at `path` (see the module's docstring); DataError (one line) for anything wrong with it.
    `test_size` (images, or a fraction in (0, 1)) applies only to a folder of class folders without test/."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"unknown dataset {str(path)!r}: no such file or folder; give cifar10, digits or synthetic, "
                        "a folder of class folders (optionally inside train/ and test/) or an .npz file")
    if root.is_file():
        if root.suffix.lower() != ".npz":
            raise DataError(f"{path}: a file that is not an .npz; give a folder of class folders or an .npz file")
        if test_size is not None:
            raise DataError(f"{path}: the .npz holds its own test set; leave --test-size out")
        return load_npz(root)
    return load_folder(root, test_size)


# ---------------------------------------------------------------- images

def fit_image(im: Image.Image) -> np.ndarray:
    """The image as 32 x 32 x 3 uint8: RGB (transparency over white), shorter side resized to 32, centre crop."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if (w, h) != (SIZE, SIZE):
        scale = SIZE / min(w, h)
        nw, nh = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
        im = im.crop((left, top, left + SIZE, top + SIZE))
    return np.asarray(im, dtype=np.uint8)


def _decode(path: Path) -> np.ndarray:
    """One image file as 32 x 32 x 3 uint8; DataError naming the file when Pillow cannot read it."""
    try:
        with Image.open(path) as im:
            im.load()
            return fit_image(im)
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), ValueError, ...: all a bad file
        raise DataError(f"{path}: cannot be decoded as an image ({type(e).__name__}); delete or replace it") from None


# ---------------------------------------------------------------- folders

def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini", "__MACOSX")


def _scan_class(folder: Path) -> tuple[list[Path], int]:
    """(image files under `folder`, sorted by relative path; how many other files were skipped)."""
    images, skipped = [], 0
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        for f in files:
            if not _is_hidden(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                images.append(Path(top) / f)
            else:
                skipped += 1
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix()), skipped


def _scan(root: Path) -> tuple[tuple[str, ...], list[Path], np.ndarray, int]:
    """(class names, image files, labels, skipped files) of a folder of class folders."""
    classes, skipped = [], 0
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.is_dir() and not _is_hidden(entry.name):
            classes.append(entry.name)
        else:
            skipped += 1
    if len(classes) < 2:
        raise DataError(f"{root}: {len(classes)} class folder{'' if len(classes) == 1 else 's'}; a dataset needs at "
                        "least 2 (one sub-folder of images per class)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found, n_skipped = _scan_class(root / name)
        if not found:
            raise DataError(f"{root / name}: a class folder with no images ({', '.join(IMAGE_SUFFIXES)}); add "
                            "images or remove the folder")
        files += found
        labels += [label] * len(found)
        skipped += n_skipped
    return tuple(classes), files, np.asarray(labels, np.int64), skipped


def _manifest_digest(root: Path, files: list[Path]) -> str:
    """A digest of every file's path (relative to root), size in bytes and modification time in ns."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_file(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / f"images-{key}.npz"


def _read_cache(path: Path, digest: str, n: int) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["digest"]) != digest:
                return None
            x = z["x"]
    except Exception:  # no cache, or a damaged one: decode again and rewrite it
        return None
    return x if x.shape == (n, SIZE, SIZE, 3) and x.dtype == np.uint8 else None


def _write_cache(path: Path, digest: str, x: np.ndarray) -> None:
    """Written whole (temporary file, then renamed over the old one); a cache that cannot be written is said
    once and skipped, since it only saves time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".images-", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, digest=np.array(digest), x=x)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        print(f"note: cannot cache the decoded images in {path.parent} ({e.strerror}); the next run decodes "
              "them again (set TINYNAS_CACHE to a writable folder)", file=sys.stderr)


def _decode_all(root: Path, files: list[Path]) -> np.ndarray:
    """Every file decoded (with a progress line every tenth of a large folder), in the order given."""
    n = len(files)
    x = np.empty((n, SIZE, SIZE, 3), np.uint8)
    step = max(n // 10, 1) if n >= _PROGRESS_FROM else 0
    if step:
        print(f"decoding {n:,} images in {root} (once: the arrays are cached in {cache_dir()})", file=sys.stderr,
              flush=True)
    for i, f in enumerate(files):
        x[i] = _decode(f)
        if step and (i + 1) % step == 0:
            print(f"  {i + 1:,}/{n:,} decoded", file=sys.stderr, flush=True)
    return x


def _images(root: Path, files: list[Path]) -> np.ndarray:
    """The files' decoded images, from the cache when no file changed since it was written."""
    digest, cache = _manifest_digest(root, files), _cache_file(root)
    x = _read_cache(cache, digest, len(files))
    if x is None:
        x = _decode_all(root, files)
        _write_cache(cache, digest, x)
    return x


def load_folder(root: Path, test_size: int | float | None = None) -> ImageData:
    """A folder holding train/ and test/ (each a folder of class folders), or a folder of class folders whose
    test split is carved out (`carve_test`, `test_size` images or fraction, default DEFAULT_TEST_SIZE)."""
    name = str(root.resolve())
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise DataError(f"{root}: has {have}/ but no {lack}/; give both, or put the class folders directly in {root}")
    if train_dir.is_dir():
        if test_size is not None:
            raise DataError(f"{root}: holds its own test/ folder; leave --test-size out")
        classes, train_files, y_train, skipped = _scan(train_dir)
        test_classes, test_files, y_test, skipped_test = _scan(test_dir)
        if test_classes != classes:
            only = sorted(set(classes) ^ set(test_classes))
            raise DataError(f"{root}: train/ and test/ hold different class folders ({', '.join(only[:5])} only in "
                            "one of them); give both the same classes")
        x = _images(root, train_files + test_files)
        _say_skipped(root, skipped + skipped_test)
        n = len(train_files)
        return ImageData(name, x[:n], y_train, x[n:], y_test, classes)
    classes, files, y, skipped = _scan(root)
    x = _images(root, files)
    _say_skipped(root, skipped)
    train, test = carve_test(y, DEFAULT_TEST_SIZE if test_size is None else test_size, str(root))
    return ImageData(name, x[train], y[train], x[test], y[test], classes)


def _say_skipped(root: Path, skipped: int) -> None:
    if skipped:
        print(f"note: {root}: ignored {skipped:,} file{'' if skipped == 1 else 's'} that {'is' if skipped == 1 else 'are'} "
              "not images (hidden files, .txt, ...)", file=sys.stderr, flush=True)


def carve_test(labels: np.ndarray, test_size: int | float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), both sorted: a stratified test split of `test_size` images (or that
    fraction of them), seeded with SPLIT_SEED; DataError where some class could not be on both sides."""
    n, k = len(labels), len(np.unique(labels))
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise DataError(f"--test-size {test_size} must be a number of images or a fraction strictly between 0 and 1")
    count = round(test_size * n) if isinstance(test_size, float) else int(test_size)
    if not k <= count <= n - k or np.bincount(labels).min() < 2:
        raise DataError(f"{what}: cannot carve {count} test images out of {n} with every one of the {k} classes on "
                        "both sides; each class needs 2 images or more, and --test-size must lie in "
                        f"{k}..{max(n - k, k)} images")
    rng = np.random.default_rng(SPLIT_SEED)
    # Each class gives its share of the test count (largest remainders first), at least one image and never all.
    counts = np.bincount(labels)
    share = counts * count / n
    take = np.clip(np.floor(share).astype(np.int64), 1, counts - 1)
    for c in np.argsort(-(share - np.floor(share)), kind="stable"):
        if take.sum() >= count:
            break
        if take[c] < counts[c] - 1:
            take[c] += 1
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:take[c]] for c in range(len(counts))])
    mask = np.zeros(n, bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# ---------------------------------------------------------------- .npz

def load_npz(path: Path) -> ImageData:
    """x_train, y_train, x_test, y_test and optionally classes from an .npz (no pickles: object arrays refused)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path}: no {', '.join(missing)} array; an .npz dataset holds x_train, y_train, "
                                "x_test, y_test (and optionally classes)")
            arrays = {k: z[k] for k in (*_NPZ_KEYS, *(("classes",) if "classes" in z.files else ()))}
    except DataError:
        raise
    except Exception as e:  # not a zip, a damaged one, or an object array that would need pickle
        raise DataError(f"{path}: cannot be read as an .npz of arrays ({type(e).__name__}: {e})") from None
    xs = {part: _npz_images(path, f"x_{part}", arrays[f"x_{part}"]) for part in ("train", "test")}
    ys = {part: _npz_labels(path, f"y_{part}", arrays[f"y_{part}"], len(arrays[f"x_{part}"])) for part in ("train", "test")}
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: classes should be a 1-D array of strings, got {names.dtype} {names.shape}")
        classes = tuple(str(c.decode() if isinstance(c, bytes) else c) for c in names.tolist())
    else:
        classes = tuple(str(c) for c in range(int(max(ys["train"].max(initial=0), ys["test"].max(initial=0))) + 1))
    if len(classes) < 2:
        raise DataError(f"{path}: {len(classes)} class; a dataset needs at least 2")
    for part in ("train", "test"):
        y = ys[part]
        if len(y) == 0:
            raise DataError(f"{path}: x_{part} holds no images")
        if y.min() < 0 or y.max() >= len(classes):
            raise DataError(f"{path}: y_{part} has labels outside 0..{len(classes) - 1} (the {len(classes)} classes)")
    absent = sorted(set(range(len(classes))) - set(np.unique(ys["train"]).tolist()))
    if absent:
        raise DataError(f"{path}: class {classes[absent[0]]!r} has no training images; every class needs some")
    return ImageData(str(path.resolve()), xs["train"], ys["train"], xs["test"], ys["test"], classes)


def _npz_images(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{path}: {key} is {x.dtype}; it must be uint8 (0..255)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3], default=0) < 1:
        raise DataError(f"{path}: {key} has shape {x.shape}; it must be N x H x W x C (C 1 or 3) or N x H x W")
    if x.shape[1:3] == (SIZE, SIZE):
        return np.ascontiguousarray(np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x)
    return np.stack([fit_image(Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)) for im in x]) if len(x) \
        else np.zeros((0, SIZE, SIZE, 3), np.uint8)


def _npz_labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} is {y.dtype}; labels must be integers")
    if y.shape != (n,):
        raise DataError(f"{path}: {key} has shape {y.shape} but x_{key[2:]} holds {n} images; one label per image")
    return y.astype(np.int64)
