"""train.deploy on the EMA weights of a train.run checkpoint (e.g. of a run not finished yet).

    python results/benchmarks/deploy/deploy_from_checkpoint.py CHECKPOINT.pt SPEC OUT_DIR [--dataset cifar10] [--data-dir DIR]

Prints PyTorch / ONNX fp32 / ONNX int8 test accuracies, sizes and CPU speeds, then the record as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from space import build, load_spec
from train.data import load_dataset
from train.deploy import deploy
from train.engine import predict_images


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("spec")
    p.add_argument("out")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="data")
    args = p.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)  # a GPU run's checkpoint too
    net = build(load_spec(args.spec))
    net.load_state_dict(state["ema"]["model"] if state.get("ema") else state["model"])
    print(f"epochs in the checkpoint: {[h['epoch'] for h in state['history']]}")
    data = load_dataset(args.dataset, args.data_dir, download=False)
    logits, labels, _ = predict_images(net, data.x_test, data.y_test, data.mean, data.std)
    acc = float((logits.argmax(1) == labels).float().mean())
    out = Path(args.out)
    record = deploy(net, out / "model.onnx", data, acc, int8_path=out / "model.int8.onnx", seconds=1.0)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
