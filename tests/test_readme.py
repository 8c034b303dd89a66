"""Every command in README.md and docs/*.md works as written: each `python -m` line parses with its command's
real argument parser (a renamed flag fails here), cheap ones run for real at a small size, and the "First ten
minutes" path runs top to bottom in a fresh folder. New commands are picked up automatically, on a new docs
page too; a command of a new kind must be added to SHELL_PREFIXES (and exercised somewhere CI runs)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.search_helpers import ROOT

README = (ROOT / "README.md").read_text()
# Every page the README links to, checked the same way.
PAGES = {"README.md": README, **{f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}}
ALL = "\n".join(PAGES.values())
# Commands that are not `python -m`: set-up (run by ./setup.sh, which .ci/run runs), or tools outside the project.
SHELL_PREFIXES = ("./setup.sh ", "bash .ci/run", "python3 -m venv .venv", "pip install ", "export NO_ALBUMENTATIONS",
                  "optuna-dashboard ", "head ",
                  "createdb ")  # PostgreSQL's own client; tests/postgres.py creates the test database the same way
# Appended to commands run for real (argparse: the last value of a flag wins): small and fast.
# search.run: 100k parameters leave seed003_net as the one preset to train (the others take minutes on a CPU).
SMALL = {"search.run": ["--trials", "1", "--max-params", "100000", "--trial-epochs", "1", "--final-epochs", "1",
                        "--subset-train", "200", "--subset-test", "64", "--batch-size", "32"],
         "train.run": ["--epochs", "1", "--subset", "256"]}


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands(text: str) -> list[str]:
    """The command lines of the bash blocks, without comments."""
    lines = []
    for block in blocks(text, "bash"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def python_m(line: str) -> tuple[str, list[str]] | None:
    """(module, argv) of a `python -m MODULE ...` line (any output redirection dropped), else None."""
    words = shlex.split(line.split(" > ")[0])
    if words[:2] != ["python", "-m"]:
        return None
    return words[2], words[3:]


class Parsed(Exception):
    pass


def parse_only(module: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run the command's main(argv) only as far as its parser: the real flags, types and choices."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    with pytest.raises(Parsed) as got:
        importlib.import_module(module).main(argv)
    return got.value.args[0]


def test_the_readme_is_short_and_links_every_docs_page():
    assert len(README.splitlines()) <= 150
    assert len(PAGES) >= 6  # the README and docs/ search, workers, space, training, benchmarks
    for page in PAGES:
        if page != "README.md":
            assert f"]({page})" in README, f"{page} is not linked from the README"


@pytest.mark.parametrize("page", list(PAGES))
def test_every_command_is_of_a_known_kind(page):
    unknown = [c for c in commands(PAGES[page]) if python_m(c) is None and not c.startswith(SHELL_PREFIXES)]
    assert not unknown, f"{page} commands nothing checks: {unknown}"


def escaped_commands(text: str) -> list[str]:
    """Command lines the checks would miss or read in part: the checks read ```bash blocks line by line, so a
    command in a block of another kind (```sh, ```console, untagged) or continued with a backslash escapes."""
    command = re.compile(r"\s*(\$\s*)?(python3? |\./|pip |bash |optuna-dashboard )")
    other = [line for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S) if lang != "bash"
             for line in body.splitlines() if command.match(line)]
    continued = [line for body in blocks(text, "bash") for line in body.splitlines() if line.rstrip().endswith("\\")]
    return other + continued


def test_no_command_in_the_pages_escapes_the_checks():
    assert not escaped_commands(ALL)
    shown = {re.sub(r"\s+#.*$", "", line).strip() for body in blocks(ALL, "bash") for line in body.splitlines()
             if line.strip().startswith("python -m ")}
    assert shown and shown <= set(commands(ALL))  # every python -m line reaches the parser test


def test_a_command_outside_a_bash_block_or_over_two_lines_is_found():
    page = ("```bash\npython -m search.run --dataset digits \\\n    --trials 2\n```\n"
            "```sh\npython -m search.report\n```\n```\n$ ./setup.sh test\n```\n```python\nimport torch\n```\n")
    assert escaped_commands(page) == ["python -m search.report", "$ ./setup.sh test",
                                      "python -m search.run --dataset digits \\"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but '-' dropped, spaces to '-'."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", markdown, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links (and images) of a Markdown file whose file, or heading anchor, is missing."""
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:: not a file of the checkout
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            broken.append(target)
    return broken


# The Markdown a reader follows links in: the README, docs/, and results/'s index and reports.
LINKED_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md",
                *sorted((ROOT / "results" / "benchmarks").rglob("*.md"))]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_of_the_checkout(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: links to what does not exist: {broken_links(page)}"


def test_a_link_to_a_moved_file_or_a_missing_heading_counts_as_broken(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md) [ok](there.md#a-heading-with-code) [web](https://example.org/x.md) "
                    "[gone](old/there.md) [no heading](there.md#elsewhere) ![figure](curve.png)")
    assert broken_links(page) == ["old/there.md", "there.md#elsewhere", "curve.png"]


def named_paths(text: str) -> set[str]:
    """The results/benchmarks/... and tools/... paths a text names (a placeholder such as <study> ends one)."""
    return set(re.findall(r"(?<![\w/.-])((?:results/benchmarks|tools)/[\w./-]*[\w/])", text))


def test_every_results_benchmarks_and_tools_path_the_docs_and_code_name_exists():
    """The pages and the code's comments name benchmark files and tools by their path from the checkout root;
    a file moved without them fails here. (Reports quote output as it was printed, so they are not read.)"""
    texts = {**PAGES, "results/README.md": (ROOT / "results" / "README.md").read_text(),
             **{str(p.relative_to(ROOT)): p.read_text()
                for package in ("search", "train", "space", "tools") for p in sorted((ROOT / package).glob("*.py"))}}
    named = {(where, path) for where, text in texts.items() for path in named_paths(text)}
    assert any(path.startswith("results/benchmarks/") and path.endswith(".md") for _, path in named)
    missing = sorted((where, path) for where, path in named if not (ROOT / path).exists())
    assert not missing, missing


def _dest(args: argparse.Namespace, flag: str) -> str | None:
    """The namespace attribute a `--flag` sets (`--no-x` of a BooleanOptionalAction sets x); None if none."""
    dest = flag[2:].split("=")[0].replace("-", "_")
    if not hasattr(args, dest) and dest.startswith("no_"):
        dest = dest[3:]
    return dest if hasattr(args, dest) else None


@pytest.mark.parametrize("line", sorted({c for c in commands(ALL) if python_m(c) and python_m(c)[0] != "pytest"}))
def test_readme_command_parses_with_the_real_parser(line, monkeypatch, capsys):
    module, argv = python_m(line)
    try:
        args = parse_only(module, argv, monkeypatch)
    except SystemExit:
        pytest.fail(f"{line!r}: {capsys.readouterr().err.strip()}")
    # every flag the line gives arrives in the parsed arguments with a value
    unset = [w for w in argv if w.startswith("--") and (_dest(args, w) is None or getattr(args, _dest(args, w)) is None)]
    assert not unset, f"{line!r}: {unset} not in the parsed arguments"


def test_the_pytest_lines_name_what_exists():
    """pytest parses its own flags (CI runs exactly the README's line): what the line names must exist: -n needs
    pytest-xdist, and every path it gives is in the repository."""
    lines = [python_m(c)[1] for c in commands(ALL) if python_m(c) and python_m(c)[0] == "pytest"]
    assert lines, "no python -m pytest line in README.md or docs/"
    for argv in lines:
        if "-n" in argv:
            assert importlib.util.find_spec("xdist") is not None, "-n needs pytest-xdist"
        paths = [w.split("::")[0] for w in argv if not w.startswith("-") and ("/" in w or w.endswith(".py"))]
        assert all((ROOT / p).exists() for p in paths), paths


def run_line(line: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    parsed = python_m(line)
    if parsed and parsed[0] in SMALL:
        line = line.split(" > ")[0] + " " + shlex.join(SMALL[parsed[0]])
    line = re.sub(r"^python ", shlex.quote(sys.executable) + " ", line)
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def small_env() -> dict:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(ROOT)}


def test_cheap_readme_commands_run_for_real(tmp_path):
    cheap = [c for c in dict.fromkeys(commands(ALL)) if python_m(c) and python_m(c)[0].startswith("space.")
             or "--dataset digits" in c and python_m(c) and python_m(c)[0] == "train.run"]
    assert len(cheap) >= 5
    (tmp_path / "results").mkdir()  # as in the checkout, where results/ (git-ignored but for benchmarks/) exists
    for line in cheap:
        r = run_line(line, tmp_path, small_env())
        assert r.returncode == 0 and "Traceback" not in r.stderr, (line, r.stderr)
    assert (tmp_path / "results" / "seed001.py").is_file() and (tmp_path / "results" / "my_genome.json").is_file()
    assert (tmp_path / "results" / "train" / "seed003_net-digits" / "metrics.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # nothing git would see in a checkout


def test_first_ten_minutes_runs_top_to_bottom_as_written(tmp_path):
    text = section("First ten minutes")
    env = small_env()
    ran = []
    for line in commands(text):
        if line.startswith(("python3 -m venv", "pip install", "export ")):
            continue  # the environment: ./setup.sh does these steps, and CI runs it
        r = run_line(line, tmp_path, env)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (line, r.stdout[-2000:], r.stderr[-2000:])
        ran.append(line)
        if line.startswith("python -m search.report"):
            assert "using study digits-nas" in r.stderr  # found without --study-name, and said so
    assert [python_m(c)[0] for c in ran if python_m(c)] == ["search.run", "search.report", "search.export"]
    assert "# Architecture search: study `digits-nas`" in (tmp_path / "results/digits-nas/report.md").read_text()
    exported = (tmp_path / "results" / "best.py").read_text()
    assert "class Net" in exported and "MEAN = (" in exported and "STD = (" in exported
    assert "CLASSES = ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9')" in exported
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # nothing git would see in a checkout
    (code,) = blocks(text, "python")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"\d \d", r.stdout.strip()), r.stdout  # predicted and true class, by name (digits: 0..9)
