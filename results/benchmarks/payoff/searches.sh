#!/usr/bin/env bash
# Issue 43, part 3: the 100-trained-trial TPE search and its random-search control at CPU scale: the same
# command, seed, data and rules, only --sampler differs. Run from the project root of a worktree of a fixed
# commit (the code that made the studies; payoff_cpu.md names it), with the project's virtual environment active:
#
#   bash results/benchmarks/payoff/searches.sh start DATA_DIR   # both searches in the background, one thread
#                                                               # each, niced; run it again to resume them
#   bash results/benchmarks/payoff/searches.sh snapshot DEST    # consistent copies of both study files (SQLite's
#                                                               # backup API: safe while a search writes) and logs
#
# The trial recipe (--trial-epochs, --val-size, --subset-train) is the one results/benchmarks/fidelity/ chose;
# payoff_cpu.md says why. Each search stops by itself when its study holds 100 trained trials; a kill loses only
# the trial in progress (marked failed, queued again), and `start` resumes it.
set -euo pipefail
HERE=results/benchmarks/payoff
TRIAL_EPOCHS=3
VAL_SIZE=5000
SUBSET_TRAIN=23000  # 18,000 training + 5,000 validation images, as the fidelity study's 3@18000 on val A

case "${1:-}" in
start)
    data_dir="${2:?usage: searches.sh start DATA_DIR}"
    for s in tpe random; do
        name="cifar10-$s-100"
        OMP_NUM_THREADS=1 nohup nice -n 19 python -m search.run --data-dir "$data_dir" --no-download \
            --subset-train "$SUBSET_TRAIN" --val-size "$VAL_SIZE" --trial-epochs "$TRIAL_EPOCHS" --trials 100 \
            --max-macs 20000000 --seed 0 --sampler "$s" --study-name "$name" \
            --storage "sqlite:///$HERE/$name.db" --out "$HERE/$name" --no-final --device cpu \
            >> "$HERE/$name.log" 2>&1 &
        echo "started $name (pid $!): log $HERE/$name.log"
    done
    ;;
snapshot)
    dest="${2:?usage: searches.sh snapshot DEST}"
    mkdir -p "$dest"
    for s in tpe random; do
        name="cifar10-$s-100"
        [ -f "$HERE/$name.db" ] || continue
        python - "$HERE/$name.db" "$dest/$name.db" <<'EOF'
import sqlite3, sys
src, dst = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
src.backup(dst)  # a consistent copy even while the search writes
dst.close(); src.close()
EOF
        cp "$HERE/$name.log" "$dest/$name.log"
    done
    ;;
*)
    echo "usage: searches.sh start DATA_DIR | snapshot DEST" >&2
    exit 2
    ;;
esac
