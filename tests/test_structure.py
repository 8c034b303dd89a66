"""The code's shape, read from its syntax tree: the layers, imports at the top, the one owner of a trial's state,
short functions."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package may import from the project and from Optuna: search uses train uses space, never back up;
# train never imports optuna (the training knows nothing of the search around it).
FORBIDDEN = {"space": ("train", "search", "optuna"), "train": ("search", "optuna")}

def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.Module) -> set[str]:
    """Top-level names of every module imported anywhere in the file (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package):
    wrong = {f"{p.relative_to(ROOT)}: {name}" for p in _modules(package)
             for name in _imported(_tree(p)) & set(FORBIDDEN[package])}
    assert not wrong


# An import inside a function hides a dependency. One stays there only when it is of an optional extra (not installed
# everywhere), or when a comment on its line, or a comment line just above it, gives one of these reasons.
OPTIONAL_EXTRAS = ("onnx", "onnxruntime", "onnxscript", "psycopg", "optuna_dashboard")
IMPORT_REASONS = ("optional extra", "start-up cost", "import cycle", "lazy")


def _is_optional_extra(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.Import):
        return all(a.name.split(".")[0] in OPTIONAL_EXTRAS for a in node.names)
    return node.level == 0 and (node.module or "").split(".")[0] in OPTIONAL_EXTRAS


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """line -> (its comment, whether the comment is the whole line)."""
    return {t.start[0]: (t.string, t.line.lstrip().startswith("#"))
            for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}


def _gives_a_reason(node: ast.stmt, comments: dict[int, tuple[str, bool]]) -> bool:
    """A comment on the statement's lines, or a whole-line comment just above it, names one of IMPORT_REASONS."""
    said = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
    above = comments.get(node.lineno - 1)
    if above and above[1]:
        said.append(above[0])
    return any(reason in c.lower() for c in said for reason in IMPORT_REASONS)


def _unexplained_local_imports(source: str) -> list[tuple[int, str]]:
    """(line, statement) of every import inside a function or method that is neither of an optional extra nor
    commented with its reason."""
    comments = _comments(source)
    local = {node for fn in ast.walk(ast.parse(source)) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}  # a set: nested defs
    return sorted((node.lineno, ast.unparse(node)) for node in local
                  if not (_is_optional_extra(node) or _gives_a_reason(node, comments)))


@pytest.mark.parametrize("package", ["search", "train", "space"])
def test_imports_sit_at_the_top_of_each_module_or_say_why_not(package):
    unexplained = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in _modules(package)
                   for line, what in _unexplained_local_imports(p.read_text())]
    assert _modules(package) and not unexplained


def test_the_import_check_catches_a_stray_import_in_a_function_and_accepts_a_reason():
    code = ("import os\n"  # 1: at the top
            "def f():\n"
            "    import json\n"  # 3: no reason
            "    import onnx\n"  # 4: an optional extra
            "    from onnxruntime.quantization import quantize_static\n"  # 5: one too
            "    # start-up cost: 0.7 s\n"
            "    from sklearn.model_selection import train_test_split\n"  # 7: its reason on the line above
            "    x = 1  # lazy, but said of this line\n"
            "    from .export import g  # an import\n"  # 9: neither comment gives a reason
            "    import cv2  # import cycle: a -> b -> a\n"  # 10: its reason on its line
            "    def inner():\n"
            "        from . import lazy_name\n"  # 12: the word in the code, not in a comment
            "class C:\n"
            "    def m(self):\n"
            "        import pandas as pd\n")  # 15: a method's
    assert _unexplained_local_imports(code) == [(3, "import json"), (9, "from .export import g"),
                                                (12, "from . import lazy_name"), (15, "import pandas as pd")]


def _record_keys() -> set[str]:
    """The stored trial keys, read from search/record.py's code: the fields of its TrialRecord class."""
    tree = _tree(ROOT / "search" / "record.py")
    record = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrialRecord")
    return {n.target.id for n in record.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


# Calls that only ever touch a trial's user attrs.
_TRIAL_ONLY = {"set_trial_user_attr", "get_trial_user_attrs", "enqueue_trial"}


def _is_study(node: ast.AST) -> bool:
    """A receiver that is a study (or a study's summary): named so, as `study`, `self.study`, `other_study`, ..."""
    return ast.unparse(node).lower().endswith(("study", "summary"))


def _trial_attr_uses(tree: ast.Module, keys: set[str]) -> list[tuple[int, str]]:
    """(line, what) of every read or write of a trial's user attrs: `.user_attrs` or `.set_user_attr` on
    anything but a study, a trial-only storage call, and a stored key given as a string to a study's user attrs
    (a trial key on a study is a misplaced one)."""
    uses = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.Attribute) and node.attr in ("user_attrs", "set_user_attr") and not _is_study(node.value):
            what = f"{ast.unparse(node.value)}.{node.attr}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _TRIAL_ONLY:
            what = node.func.attr
        elif isinstance(node, ast.Constant) and node.value in keys:
            parent = getattr(node, "parent", None)
            if isinstance(parent, (ast.Subscript, ast.Compare, ast.Call)) and "user_attr" in ast.unparse(parent):
                what = f"key {node.value!r}"
        if what:
            uses.append((node.lineno, what))
    return uses


