#!/usr/bin/env bash
# Issue 43, parts 2-4, once both searches of searches.sh hold 100 trained trials: the finalists re-ranked in
# both studies, the 5-seed final table (TPE's winner, random search's winner, the feasible presets, the
# efficiency nets) and the one command that tabulates it. Run from the project root of the worktree that ran
# the searches, its virtual environment active:
#
#   bash results/benchmarks/payoff/finals.sh DATA_DIR [EXTRA ...]
#
# EXTRA: efficiency.py's nets in --compare syntax (a TPE trial as its number N, a random-search trial as
# study:cifar10-random-100#N). Everything below is search.retrain's own work, run ahead two processes at a
# time (one thread each, niced) by payoff_prefill.py into the caches the command reads (OUT/runs/, keyed by
# genome, recipe, seed and images); the last step then trains nothing new, writes final.json and report.md.
# A kill loses at most the epochs in progress of two runs; run the same command again to resume.
set -euo pipefail
SCRIPTS=results/benchmarks/payoff
# (the environment may override these for a trial run on small studies elsewhere)
HERE=${HERE:-$SCRIPTS}             # where the study files are and the outputs go
EPOCHS=${EPOCHS:-10}               # the final recipe's epochs (docs/search.md's CPU-scale command)
SEEDS=${SEEDS:-5}
K=${K:-5}                          # --finalists
TPE=${TPE:-cifar10-tpe-100}
RND=${RND:-cifar10-random-100}
data="${1:?usage: finals.sh DATA_DIR [EXTRA ...]}"
shift
url() { echo "sqlite:///$HERE/$1.db"; }
prefill() { OMP_NUM_THREADS=1 nice -n 19 python "$SCRIPTS/payoff_prefill.py" "$@"; }

extra_compare="" extra_prefill=""
for e in "$@"; do
    extra_compare+=",$e"
    case "$e" in
    study:*) name="${e#study:}"; extra_prefill+=" $e@$(url "${name%%#*}")" ;;
    *) extra_prefill+=" study:$TPE#$e@$(url $TPE)" ;;
    esac
done

echo "[$(date -u +%FT%TZ)] 1. finalists: the $K best trials of each study at the final fidelity"
finalists=$(seq -f "finalist:%g" 1 $K | tr '\n' ' ')
prefill "$(url $TPE)" $TPE "$HERE/final-$TPE" $EPOCHS "$data" 1 $finalists rerank:$K >> "$HERE/finals-$TPE.log" 2>&1 &
prefill "$(url $RND)" $RND "$HERE/final-$RND" $EPOCHS "$data" 1 $finalists rerank:$K >> "$HERE/finals-$RND.log" 2>&1 &
wait

echo "[$(date -u +%FT%TZ)] 2. the final table's runs: one process per seed, two at a time"
nets="study:$TPE@$(url $TPE) study:$RND@$(url $RND) seed001 seed003_net$extra_prefill"
seq 0 $((SEEDS - 1)) | xargs -P 2 -I{} bash -c "OMP_NUM_THREADS=1 nice -n 19 python $SCRIPTS/payoff_prefill.py \
    $(url $TPE) $TPE $HERE/final-$TPE $EPOCHS $data seed={} $nets >> $HERE/finals-seed{}.log 2>&1"

echo "[$(date -u +%FT%TZ)] 3. the command itself (every run cached)"
OMP_NUM_THREADS=1 python -m search.retrain --storage "$(url $TPE)" --study-name $TPE --data-dir "$data" --no-download \
    --device cpu --final-epochs $EPOCHS --finalists $K --final-seeds $SEEDS --out "$HERE/final-$TPE" \
    --compare "presets,study:$RND$extra_compare" 2>&1 | tee -a "$HERE/finals-retrain.log"
echo "[$(date -u +%FT%TZ)] done: $HERE/final-$TPE/final.json, report.md"
