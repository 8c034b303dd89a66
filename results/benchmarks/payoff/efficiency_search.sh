#!/usr/bin/env bash
# Issue 43, part 4's lever: the efficiency goal (a searched net as accurate as each feasible preset at <= 0.6x
# its measured int8 latency) asks for nets the two searches of searches.sh do not propose: under a 20 M MACs cap
# their construction fills the MACs budget, and latency on this CPU follows layer count and resolution more
# than MACs (round 3's int8 table: 4 M-MACs random nets span 0.036-0.24 ms; seed001, 7.6 M MACs, 0.076 ms).
# So one more TPE search, the same command as searches.sh's plus a latency budget on this machine's int8 table:
# 0.045 ms, under 0.6x seed001's predicted 0.0763 ms (the faster feasible preset; seed003_net 0.0835) with the
# table's median error (~3 %) to spare. Random search is no control here: in an ask/tell run without training
# (search.loop.Search with a fake trainer), TPE needed 96 proposals for 40 nets within the budget, random search
# 3,427 for 4 before the loop gave up (latency_budget_sim.py). Run from the project root of a worktree of a fixed commit (payoff_cpu.md
# names it), the virtual environment active:
#
#   bash results/benchmarks/payoff/efficiency_search.sh start DATA_DIR    # in the background; again to resume
#   bash results/benchmarks/payoff/efficiency_search.sh snapshot DEST     # consistent copy of the study and log
#
# Budget: 100 trained trials at first (21:00-23:05 UTC on 2026-12-07); they found a net for seed003_net but none
# for seed001 (the best within the budget 0.6604 in the trials against seed001's 0.6624), so the same study was
# resumed to 200 trained trials (the "budget" lever; same commit, seed and recipe: only --trials grew).
set -euo pipefail
HERE=results/benchmarks/payoff
NAME=cifar10-tpe-lat045
TABLE=results/benchmarks/latency_unseen/round3/table_int8.json
TRIALS=200
case "${1:-}" in
start)
    data_dir="${2:?usage: efficiency_search.sh start DATA_DIR}"
    OMP_NUM_THREADS=1 nohup nice -n 19 python -m search.run --data-dir "$data_dir" --no-download \
        --subset-train 23000 --val-size 5000 --trial-epochs 3 --trials "$TRIALS" --max-macs 20000000 \
        --latency-table "$TABLE" --max-latency-ms 0.045 --seed 0 --sampler tpe --study-name "$NAME" \
        --storage "sqlite:///$HERE/$NAME.db" --out "$HERE/$NAME" --no-final --device cpu >> "$HERE/$NAME.log" 2>&1 &
    echo "started $NAME (pid $!): log $HERE/$NAME.log"
    ;;
snapshot)
    dest="${2:?usage: efficiency_search.sh snapshot DEST}"
    mkdir -p "$dest"
    python -c "import sqlite3, sys; s, d = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2]); s.backup(d)" \
        "$HERE/$NAME.db" "$dest/$NAME.db"
    cp "$HERE/$NAME.log" "$dest/$NAME.log"
    ;;
*)
    echo "usage: efficiency_search.sh start DATA_DIR | snapshot DEST" >&2
    exit 2
    ;;
esac
