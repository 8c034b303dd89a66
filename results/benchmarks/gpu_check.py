"""Issue 10's GPU checks in one call, for the first session that is lent a GPU (never yet run on one: parts 2
and 3 are limited to 200 s and 300 s, part 1 is two one-epoch runs of at most 20,000 images; 6-7 minutes in
all is an estimate from those sizes, not a measurement).

    bash ../shared/gpu/stage                                  # here, once: wheels, CIFAR-10, node.sh -> .gpu/
    # device tool, carry [".gpu"], timeout_s 560:
    bash .gpu/node.sh python results/benchmarks/gpu_check.py "$OUT"

What it runs (the benches under their own time limits, so that a slow one cannot eat the other's minutes;
gpu_check.json is rewritten after each part, so what finished comes back even if the call is cut off):
  1. CUDA correctness of the training path (what CI cannot run):
     - the batched augmentation (train.augment.BatchAugment) on CUDA with a CUDA generator: finite, on the
       device, the same batch for the same seed;
     - train.engine.train of seed003_net on CIFAR-10 slices of two sizes, one epoch each, with
       torch.cuda.set_sync_debug_mode("warn"): the host syncs it reports must not grow with the steps
       (the training step itself never waits on the host), and the images/s of each;
  2. `python -m train.bench seed003_net --device cuda --compile --seconds 10 --repeats 2 --json`:
     eager against torch.compile (issue 10: keep --compile only if it pays);
  3. `python -m search.bench --device cuda --json`: aggregate images/s at 1, 2, 4, 8 jobs and the projected
     wall time of `search.run --trials 100` with the final retrain; the `--jobs auto` rule is checked
     against it.
Everything goes to OUT_DIR (the device tool's $OUT): gpu_check.json (all figures, the GPU, torch, date)
and one log per part. Copy the figures into a results/benchmarks/*.md with this command and the date.

`--device cpu --quick` runs the same plumbing on a CPU with synthetic data (76 s on the 2-core VM) (how this
script was tested before any GPU was available); its figures mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from space import load_spec  # noqa: E402
from train.augment import AugmentConfig, BatchAugment  # noqa: E402
from train.data import load_dataset, make_synthetic  # noqa: E402
from train.engine import TrainConfig, train  # noqa: E402


def check_augment(device: str) -> dict:
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device=device)
    aug = BatchAugment((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), AugmentConfig())
    a = aug(x, torch.Generator(device=device).manual_seed(0))
    b = aug(x, torch.Generator(device=device).manual_seed(0))
    c = aug(x, torch.Generator(device=device).manual_seed(1))
    ok = (a.device.type == torch.device(device).type and a.shape == (256, 3, 32, 32) and bool(torch.isfinite(a).all())
          and torch.equal(a, b) and not torch.equal(a, c))
    return {"ok": ok, "dtype": str(a.dtype)}


def syncs_and_rate(data, n_train: int, device: str, batch: int) -> dict:
    """One epoch of seed003_net on n_train images; the host syncs CUDA's sync debug mode reports."""
    sliced = data.subset(n_train, min(1024, len(data.y_test)), seed=0)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.2, device=device, eval_every=1, checkpoint=None)
    cuda = device.startswith("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            result = train(load_spec("seed003_net"), cfg, sliced)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    h = result.history[-1]
    return {"train_images": n_train, "steps": -(-n_train // batch), "status": result.status, "syncs": len(syncs),
            "first_syncs": syncs[:5], "images_per_s": round(h.images_per_s, 1), "val_acc": round(h.val_acc, 4)}


def run_part(name: str, argv: list[str], out: Path, timeout: int) -> dict:
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code, stdout, stderr = "timeout", e.stdout or "", e.stderr or ""
        stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    (out / f"{name}.log").write_text(f"$ python {' '.join(argv)}\n{stdout}\n--- stderr ---\n{stderr}")
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    try:
        figures = json.loads(last)
    except json.JSONDecodeError:
        figures = None
    return {"command": "python " + " ".join(argv), "exit": code, "seconds": round(time.perf_counter() - t0, 1),
            "json": figures}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder for gpu_check.json and the logs (the device tool's $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir", default="/tmp/cifar10")
    p.add_argument("--quick", action="store_true", help="synthetic data, tiny sizes: a plumbing test on CPU")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "torch": torch.__version__, "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1))

    report["augment"] = check_augment(args.device)
    save()
    if args.quick:
        data, sizes, batch, data_flags = make_synthetic(512, 256), (128, 384), 16, ["--dataset", "synthetic"]
    else:
        data, sizes, batch = load_dataset("cifar10", args.data_dir, download=False), (5_000, 20_000), 128
        data_flags = ["--dataset", "cifar10", "--data-dir", args.data_dir]
    report["step"] = [syncs_and_rate(data, n, args.device, batch) for n in sizes]
    report["syncs_independent_of_steps"] = report["step"][0]["syncs"] == report["step"][1]["syncs"]
    save()
    seconds, repeats = ("2", "1") if args.quick else ("10", "2")
    report["train_bench"] = run_part("train_bench", ["-m", "train.bench", "seed003_net", *data_flags, "--device",
                                                     args.device, "--compile", "--seconds", seconds, "--repeats",
                                                     repeats, "--json"], out, timeout=200)
    save()
    bench = ["-m", "search.bench", "--device", args.device, "--json"]
    if args.quick:
        bench += ["--jobs", "1,2", "--seconds", "2"]
    report["search_bench"] = run_part("search_bench", bench, out, timeout=300)
    save()
    print(json.dumps(report, indent=1))
    ok = (report["augment"]["ok"] and report["syncs_independent_of_steps"]
          and all(s["status"] == "completed" for s in report["step"])
          and report["train_bench"]["exit"] == 0 and report["search_bench"]["exit"] == 0)
    print("gpu_check:", "all parts ran and passed" if ok else "SOME PART FAILED: see gpu_check.json and the logs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
