"""How many proposals does the search need to train N nets under a latency budget? No training: the search
loop (search.loop.Search) runs with the test suite's fake trainer (tests/search_helpers.FakeTrain), so only the
sampler, the analytic rejection and the constraint feedback act. efficiency_search.sh's header quotes it:

    python results/benchmarks/payoff/latency_budget_sim.py 20000000 0.045 40 tpe      # 96 proposals for 40
    python results/benchmarks/payoff/latency_budget_sim.py 20000000 0.045 40 random   # 3,427 for 4, then gave up

Arguments: --max-macs, --max-latency-ms (on round 3's int8 table), trained trials wanted, sampler.
"""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import optuna  # noqa: E402

from search.loop import Search  # noqa: E402
from search.trials import genome_of, val_acc  # noqa: E402
from search_helpers import FakeTrain, memory_study, settings  # noqa: E402
from space.latency import load_table, predict_latency  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
table = load_table(ROOT / "results/benchmarks/latency_unseen/round3/table_int8.json")
macs, ms, n, sampler = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = settings(max_macs=macs, max_latency_ms=ms, latency_table=table, sampler=sampler)
study, lines, t0 = memory_study(s), [], time.time()
try:
    Search(study, s, 10, FakeTrain(epochs=3), n, log=lines.append).run()
except Exception as e:  # the loop gives up after too many rejections in a row: that is a finding here
    print("stopped:", type(e).__name__, str(e)[:300])
trained = [t for t in study.trials if val_acc(t) is not None]
print(f"--max-macs {macs} --max-latency-ms {ms} --sampler {sampler}: {len(study.trials)} proposals for "
      f"{len(trained)} trained nets ({time.time() - t0:.0f} s); their predicted ms, fastest first:",
      sorted(round(predict_latency(genome_of(t), table).ms, 3) for t in trained)[:10])
