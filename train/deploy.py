"""The trained net ready to deploy: ONNX fp32 and static int8, verified and measured with ONNX Runtime.

`deploy()` does it all for a trained model and the data it was trained on, and returns what is reported
(final.json, metrics.json, report.md):
1. `export_onnx`: fp32 ONNX (torch's current, torch.export-based exporter; needs onnxscript), input
   `input` N x 3 x 32 x 32 float32 with a dynamic batch, output `logits` N x classes. The input is the RGB
   image in [0, 1] normalised per channel as in training, (x - MEAN) / STD; MEAN, STD (JSON lists, [0, 1]
   units) and the class names are in the model's metadata_props.
2. `verify_onnx`: the fp32 model's logits against PyTorch's on real images; a difference above
   `LOGIT_ATOL` raises DeployError (nothing is reported from an export that does not compute the same net).
3. `quantize_int8`: static post-training quantization with onnxruntime.quantization (QDQ, int8 weights
   per output channel in 7 bits, int8 activations, MinMax ranges), calibrated on `CALIBRATION_IMAGES`
   training images (never test images). 7-bit weights (reduce_range) because ONNX Runtime's int8 kernels on
   x86 CPUs without VNNI add pairs of uint8 x int8 products in int16, which saturates with 8-bit weights
   (onnxruntime.quantization's documentation; the measured cost: results/benchmarks/deploy/deploy_cpu.md).
4. `evaluate_onnx` on the whole test set and `measure_speed` (median latency per image at batch 1, images/s
   at batch 256), both with ONNX Runtime on the CPU, `threads` intra-op threads.

The onnx, onnxruntime and onnxscript packages are the `deploy` extra (pip install -e ".[deploy]");
`missing()` says which of them is absent, so a caller can skip this step with one line instead of failing.
`python -m train.deploy MODEL.onnx --dataset D` evaluates and times a file written here.
"""
from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from space.cli import CliParser
from space.machine import cpu_name  # re-exported: the name a latency table records (space.machine checks it)

from .data import load_dataset
from .files import DATA_DIR

__all__ = ["DeployError", "DEPLOY_EXTRA", "LOGIT_ATOL", "CALIBRATION_IMAGES", "SECONDS", "SECONDS_ENV", "OnnxInfo",
           "missing", "cpu_name", "timing_seconds", "normalize", "calibration_images", "quiet_export", "export_onnx",
           "read_onnx", "onnx_session", "verify_onnx", "quantize_int8", "quantize_float", "evaluate_onnx",
           "measure_speed", "deploy", "summary", "main"]

DEPLOY_EXTRA = 'pip install -e ".[deploy]"'
_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
# Max |logit difference| allowed between the fp32 ONNX model and PyTorch (both fp32 on the CPU). Reordered
# float sums differ by ~1e-5 on these nets; a wrong export (a missing BatchNorm, a wrong padding) by > 0.1.
LOGIT_ATOL = 1e-3
CALIBRATION_IMAGES = 512  # training images whose activation ranges set the int8 scales
SECONDS = 2.0  # of each speed measurement (per file and batch size): a median over that many seconds of runs
SECONDS_ENV = "TINYNAS_ONNX_SECONDS"  # overrides SECONDS (timing_seconds)
_METADATA = "tinynas"  # metadata_props key whose presence marks a file this module wrote


class DeployError(ValueError):
    """A failed export or verification, or an ONNX file that is corrupt or not one of ours; one line."""


@dataclass(frozen=True)
class OnnxInfo:
    """What an ONNX file written by export_onnx says about its input."""

    mean: tuple[float, float, float]  # per RGB channel, [0, 1] units
    std: tuple[float, float, float]
    classes: tuple[str, ...]


def missing() -> list[str]:
    """The deploy extra's packages that cannot be imported (empty: all there)."""
    absent = []
    for name in _PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            absent.append(name)
    return absent


def normalize(x_uint8_nhwc: np.ndarray, mean, std) -> np.ndarray:
    """uint8 N x 32 x 32 x 3 images -> float32 N x 3 x 32 x 32, (x / 255 - mean) / std per channel."""
    x = np.asarray(x_uint8_nhwc, np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - m) / s, np.float32)


