"""The code's shape, read from its syntax tree: the layers, the one owner of a trial's state, short functions."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package may import from the project and from Optuna: search uses train uses space, never back up;
# train never imports optuna (the training knows nothing of the search around it).
FORBIDDEN = {"space": ("train", "search", "optuna"), "train": ("search", "optuna")}
# The user-attr keys of a trial's state (search.lifecycle).
STATE_KEYS = {"phase", "trained", "rejected", "duplicate_of", "prescreen_lost_to", "failed_reason", "retry_of",
              "retries", "status", "worker", "heartbeat_at", "too_large", "oom_retry"}


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


def _state_key_uses(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, key) of every trial-state key read or written as a user attr: set_user_attr(K, ...),
    set_trial_user_attr(id, K, ...), user_attrs.get(K), user_attrs[K], K in user_attrs."""
    uses = []

    def key(node: ast.AST) -> str | None:
        return node.value if isinstance(node, ast.Constant) and node.value in STATE_KEYS else None

    def is_user_attrs(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "user_attrs"

    for node in ast.walk(tree):
        found = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "set_user_attr" and node.args:
                found = key(node.args[0])
            elif f.attr == "set_trial_user_attr" and len(node.args) > 1:
                found = key(node.args[1])
            elif f.attr == "get" and is_user_attrs(f.value) and node.args:
                found = key(node.args[0])
        elif isinstance(node, ast.Subscript) and is_user_attrs(node.value):
            found = key(node.slice)
        elif isinstance(node, ast.Compare) and any(is_user_attrs(c) for c in node.comparators):
            found = key(node.left)
        if found:
            uses.append((node.lineno, found))
    return uses


def test_only_the_lifecycle_module_touches_a_trials_state():
    outside = [f"{p.relative_to(ROOT)}:{line}: {k}" for p in _modules("search") if p.name != "lifecycle.py"
               for line, k in _state_key_uses(_tree(p))]
    assert not outside
    # The check itself sees the lifecycle's own uses (through its key constants, so count them there).
    lifecycle = (ROOT / "search" / "lifecycle.py").read_text()
    assert all(f'"{k}"' in lifecycle for k in STATE_KEYS)


def test_the_state_check_would_catch_a_stray_use():
    code = ('t.set_user_attr("phase", "x")\nt.user_attrs.get("rejected")\nt.user_attrs["retry_of"]\n'
            '"worker" in t.user_attrs\ns.set_trial_user_attr(1, "heartbeat_at", 0)\nt.set_user_attr("genome", 1)\n')
    assert [k for _, k in _state_key_uses(ast.parse(code))] == ["phase", "rejected", "retry_of", "worker",
                                                                 "heartbeat_at"]


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


@pytest.mark.parametrize("package", ["search", "train", "space"])
def test_every_module_says_in_its_first_line_what_it_holds(package):
    missing = [str(p.relative_to(ROOT)) for p in _modules(package)
               if not (ast.get_docstring(_tree(p)) or "").strip().splitlines()[:1]]
    assert not missing
