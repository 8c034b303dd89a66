"""Same command, same seed, before and after: trial by trial and the final figures."""
import json, sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
def trials(d):
    s = optuna.load_study(study_name="digits-nas", storage=f"sqlite:///{d}/s.db")
    return [(t.number, t.state.name, t.values, t.params, t.user_attrs.get("genome"), t.user_attrs.get("rejected"),
             sorted(t.intermediate_values.items())) for t in s.get_trials()]
a, b = trials(sys.argv[1]), trials(sys.argv[2])
print("trials:", len(a), len(b), "identical" if a == b else "DIFFER")
for x, y in zip(a, b):
    if x != y: print("  ", x[:3], "|", y[:3])
fa, fb = (json.load(open(f"{d}/out/final.json")) for d in sys.argv[1:3])
keys = ["trial", "genome", "test_acc", "test_acc_tta", "test_loss", "train_acc", "val_acc", "epochs", "n_train", "n_test", "y_pred"]
for k in keys:
    print(f"final {k}: {'same' if fa.get(k) == fb.get(k) else 'DIFFER'}" + ("" if k in ("genome", "y_pred") else f" ({fa.get(k)} / {fb.get(k)})"))
ha = [(h["train_loss"], h["train_acc"]) for h in fa["history"]]; hb = [(h["train_loss"], h["train_acc"]) for h in fb["history"]]
print("final history (train loss, acc per epoch):", "same" if ha == hb else "DIFFER")