def calibration_images(x_train: np.ndarray, n: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """n training images drawn at random (seeded), in their original order."""
    if len(x_train) <= n:
        return x_train
    return x_train[np.sort(np.random.default_rng(seed).choice(len(x_train), n, replace=False))]


@contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the exporter's progress lines, deprecation warnings and 'torchvision is not installed' logs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, path: str | Path, mean, std, classes: tuple[str, ...] = (),
                extra: dict[str, str] | None = None) -> Path:
    """Write `model` (any device; a CPU copy is exported in eval mode) as fp32 ONNX with a dynamic batch and
    the normalisation in its metadata; returns the path."""
    import onnx  # optional extra (deploy)

    path = Path(path)
    net = copy.deepcopy(model).float().cpu().eval()
    example = torch.zeros(2, 3, 32, 32)
    try:
        with quiet_export(), torch.no_grad():
            program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, input_names=["input"],
                                        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # the exporter's errors run over many lines; the type and first line suffice
        raise DeployError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
            from None
    proto = program.model_proto
    meta = {_METADATA: "1", "mean": json.dumps([float(v) for v in np.asarray(mean).reshape(3)]),
            "std": json.dumps([float(v) for v in np.asarray(std).reshape(3)]), "classes": json.dumps(list(classes)),
            "input": "N x 3 x 32 x 32 float32, RGB in [0, 1] normalised per channel: (x - mean) / std",
            **(extra or {})}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)  # never a half-written model
    return path


def read_onnx(path: str | Path) -> OnnxInfo:
    """The normalisation and classes of an ONNX file written by export_onnx or quantize_int8; anything else
    (missing, corrupt, another tool's model) is a DeployError."""
    import onnx  # optional extra (deploy)

    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise DeployError(f"{path} is not a readable ONNX model ({type(e).__name__}); export it again") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if _METADATA not in meta:
        raise DeployError(f"{path} was not written by tinynas (no mean/std in its metadata); export the net with "
                          "python -m search.export --onnx or train.run --onnx")
    try:
        mean, std = (tuple(float(v) for v in json.loads(meta[k])) for k in ("mean", "std"))
        classes = tuple(str(c) for c in json.loads(meta.get("classes", "[]")))
    except (ValueError, TypeError, KeyError) as e:
        raise DeployError(f"{path}: unreadable normalisation in its metadata ({e})") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise DeployError(f"{path}: metadata mean/std are not three positive per-channel values")
    return OnnxInfo(mean, std, classes)  # type: ignore[arg-type]


