"""int8 test accuracy of one fp32 ONNX file (written by train.deploy) under quantization variants.

    python results/benchmarks/deploy/deploy_quant_variants.py MODEL.onnx --dataset digits [--data-dir DIR]

Each variant quantizes the same file with onnxruntime.quantization.quantize_static on the same
train.deploy.CALIBRATION_IMAGES training images and is evaluated with ONNX Runtime on the whole test set.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from train.data import load_dataset
from train.deploy import _calibration_reader, calibration_images, evaluate_onnx, normalize, read_onnx


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="data")
    args = p.parse_args()
    info = read_onnx(args.model)
    data = load_dataset(args.dataset, args.data_dir)
    x = normalize(calibration_images(data.x_train), info.mean, info.std)
    fp32, _ = evaluate_onnx(args.model, data.x_test, data.y_test, info.mean, info.std)
    print(f"fp32: {fp32:.4f} on {len(data.y_test)} test images; calibration on {len(x)} training images")
    with tempfile.TemporaryDirectory() as tmp:
        prep = str(Path(tmp) / "prep.onnx")
        quant_pre_process(args.model, prep, skip_symbolic_shape=True)
        nodes = [n.name for n in onnx.load(prep).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        base = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
        variants = {
            "QDQ, per-channel 8-bit weights, int8 activations, MinMax": {},
            "the same without quant_pre_process": {"_raw": True},
            "uint8 activations": {"activation_type": QuantType.QUInt8},
            "QOperator, uint8 activations": {"quant_format": QuantFormat.QOperator, "activation_type": QuantType.QUInt8},
            "Entropy calibration": {"calibrate_method": CalibrationMethod.Entropy},
            "Percentile calibration": {"calibrate_method": CalibrationMethod.Percentile},
            "first conv and classifier in fp32": {"nodes_to_exclude": [nodes[0], nodes[-1]]},
            "per-tensor 8-bit weights": {"per_channel": False},
            "per-channel 7-bit weights (reduce_range, the default of train.deploy)": {"reduce_range": True},
            "per-tensor 7-bit weights": {"per_channel": False, "reduce_range": True},
        }
        for name, change in variants.items():
            change = dict(change)
            source = args.model if change.pop("_raw", False) else prep
            out = str(Path(tmp) / "q.onnx")
            quantize_static(source, out, _calibration_reader(CalibrationDataReader, x, "input"), **{**base, **change})
            acc, _ = evaluate_onnx(out, data.x_test, data.y_test, info.mean, info.std)
            print(f"| {name} | {acc:.4f} |", flush=True)


if __name__ == "__main__":
    main()
