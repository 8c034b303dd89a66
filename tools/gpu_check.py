"""The GPU checks in one device call of at most about 6 minutes, for the first session that is lent a GPU.
Never yet run on one: the part limits below are estimates from the sizes, not measurements.

    bash ../shared/gpu/stage                                  # here, once: wheels, CIFAR-10, node.sh -> .gpu/
    # device tool, carry [".gpu"], timeout_s 420:
    bash .gpu/node.sh python tools/gpu_check.py --data-dir /tmp/cifar10 "$OUT"

Each part runs in its own subprocess under its own time limit (and all of them under --budget seconds), and
its result, or its error text, is written to OUT/gpu_check.json as soon as it ends, with its full output in
OUT/<part>.log: a part that crashes, hangs or is cut off loses nothing of the others. Parts, in this order:
  search       (a) one trial of a real `search.run` on CIFAR-10 (a subset, 2 epochs), no final retrain;
  resume       (b) `search.run` with a final retrain, killed (SIGKILL) while its trial trains, run again (the
               dead trial is queued again and trained), killed again once the final retrain has written a
               checkpoint, and run a third time: the retrain resumes from that checkpoint (issue 21's RNG states)
               and must finish;
  syncs        (e) the CUDA batched augmentation (on the device, same seed same batch), and one epoch of
               seed003_net on two slice sizes under torch.cuda.set_sync_debug_mode("warn"): the host syncs
               per epoch must not grow with the steps;
  train_bench  (c) `train.bench seed003_net --cuda-graphs`: eager against torch.compile with CUDA graphs (mode
               "reduce-overhead"); one cold compilation, not two, to fit its limit; a failed compile still
               leaves the eager figures and the error in train.bench's JSON;
  search_bench (d) `search.bench --json` at 1 and 2 jobs (at least 2 runs each: 4 spawned measurements of about
               15 s), with what `--jobs auto` picks on this node.
The per-part limits add up to the budget at most (`fit_limits`, printed at the start); a smaller --budget
shrinks them in proportion. The report is saved before anything touches CUDA (a CUDA that fails to
initialise is recorded in it, as "gpu_error").
The exit code is 0 only if every part exited 0 and passed its own check; `--fail PART` (or the environment
variable GPU_CHECK_FAIL=PART) makes that part fail on purpose, to see that the others still report.

`--device cpu --quick` runs the same plumbing on a CPU (tiny subsets, no compilation, limits x6); its figures
mean nothing. Rehearsed on the 2-core VM with other jobs running (load average about 15), 2026-11-30: all five
parts passed, exit 0, in 508 s (search 133, resume 209, syncs 35, train_bench 65, search_bench 65); with
GPU_CHECK_FAIL=search and --only search,syncs: search failed on purpose, syncs' figures still in the JSON, exit 1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("search", "resume", "syncs", "train_bench", "search_bench")
# Seconds, estimates that add up to the default --budget (330): search one 2-epoch trial plus start-up; resume
# three runs; train_bench start-up, ~10 s eager and one cold compile; search_bench 4 spawned measurements.
LIMITS = {"search": 40, "resume": 100, "syncs": 35, "train_bench": 85, "search_bench": 70}


def fit_limits(limits: dict[str, float], budget: float) -> dict[str, float]:
    """The part limits, shrunk in proportion where they add up to more than `budget` seconds."""
    total = sum(limits.values())
    return dict(limits) if total <= budget else {k: v * budget / total for k, v in limits.items()}


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _last_json(stdout: str):
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def run_command(argv: list[str], timeout: float, log: Path, env: dict | None = None) -> dict:
    """Run `python ARGV`; {command, exit ("timeout" when cut off), seconds, json (its last JSON line), error}."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        code = "timeout"
        stdout, stderr = ((s.decode(errors="replace") if isinstance(s, bytes) else s or "") for s in (e.stdout, e.stderr))
    with open(log, "a") as f:
        f.write(f"$ python {' '.join(argv)}\n{stdout}\n--- stderr ---\n{stderr}\n--- exit {code} ---\n")
    result = {"command": "python " + " ".join(argv), "exit": code, "seconds": round(time.perf_counter() - t0, 1),
              "json": _last_json(stdout)}
    if code != 0:
        result["error"] = _tail(stderr or stdout)
    return result


# ---- part (b): kill and resume -------------------------------------------------------------------------