def onnx_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime session of the model in `path` on the CPU with `threads` intra-op threads, logging errors
    only (train.latency times its blocks in the same sessions); DeployError (one line) if it cannot load."""
    import onnxruntime as ort  # optional extra (deploy)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise DeployError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}); export it again") from None


def _run(session, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def verify_onnx(model: nn.Module, path: str | Path, x_uint8: np.ndarray, mean, std, atol: float = LOGIT_ATOL) -> float:
    """Max |logit difference| between the ONNX file (ONNX Runtime) and `model` (PyTorch, fp32 on the CPU) on
    the given images; DeployError if it exceeds atol."""
    x = normalize(x_uint8, mean, std)
    net = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        expected = torch.cat([net(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()
    got = _run(onnx_session(path), x)
    if got.shape != expected.shape:
        raise DeployError(f"{path}: logits of shape {got.shape}, PyTorch gives {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:  # NaN fails too
        raise DeployError(f"{path}: ONNX Runtime's logits differ from PyTorch's by up to {diff:.3g} on {len(x)} "
                          f"images (allowed {atol:g}); the export is wrong, not written for use")
    return diff


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calib_uint8: np.ndarray, mean, std,
                  per_channel: bool = True, reduce_range: bool = True, exclude: tuple[str, ...] = ()) -> Path:
    """Static int8 post-training quantization of an fp32 ONNX file (QDQ format, MinMax calibration on
    `calib_uint8`, training images; reduce_range: 7-bit weights, see the module docstring); `exclude` names
    nodes kept in fp32. The metadata is carried over."""
    return quantize_float(fp32_path, int8_path, normalize(calib_uint8, mean, std), per_channel, reduce_range, exclude)


def quantize_float(fp32_path: str | Path, int8_path: str | Path, x: np.ndarray, per_channel: bool = True,
                   reduce_range: bool = True, exclude: tuple[str, ...] = ()) -> Path:
    """quantize_int8 with the calibration input given as the model's float32 input `x` (any shape the model
    takes: train.latency quantizes single blocks this way, with the same settings as a whole net)."""
    # optional extra (deploy): onnx and onnxruntime, imported where used so that a missing one is one line
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    with tempfile.TemporaryDirectory(prefix="tinynas-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            with quiet_export():
                # ORT's recommended pre-processing: shape inference and graph optimisation before calibration
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
                reader = _calibration_reader(CalibrationDataReader, x, onnx_session(prepared).get_inputs()[0].name)
                quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), reader, quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude) or None,
                                calibration_providers=["CPUExecutionProvider"])
        except DeployError:
            raise
        except Exception as e:
            raise DeployError(f"int8 quantization of {fp32_path} failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
        proto = onnx.load(str(Path(tmp) / "int8.onnx"))
    source = onnx.load(str(fp32_path))
    del proto.metadata_props[:]
    proto.metadata_props.extend(source.metadata_props)
    proto.metadata_props.append(onnx.StringStringEntryProto(
        key="quantization", value=f"static int8 QDQ, {'per-channel' if per_channel else 'per-tensor'} "
                                  f"{7 if reduce_range else 8}-bit weights, MinMax on {len(x)} training images"))
    tmp_out = int8_path.with_suffix(".tmp")
    onnx.save(proto, str(tmp_out))
    os.replace(tmp_out, int8_path)
    return int8_path


def _calibration_reader(base: type, x: np.ndarray, input_name: str):
    """An onnxruntime.quantization CalibrationDataReader (`base`) over the images in batches of 64."""

    class Reader(base):  # type: ignore[misc, valid-type]
        def __init__(self):
            self.batches = iter([{input_name: x[i:i + 64]} for i in range(0, len(x), 64)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def evaluate_onnx(path: str | Path, x_uint8: np.ndarray, y: np.ndarray, mean, std, threads: int = 1
                  ) -> tuple[float, np.ndarray]:
    """(accuracy, predicted classes) of the ONNX file on the images, with ONNX Runtime on the CPU."""
    session = onnx_session(path, threads)
    pred = np.concatenate([_run(session, normalize(x_uint8[i:i + 2048], mean, std)).argmax(1)
                           for i in range(0, len(x_uint8), 2048)])
    return float((pred == np.asarray(y)).mean()), pred


def measure_speed(path: str | Path, x_uint8: np.ndarray, mean, std, threads: int = 1, seconds: float | None = None
                  ) -> dict:
    """ONNX Runtime on the CPU: median latency of one image (batch 1, ms) over runs filling about `seconds`
    (None: timing_seconds()), and images/s at batch 256 (median of at least 3 runs); inputs are real images,
    repeated if too few."""
    seconds = timing_seconds() if seconds is None else seconds
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    x = normalize(x_uint8[:256], mean, std)
    batch = np.ascontiguousarray(np.resize(x, (256, *x.shape[1:])))

    def timed(feed: np.ndarray, warmup: int, budget: float, at_least: int) -> list[float]:
        for _ in range(warmup):
            session.run(None, {name: feed})
        times: list[float] = []
        end = time.perf_counter() + budget
        while len(times) < at_least or time.perf_counter() < end:
            t0 = time.perf_counter()
            session.run(None, {name: feed})
            times.append(time.perf_counter() - t0)
            if len(times) >= 10_000:
                break
        return times

    single = timed(x[:1], 10, seconds, 20)
    full = timed(batch, 1, seconds, 3)
    return {"latency_ms_b1": round(statistics.median(single) * 1e3, 4), "runs_b1": len(single),
            "images_per_s_b256": round(256 / statistics.median(full), 1), "runs_b256": len(full),
            "threads": threads, "cpu": cpu_name()}


def _kb(path: Path) -> float:
    return round(path.stat().st_size / 1024, 1)


def timing_seconds() -> float:
    """Seconds of each speed measurement of deploy() (per file and batch size): SECONDS, or the environment's
    TINYNAS_ONNX_SECONDS (the test suite sets it low: its timings are not figures anyone reads)."""
    text = os.environ.get(SECONDS_ENV)
    if text is None:
        return SECONDS
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise DeployError(f"{SECONDS_ENV} must be a positive number of seconds, got {text!r}")
    return value


def deploy(model: nn.Module, fp32_path: str | Path, data, torch_acc: float, int8_path: str | Path | None = None,
           threads: int = 1, log: Callable[[str], None] = print, seed: int = 0, seconds: float | None = None) -> dict:
    """Export `model` (trained on data.x_train, normalised with data.mean/std) to fp32_path, verify it,
    quantize it to int8_path (None: no int8), evaluate both on the whole test set and time them; returns the
    figures for the reports. `torch_acc` is PyTorch's test accuracy, reported beside the ONNX ones; `seconds`
    of timing per file and batch size (None: timing_seconds())."""
    fp32_path = Path(fp32_path)
    t0 = time.perf_counter()
    export_onnx(model, fp32_path, data.mean, data.std, data.classes)
    calib = calibration_images(data.x_train, seed=seed)
    diff = verify_onnx(model, fp32_path, calib, data.mean, data.std)
    record: dict = {"torch_acc": torch_acc, "n_test": len(data.y_test), "logit_max_abs_diff": diff,
                    "logit_atol": LOGIT_ATOL, "verified_images": len(calib), "opset": _opset(fp32_path),
                    "onnxruntime": _version("onnxruntime"), "files": {"fp32": str(fp32_path)}}
    if int8_path is not None:
        quantize_int8(fp32_path, int8_path, calib, data.mean, data.std)
        record["files"]["int8"] = str(int8_path)
        record["quantization"] = ("static int8 QDQ (onnxruntime.quantization), per-channel 7-bit weights, "
                                  f"MinMax calibration on {len(calib)} training images")
    for key, path in record["files"].items():
        acc, _ = evaluate_onnx(path, data.x_test, data.y_test, data.mean, data.std, threads)
        record[key] = {"test_acc": acc, "size_kb": _kb(Path(path)),
                       **measure_speed(path, data.x_test, data.mean, data.std, threads, seconds)}
    record["seconds"] = round(time.perf_counter() - t0, 1)
    log(summary(record))
    return record


def summary(record: dict) -> str:
    """Lines for a printed summary: the accuracies side by side, then each ONNX file's size and speed."""
    kinds = [k for k in ("fp32", "int8") if k in record]
    cpu, threads = record["fp32"]["cpu"], record["fp32"]["threads"]
    lines = [f"test accuracy PyTorch {record['torch_acc']:.4f} / "
             + " / ".join(f"ONNX {k} {record[k]['test_acc']:.4f}" for k in kinds)
             + f" (ONNX Runtime, {record['n_test']:,} test images; fp32 logits within "
               f"{record['logit_max_abs_diff']:.1e} of PyTorch's)"]
    lines += [f"{record['files'][k]}: {record[k]['size_kb']:,.1f} KB, {record[k]['latency_ms_b1']:.3f} ms per image at "
              f"batch 1, {record[k]['images_per_s_b256']:,.0f} images/s at batch 256" for k in kinds]
    lines[-1] += f" (ONNX Runtime on {cpu}, {threads} thread{'s' if threads > 1 else ''})"
    return "\n".join(lines)


