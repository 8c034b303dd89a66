import os
import signal

# albumentations otherwise asks the network for updates on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Each final retrain times its ONNX files (train.deploy): 2 s per file and batch size; a test needs the
# figures to exist, not to be steady. Every command a test starts inherits it.
os.environ.setdefault("TINYNAS_ONNX_SECONDS", "0.2")

# Under pytest-xdist (`-n auto`: one worker per core) each worker and every command it starts would also
# start one intra-op thread per core, cores x cores threads fighting for the cores. One each instead; a
# command that sets its own threads (search.run --jobs: OMP_NUM_THREADS per worker) still does.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# A test run started in the background by a non-interactive shell (`bash .ci/run &`) inherits SIGINT as
# ignored, and so would every command a test starts: the Ctrl-C tests would then see their search finish
# instead of stop. Python's own handler here means the default disposition in every child after exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