def _running_trials(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _run_until(argv: list[str], until, timeout: float, log: Path) -> dict:
    """Start `python ARGV`, SIGKILL it as soon as until() is true; {killed, exit, seconds}."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ python {' '.join(argv)}   (killed once the condition holds)\n")
        f.flush()
        p = subprocess.Popen([sys.executable, *argv], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        killed = False
        while p.poll() is None and time.perf_counter() - t0 < timeout:
            if until():
                p.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.2)
        if p.poll() is None and not killed:
            p.kill()
        code = p.wait()
        f.write(f"--- exit {code}{' (killed on purpose)' if killed else ''} ---\n")
    return {"killed": killed, "exit": code, "seconds": round(time.perf_counter() - t0, 1)}


def _checkpoint(folder: Path) -> Path | None:
    """The final retrain's checkpoint while it trains (search.seedrun's cache: runs/<key>.pt), if any."""
    return next((p for p in (folder / "runs").glob("*.pt") if not p.name.endswith(".model.pt")), None)


def part_resume(args: argparse.Namespace, out: Path, deadline: float) -> dict:
    import torch

    folder = out / "resume"
    folder.mkdir(exist_ok=True)
    db, log = folder / "study.db", out / "resume.log"
    argv = ["-m", "search.run", *_search_flags(args), "--trials", "1", "--final-epochs", "2" if args.quick else "3",
            "--storage", str(db), "--out", str(folder), "--study-name", "resume", "--json"]
    report: dict = {}
    first_seen: list[float] = []

    def mid_trial() -> bool:  # a trial has been RUNNING for a second: it is training, not yet finished
        if _running_trials(db):
            first_seen.append(time.perf_counter())
            return first_seen[-1] - first_seen[0] >= 1.0
        first_seen.clear()
        return False

    report["kill_in_trial"] = _run_until(argv, mid_trial, deadline - time.perf_counter(), log)
    report["kill_in_final"] = _run_until(argv, lambda: _checkpoint(folder) is not None,
                                         deadline - time.perf_counter(), log)
    ckpt = _checkpoint(folder)
    if ckpt is not None:
        time.sleep(0.5)  # written atomically (os.replace), but let the kill land first
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        report["checkpoint_epochs_at_kill"] = len(state["history"])
    report["rerun"] = run_command(argv, deadline - time.perf_counter(), log)
    final = folder / "final.json"
    report["final"] = json.loads(final.read_text()) if final.exists() else None
    if report["final"]:
        report["final"] = {k: report["final"].get(k) for k in ("trial", "epochs", "test_acc", "device", "wall_seconds")}
    report["ok"] = bool(report["kill_in_trial"]["killed"] and report["kill_in_final"]["killed"]
                        and report.get("checkpoint_epochs_at_kill", 0) >= 1 and report["rerun"]["exit"] == 0
                        and report["final"])
    return report


# ---- part (e): syncs and the CUDA augmentation, in its own process --------------------------------------

def part_syncs(args: argparse.Namespace) -> dict:
    import torch

    from space import load_spec
    from train.augment import AugmentConfig, BatchAugment
    from train.data import load_dataset
    from train.engine import TrainConfig, train

    device = args.device
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device=device)
    aug = BatchAugment((0.49, 0.48, 0.45), (0.25, 0.24, 0.26), AugmentConfig())
    a, b, c = (aug(x, torch.Generator(device=device).manual_seed(s)) for s in (0, 0, 1))
    report: dict = {"augment_ok": bool(a.device == x.device and torch.isfinite(a).all() and torch.equal(a, b)
                                       and not torch.equal(a, c))}
    data = load_dataset("cifar10", args.data_dir, download=False)
    (sizes, batch), n_test = (((128, 384), 32), 128) if args.quick else (((5_000, 20_000), 128), 1024)
    cuda = device.startswith("cuda")
    report["epochs"] = []
    for n in sizes:
        sliced = data.subset(n, min(n_test, len(data.y_test)), seed=0)
        cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.2, device=device, eval_every=1, checkpoint=None)
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
        report["epochs"].append({"train_images": n, "steps": n // batch, "status": result.status,
                                 "syncs": len(syncs), "first_syncs": syncs[:5],
                                 "images_per_s": round(h.images_per_s, 1), "val_acc": round(h.val_acc, 4)})
    report["syncs_independent_of_steps"] = report["epochs"][0]["syncs"] == report["epochs"][1]["syncs"]
    report["ok"] = bool(report["augment_ok"] and report["syncs_independent_of_steps"]
                        and all(e["status"] == "completed" for e in report["epochs"]))
    return report


# ---- the parts as commands ---------------------------------------------------------------------------------

def _search_flags(args: argparse.Namespace) -> list[str]:
    # --quick: small sampled nets instead of the presets (seed003_dilated trains for minutes on a busy CPU)
    quick = ["--batch-size", "32", "--no-presets", "--max-params", "50000", "--min-rf", "30"] if args.quick else []
    sizes = ["300", "100", "100"] if args.quick else ["5000", "1000", "1000"]
    return ["--dataset", "cifar10", "--data-dir", args.data_dir, "--no-download", "--device", args.device,
            "--trial-epochs", "2", "--subset-train", sizes[0], "--val-size", sizes[1], "--subset-test", sizes[2],
            *quick]


def part_command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    self_call = [str(Path(__file__).resolve()), "--device", args.device, "--data-dir", args.data_dir,
                 "--scale", str(args.scale),
                 *(["--quick"] if args.quick else []), "--part", name, str(out)]
    if name == "search":
        return ["-m", "search.run", *_search_flags(args), "--trials", "1", "--no-final", "--study-name", "check",
                "--storage", str(out / "search" / "study.db"), "--out", str(out / "search"), "--json"]
    if name == "train_bench":
        timing = ["--seconds", "1", "--repeats", "1"] if args.quick else ["--seconds", "3", "--repeats", "1",
                                                                           "--cuda-graphs"]
        return ["-m", "train.bench", "seed003_net", "--dataset", "cifar10", "--data-dir", args.data_dir,
                "--device", args.device, *timing, "--json"]
    if name == "search_bench":
        sizes = ["--jobs", "1", "--seconds", "1", "--genomes", "1"] if args.quick else \
            ["--jobs", "1,2", "--seconds", "4", "--genomes", "2", "--steps", "10", "--repeats", "2"]
        return ["-m", "search.bench", "--device", args.device, *sizes, "--json"]
    return self_call  # resume, syncs: functions of this file, in their own process


def check(name: str, result: dict) -> bool:
    """A part's own pass condition, beyond its exit code."""
    data = result.get("json") or {}
    if result["exit"] != 0:
        return False
    if name == "search":
        return data.get("trained") == 1 and data.get("best_val_acc") is not None
    if name in ("resume", "syncs"):
        return bool(data.get("ok"))
    if name == "train_bench":
        return "pipeline_images_per_s" in data
    if name == "search_bench":
        return "best_jobs" in data and "auto_jobs" in data
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder for gpu_check.json and the logs (the device tool's $OUT)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-dir", default="/tmp/cifar10", help="holds cifar-10-batches-py/")
    p.add_argument("--quick", action="store_true", help="tiny subsets, no compilation: a plumbing test on CPU")
    p.add_argument("--budget", type=float, default=330.0, help="seconds for all parts together (times --scale)")
    p.add_argument("--scale", type=float, default=None, help="multiply every time limit and the budget (default 1; "
                   "--quick: 6, for a shared CPU that runs everything several times slower)")
    p.add_argument("--only", default=None, help="comma-separated parts to run (default: all)")
    p.add_argument("--fail", default=os.environ.get("GPU_CHECK_FAIL"), choices=PARTS,
                   help="make this part fail on purpose (also GPU_CHECK_FAIL=PART)")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # run one in-process part (a subprocess)
    args = p.parse_args()
    args.scale = args.scale or (6.0 if args.quick else 1.0)
    budget = args.budget * args.scale
    limits = fit_limits({k: v * args.scale for k, v in LIMITS.items()}, budget)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.data_dir = str(Path(args.data_dir).resolve())
    if args.part == "syncs":
        print(json.dumps(part_syncs(args)))
        return 0
    if args.part == "resume":
        print(json.dumps(part_resume(args, out, time.perf_counter() + limits["resume"] - 5)))
        return 0

    report: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "device": args.device, "quick": args.quick, "made_to_fail": args.fail, "budget": round(budget, 1),
                    "limits": {k: round(v, 1) for k, v in limits.items()}, "parts": {}}

    def save() -> None:
        tmp = out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, out / "gpu_check.json")

    save()  # before torch, let alone CUDA: a failing CUDA initialisation still leaves this file
    print(f"[gpu_check] limits: {' + '.join(f'{k} {v:.0f}' for k, v in limits.items())} = "
          f"{sum(limits.values()):.0f} s of a budget of {budget:.0f} s", file=sys.stderr, flush=True)
    t_end = time.perf_counter() + budget
    try:
        import torch
        report["torch"] = torch.__version__
        report["gpu"] = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    except Exception as e:  # noqa: BLE001 - recorded; the parts, each in its own process, say the rest
        report["gpu_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    save()
    parts = [q for q in PARTS if args.only is None or q in args.only.split(",")]
    for name in parts:
        left = t_end - time.perf_counter()
        if left < 10:
            report["parts"][name] = {"exit": "skipped", "error": f"no time left of --budget {args.budget:g} s "
                                     f"x --scale {args.scale:g}"}
            save()
            continue
        argv = part_command(name, args, out)
        if name == args.fail:
            argv = ["-c", f"import sys; sys.exit('gpu_check: part {name} made to fail on purpose (--fail)')"]
        print(f"[gpu_check] {name}: up to {min(limits[name], left):.0f} s", file=sys.stderr, flush=True)
        result = run_command(argv, min(limits[name], left), out / f"{name}.log")
        result["ok"] = check(name, result)
        report["parts"][name] = result
        save()
        print(f"[gpu_check] {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s"
              + ("" if result["ok"] else f": {result.get('error', '')[-300:]}"), file=sys.stderr, flush=True)
    failed = [n for n, r in report["parts"].items() if not r.get("ok")]
    report["failed"] = failed
    save()
    print(json.dumps(report, indent=1))
    print("gpu_check:", "all parts ran and passed" if not failed else f"FAILED: {', '.join(failed)} (gpu_check.json, "
          "<part>.log)")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