def _opset(path: Path) -> int:
    import onnx  # optional extra (deploy)

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    """`python -m train.deploy MODEL.onnx --dataset D`: test accuracy, size and CPU speed of an ONNX file
    written by this module (its normalisation is read from the file)."""
    p = CliParser(prog="python -m train.deploy", description=main.__doc__.split(":", 1)[1].strip())
    p.add_argument("model", help="an .onnx file written by the final retrain, search.export --onnx or train.run --onnx")
    p.add_argument("--dataset", default="cifar10", help="whose test set to evaluate (cifar10, digits, synthetic, or "
                   "the path of your own images: a folder of class folders or an .npz)")
    p.add_argument("--test-size", type=float, default=None, help="a folder of class folders without test/: the "
                   "--test-size it was trained with (default 0.2), so that the same test images are carved out")
    p.add_argument("--data-dir", default=DATA_DIR, help="holds cifar-10-batches-py/")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading CIFAR-10")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    absent = missing()
    if absent:
        raise DeployError(f"needs {', '.join(absent)} (the deploy extra): {DEPLOY_EXTRA}")
    if args.threads < 1:
        raise DeployError(f"--threads must be a positive integer, got {args.threads}")
    info = read_onnx(args.model)
    test_size = int(args.test_size) if args.test_size is not None and args.test_size >= 1 else args.test_size
    data = load_dataset(args.dataset, args.data_dir, download=not args.no_download, test_size=test_size)
    if info.classes and info.classes != data.classes:
        raise DeployError(f"{args.model} classifies {', '.join(info.classes[:3])}, ...; the {args.dataset} test set "
                          f"has {', '.join(data.classes[:3])}, ...: give the dataset it was trained on")
    acc, _ = evaluate_onnx(args.model, data.x_test, data.y_test, info.mean, info.std, args.threads)
    speed = measure_speed(args.model, data.x_test, info.mean, info.std, args.threads)
    record = {"model": str(args.model), "dataset": data.name, "n_test": len(data.y_test), "test_acc": acc,
              "size_kb": _kb(Path(args.model)), **speed}
    print(f"{args.model}: test accuracy {acc:.4f} on {len(data.y_test):,} {data.name} test images; "
          f"{record['size_kb']:,.1f} KB, {speed['latency_ms_b1']:.3f} ms per image at batch 1, "
          f"{speed['images_per_s_b256']:,.0f} images/s at batch 256 (ONNX Runtime on {speed['cpu']}, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''})")
    if args.json:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    from space.cli import run_cli

    from .data import DataError

    run_cli(main, (DeployError, DataError))