def _parented(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node
    return tree


def test_only_the_trial_record_reads_or_writes_a_trials_stored_keys():
    keys = _record_keys()
    assert {"genome", "n_params", "epochs", "phase", "oom_retry", "heartbeat_at"} <= keys  # the check has keys
    outside = [f"{p.relative_to(ROOT)}:{line}: {what}" for package in ("search", "train", "space")
               for p in _modules(package) if p != ROOT / "search" / "record.py"
               for line, what in _trial_attr_uses(_parented(_tree(p)), keys)]
    assert not outside
    # and the record module itself is where they are written and read
    assert _trial_attr_uses(_parented(_tree(ROOT / "search" / "record.py")), keys)


def test_the_trial_record_check_would_catch_a_stray_use():
    code = ('t.set_user_attr("phase", "x")\nx = trial.user_attrs.get("rejected")\ns.set_trial_user_attr(1, "k", 0)\n'
            'study.enqueue_trial({}, user_attrs={"genome": 1})\nstudy.user_attrs["retry_of"]\n'
            'study.set_user_attr("settings", 1)\nother_study.user_attrs.get("normalisation")\n')
    found = sorted(_trial_attr_uses(_parented(ast.parse(code)), {"phase", "rejected", "retry_of"}))
    assert found == [(1, "key 'phase'"), (1, "t.set_user_attr"), (2, "key 'rejected'"), (2, "trial.user_attrs"),
                     (3, "set_trial_user_attr"), (4, "enqueue_trial"), (5, "key 'retry_of'")]


def _function_lengths_in(paths: list[Path], root: Path) -> dict[str, int]:
    """'path:line name' -> lines from its def to its last line, of every function and method."""
    out = {}
    for p in paths:
        for node in ast.walk(_tree(p)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[f"{p.relative_to(root)}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1
    return out


def _function_lengths(package: str) -> dict[str, int]:
    return _function_lengths_in(_modules(package), ROOT)


@pytest.mark.parametrize("package", ["search", "train", "space"])
def test_no_function_is_over_60_lines(package):
    lengths = _function_lengths(package)
    assert lengths, f"no functions found in {package}/"
    assert not {name: n for name, n in lengths.items() if n > 60}


def test_the_length_check_counts_a_function_from_def_to_last_line(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n    pass\n")
    lengths = {k.split(" ")[1]: n for k, n in _function_lengths_in([tmp_path / "m.py"], tmp_path).items()}
    assert lengths == {"f": 61, "g": 2}


def _parameter_counts(paths: list[Path], root: Path) -> dict[str, int]:
    """'path:line name' -> parameters of every function and method (self and cls not counted; *args and
    **kwargs one each)."""
    out = {}
    for p in paths:
        for node in ast.walk(_tree(p)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                n = len(names) - (names[:1] in (["self"], ["cls"])) + (a.vararg is not None) + (a.kwarg is not None)
                out[f"{p.relative_to(root)}:{node.lineno} {node.name}"] = n
    return out


def test_no_function_in_search_takes_more_than_6_parameters():
    # A run's state travels in one object (search.context.Run), not in long parameter lists.
    counts = _parameter_counts(_modules("search"), ROOT)
    assert counts and not {name: n for name, n in counts.items() if n > 6}


def test_the_parameter_count_skips_self_and_counts_star_args(tmp_path):
    (tmp_path / "m.py").write_text("class C:\n    def m(self, a, b=1, *c, d, **e):\n        pass\n"
                                   "def f(self_made, x, /, y):\n    pass\n")
    counts = {k.split(" ")[1]: n for k, n in _parameter_counts([tmp_path / "m.py"], tmp_path).items()}
    assert counts == {"m": 5, "f": 3}


@pytest.mark.parametrize("package", ["search", "train", "space"])
def test_every_module_says_in_its_first_line_what_it_holds(package):
    missing = [str(p.relative_to(ROOT)) for p in _modules(package)
               if not (ast.get_docstring(_tree(p)) or "").strip().splitlines()[:1]]
    assert not missing


def _commands() -> list[str]:
    """Every `python -m` command of the project: the modules with a __main__ block."""
    return sorted(f"{p.parent.name}.{p.stem}" for package in ("search", "train", "space") for p in _modules(package)
                  if 'if __name__ == "__main__":' in p.read_text())


def test_there_are_commands_to_check():
    assert {"search.run", "search.worker", "search.bench", "train.run", "space.describe"} <= set(_commands())


@pytest.mark.parametrize("module", _commands())
def test_every_commands_help_prints_its_usage_and_exits_0(module):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("usage: ") and "--help" in r.stdout
