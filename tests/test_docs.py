"""Every `featcache ...` command in the documentation is checked against the real command line.

- Each command line in a fenced code block of README.md, CONTRIBUTING.md, pipelines/README.md and
  docs/*.md, and in the header comments of pipelines/*.yaml, and every example of a command's
  --help (line
  continuations joined, comments dropped, `a; b` / `a && b` split, `[--opt]` optional parts kept)
  is parsed by the real typer/click command with ``make_context``, without running it: a renamed
  or removed command or flag, or a value of the wrong type, fails with the file and line.
- The README's "your own videos in six commands" block runs for real, as written, in a shell on
  generated videos with a tiny random-weight model (marked slow).
- Relative links of README.md and CONTRIBUTING.md (which mkdocs does not build) point at files
  that exist, and at headings that exist.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import typer
from conftest import TINY_CLI, VIDEO_SIZE, motion_clip, write_video  # generated clips (featcache's synthetic module)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md", "CONTRIBUTING.md", "pipelines/README.md", *sorted(os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md")),
         *sorted(os.path.join("pipelines", f) for f in os.listdir(os.path.join(ROOT, "pipelines")) if f.endswith(".yaml"))]
NOT_SHELL = {"python", "py", "yaml", "yml", "toml", "json", "ini"}  # fenced blocks whose lines are not commands
SEPARATORS = {";", "&&", "||", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "2>>"}
MENTIONS = re.compile(r"(^|[\s;&|/])featcache(\s|$)")  # the command word, not featcache/ or featcache:
UNPARSEABLE = "<not a shell line>"
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # CACHE, MANIFEST, N, RUN_DIR, ...


# --- collecting ------------------------------------------------------------------------------

def shell_blocks(text: str):
    """Yield (first line number, lines) of each fenced code block that holds shell lines."""
    fence, lang, start, lines = None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            m = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                fence, lang, start, lines = m.group(1), m.group(2).lower(), number + 1, []
        elif stripped.startswith(fence) and not stripped[len(fence):].strip():
            if lang not in NOT_SHELL:
                yield start, lines
            fence = None
        else:
            lines.append(line)


def logical_lines(start: int, lines: list[str]):
    """Yield (line number, text) with backslash continuations joined."""
    buf, first = "", None
    for number, line in enumerate(lines, start):
        if first is None:
            first = number
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield first, buf + line
        buf, first = "", None
    if buf:
        yield first, buf


def featcache_commands(line: str) -> list[list[str]]:
    """The argument lists (after ``featcache``) of every featcache command on one shell line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True  # keep --set a=b, paths and globs whole
    tokens = list(lexer)
    commands, segment = [], []
    for token in tokens + [";"]:
        if token in SEPARATORS:
            if segment and (segment[0] == "featcache" or segment[0].endswith("/featcache")):
                commands.append(segment[1:])
            segment = []
        else:
            segment.append(token)
    out = []
    for args in commands:  # drop redirections and the file they name
        kept, skip = [], False
        for token in args:
            if skip:
                skip = False
            elif token in REDIRECTS:
                skip = True
            else:
                kept.append(token)
        out.append(kept)
    return out


def _comment_lines(text: str) -> list[str]:
    """The command lines in a YAML file's comments (its header says how to run it: ``#   featcache
    ...``, indented as a command, and its continuations; prose is ``# text``), other lines blanked
    so the numbering holds."""
    out, continued = [], False
    for line in text.splitlines():
        comment = line.lstrip()[1:] if line.lstrip().startswith("#") else None
        keep = comment is not None and (continued or re.match(r"^\s{2,}featcache ", comment) is not None)
        out.append(comment if keep else "")
        continued = keep and comment.rstrip().endswith("\\")
    return out


def collect(pages=PAGES):
    """Every featcache command of the docs: [(page, line number, argument list)]."""
    found = []
    for page in pages:
        path = os.path.join(ROOT, page)
        if not os.path.exists(path):
            continue
        text = open(path, encoding="utf-8").read()
        blocks = shell_blocks(text) if page.endswith(".md") else [(1, _comment_lines(text))]
        for start, lines in blocks:
            for number, line in logical_lines(start, lines):
                if not MENTIONS.search(line):  # a tree, an output line: nothing to parse
                    continue
                try:
                    commands = featcache_commands(line)
                except ValueError as exc:  # shlex: an unclosed quote is a broken command line too
                    commands = [[UNPARSEABLE, f"{exc}: {line.strip()}"]]
                found.extend((page, number, args) for args in commands)
    return found


# --- checking --------------------------------------------------------------------------------

def _usage_message(exc: Exception) -> str:
    return exc.format_message() if hasattr(exc, "format_message") else repr(exc)


def _fill_placeholders(command, args: list[str]) -> list[str]:
    """An option's value written as a placeholder (``--temporal-views V``) becomes 1, so that a
    number-typed option parses; the check is about names, not about the docs' symbols."""
    by_flag = {opt: p for p in command.params for opt in getattr(p, "opts", ())}
    out = list(args)
    for i in range(1, len(out)):
        param = by_flag.get(out[i - 1])
        if param is not None and not getattr(param, "is_flag", False) and PLACEHOLDER.match(out[i]):
            out[i] = "1"
    return out


def _parse(command, name, args, parent=None):
    """make_context with the args as written; where that fails, once more with placeholders filled."""
    try:
        return command.make_context(name, list(args), parent=parent)
    except Exception as exc:
        filled = _fill_placeholders(command, args)
        if filled == list(args):
            raise
        try:
            return command.make_context(name, filled, parent=parent)
        except Exception:
            raise exc from None


def check_command(args: list[str]) -> str | None:
    """Parse ``featcache ARGS`` as the real CLI would, without running it; None when it parses,
    else the usage error."""
    from featcache.cli import app

    if args and args[0] == UNPARSEABLE:
        return args[1]
    args = [a.strip("[]") for a in args if a.strip("[]")]  # [--json]: the optional part is checked too
    command = typer.main.get_command(app)
    ctx = command.make_context("featcache", [], resilient_parsing=True)
    path = ["featcache"]
    while hasattr(command, "commands"):  # a group: descend to the subcommand
        if not args or args[0].startswith("-"):
            return None if args in ([], ["--help"], ["--version"]) else f"{' '.join(path)}: expected a command"
        sub = command.get_command(ctx, args[0])
        if sub is None:
            return f"{' '.join(path)}: no such command {args[0]!r} (commands: {', '.join(sorted(command.commands))})"
        path.append(args.pop(0))
        command = sub
        ctx = command.make_context(path[-1], [], parent=ctx, resilient_parsing=True)
    if "--help" in args:  # the command exists; its help needs no other argument
        return None
    try:
        sub_ctx = _parse(command, path[-1], args, parent=ctx.parent)
    except Exception as exc:  # a click usage error: unknown option, missing argument, bad value
        return f"{' '.join(path)}: {_usage_message(exc)}"
    if sub_ctx.args and path[-1] == "estimate":  # estimate takes extract's options, as its own code parses them
        manifest = sub_ctx.params["manifest"]
        extract = typer.main.get_command(app).get_command(ctx, "extract")
        try:
            _parse(extract, "extract", [manifest, "--out", "x.zarr", *sub_ctx.args])
        except Exception as exc:
            return f"{' '.join(path)} (extract's options): {_usage_message(exc)}"
    elif sub_ctx.args:
        return f"{' '.join(path)}: unexpected arguments {sub_ctx.args}"
    return None


COMMANDS = collect()


def test_the_docs_hold_the_commands_expected():
    """The collector finds the commands of every page that shows some (so a broken collector
    cannot pass by finding nothing)."""
    pages = {page for page, _, _ in COMMANDS}
    assert {"README.md", "docs/training.md", "docs/sweeps.md", "docs/scaling-out.md", "docs/export.md",
            "docs/protocols.md", "docs/library.md", "docs/annotations.md"} <= pages
    assert len(COMMANDS) >= 60
    assert {"pipelines/stadapter_luv_table1_frames.yaml", "pipelines/charades_video_transformers.yaml"} <= pages
    # a continued line is one command (the collector itself: test_collecting_joins_...)
    assert any("--partition" in args and "--slurm-logs" in args for page, _, args in COMMANDS if page == "docs/scaling-out.md")


@pytest.mark.parametrize("page,line,args", COMMANDS, ids=[f"{p}:{n}" for p, n, _ in COMMANDS])
def test_every_documented_command_parses(page, line, args):
    error = check_command(list(args))
    assert error is None, f"{page}:{line}: featcache {' '.join(args)}\n  {error}"


@pytest.mark.parametrize("line,expected", [
    ("featcache extract m.csv --out c.zarr --no-such-flag", "No such option: --no-such-flag"),
    ("featcache trian c.zarr --head r3d", "no such command 'trian'"),
    ("featcache cache inspect c.zarr", "no such command 'inspect'"),
    ("featcache eval runs/r3d --temporal-views two", "'--temporal-views'"),
    ("featcache train --head r3d", "Missing argument"),
    ("featcache estimate m.csv --frames uniform:8 --no-such-extract-flag", "No such option: --no-such-extract-flag"),
    ("featcache probe c.zarr --method knn extra", "unexpected extra argument"),
    ('featcache train c.zarr --set "head.hidden=1', "No closing quotation"),
])
def test_the_check_fails_on_a_stale_command(tmp_path, line, expected):
    page = tmp_path / "page.md"
    page.write_text(f"text\n\n```bash\n# a comment\n{line}   # why\n```\n")
    (found,) = [args for _, _, args in collect([str(page)])]
    error = check_command(found)
    assert error is not None and expected in error, error


def test_collecting_joins_continuations_splits_chains_and_drops_comments(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nls v/*.mp4 > v.txt; featcache extract v.txt --out c.zarr  # note\n"
                    "featcache cache info c.zarr \\\n    --json && .venv/bin/featcache cache verify c.zarr [--quick]\n"
                    "# featcache train commented-out\n```\n\n```python\nfeatcache = 1  # not a command\n```\n"
                    "```yaml\ncmd: featcache train x\n```\n")
    found = [(n, args) for _, n, args in collect([str(page)])]
    assert found == [(2, ["extract", "v.txt", "--out", "c.zarr"]), (3, ["cache", "info", "c.zarr", "--json"]),
                     (3, ["cache", "verify", "c.zarr", "[--quick]"])]
    assert all(check_command(args) is None for _, args in found)


def test_placeholders_take_the_options_type():
    assert check_command(["eval", "RUN", "--temporal-views", "V", "--window", "W", "--stride", "S"]) is None
    assert check_command(["cache", "pack", "--help"]) is None and "no such command" in check_command(["cache", "x", "--help"])
    assert "No such option" in check_command(["eval", "RUN", "--temporal-view", "V"])


def _help_examples():
    """(command path, example args) of every ``featcache ...`` line in the commands' --help epilogs."""
    from featcache.cli import app

    out, todo = [], [((), typer.main.get_command(app))]
    while todo:
        path, command = todo.pop()
        for line in (command.epilog or "").splitlines():
            if line.strip().startswith("featcache "):
                out.extend((" ".join(path), args) for args in featcache_commands(line))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            todo.append(((*path, name), sub))
    return out


def test_every_help_example_parses():
    """The examples each command's --help prints are commands too."""
    examples = _help_examples()
    assert len(examples) >= 10
    for where, args in examples:
        error = check_command(list(args))
        assert error is None, f"featcache {where} --help: featcache {' '.join(args)}\n  {error}"


def test_the_pipeline_files_the_docs_name_exist():
    """pipelines/*.yaml named in the docs, the pipelines' own headers and the benchmarks' notes exist."""
    pages = [*PAGES, *(os.path.join("pipelines", f) for f in os.listdir(os.path.join(ROOT, "pipelines"))),
             *(os.path.join("benchmarks", f) for f in os.listdir(os.path.join(ROOT, "benchmarks")) if f.endswith(".md"))]
    named = set()
    for page in pages:
        path = os.path.join(ROOT, page)
        if os.path.isfile(path):
            named |= {(page, m) for m in re.findall(r"pipelines/[\w.-]+\.yaml", open(path, encoding="utf-8").read())}
    assert len(named) >= 10
    missing = sorted((page, name) for page, name in named if not os.path.exists(os.path.join(ROOT, name)))
    assert not missing, missing


def test_the_tests_the_docs_cite_exist():
    """``test_x.py::test_name`` in the docs (bad-input.md's table says which test checks each
    message) names a test that exists."""
    cited = set()
    for page in PAGES:
        path = os.path.join(ROOT, page)
        if os.path.isfile(path) and page.endswith(".md"):
            cited |= {(page, f, n) for f, n in re.findall(r"(test_\w+\.py)::(test_\w+)", open(path, encoding="utf-8").read())}
    assert len(cited) >= 20
    tests = os.path.dirname(os.path.abspath(__file__))
    files = {os.path.basename(f): f for f in glob.glob(os.path.join(tests, "**", "test_*.py"), recursive=True)}
    stale = sorted((page, f"{f}::{name}") for page, f, name in cited
                   if f not in files or not re.search(rf"^def {name}\(", open(files[f], encoding="utf-8").read(), re.M))
    assert not stale, stale


# --- links of the pages mkdocs does not build ------------------------------------------------

def _anchors(markdown: str) -> set[str]:
    """GitHub's and Python-Markdown's heading ids (lower case, punctuation dropped, spaces to -)."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).strip().replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("page", ["README.md", "CONTRIBUTING.md"])
def test_links_of_the_front_pages_resolve(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(ROOT, target)) if target else os.path.join(ROOT, page)
        assert os.path.exists(path), f"{page}: link {link!r}: {target} does not exist"
        if anchor and path.endswith(".md"):
            assert anchor in _anchors(open(path, encoding="utf-8").read()), f"{page}: link {link!r}: no such heading"


# --- the README's six commands, run as written -----------------------------------------------

SIX_COMMANDS = "## Your own videos in six commands"
# what the test adds to the README's lines: the tiny random-weight model, a short training
EXTRA = {"estimate": TINY_CLI, "extract": TINY_CLI, "train": ["--set", "epochs=2", "--set", "batch_size=4"]}


def six_commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split(SIX_COMMANDS, 1)[1].split("\n## ", 1)[0]
    (block,) = [lines for _, lines in shell_blocks(section)][:1]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block if line.strip()]


def _write_videos(root):
    os.makedirs(root / "my_videos")
    rng = np.random.default_rng(0)
    rows = ["video_id,label,split"]
    for label in ("left", "right"):  # the two classes differ only by the direction of motion
        for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
            write_video(str(root / "my_videos" / f"{label}_{i}.mp4"), motion_clip(label, rng, num_frames=24, size=VIDEO_SIZE))
            rows.append(f"{label}_{i},{label},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_the_readmes_six_commands_run_as_written(tmp_path):
    lines = six_commands()
    assert len(lines) == 6 and lines[0].startswith("ls my_videos/*.mp4 > videos.txt")
    assert [line.split()[1] for line in lines[1:]] == ["manifest", "estimate", "extract", "train", "eval"]
    script = []
    for line in lines:
        words = line.split()
        extra = EXTRA.get(words[1], []) if words[0] == "featcache" else []
        script.append(" ".join([line, *map(shlex.quote, extra)]))
    _write_videos(tmp_path)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "featcache").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m featcache.cli "$@"\n')
    (shim / "featcache").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (script, p.stdout[-3000:], p.stderr[-3000:])
    out = p.stdout
    assert len((tmp_path / "videos.txt").read_text().split()) == 16
    assert "videos.txt: 16 videos" in out and "check ok: 0 error(s), 0 missing file(s)" in out  # manifest check
    estimated = int(re.search(r"^16 videos, (\d+) cached frames", out, re.M).group(1))  # estimate
    extracted = re.search(r"^extracted 16 videos, 0 failed, 0 already cached \(of 16\); (\d+) frames", out, re.M)
    assert extracted and int(extracted.group(1)) == estimated  # the estimate counted the frames extract cached
    assert "videos: train 8, val 4, test 4" in out  # train took labels and splits from labels.csv
    run = tmp_path / "runs" / "r3d"
    assert 0.0 <= json.loads((run / "metrics.json").read_text())["test/top1"] <= 1.0
    two_views = json.loads((run / "eval_test@2x1.json").read_text())  # eval --temporal-views 2
    assert "test/top1@2x1" in set(_flat_keys(two_views)), two_views
    assert (run / "predictions_test@2x1.csv").exists()


def _flat_keys(d, prefix=""):
    for key, value in d.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _flat_keys(value, prefix + key + ".")


# --- the site's nav ----------------------------------------------------------------------------

def _nav_pages(nav) -> set[str]:
    """Every page a mkdocs ``nav`` (nested lists of {title: page or list}) names."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_nav_pages(v) for v in nav.values()))
    return set().union(set(), *(_nav_pages(v) for v in nav))


def _left_out(docs_dir: str, nav) -> list[str]:
    pages = {os.path.relpath(p, docs_dir) for p in glob.glob(os.path.join(docs_dir, "**", "*.md"), recursive=True)}
    return sorted(p for p in pages - _nav_pages(nav) if not p.startswith("hooks"))


def test_every_docs_page_is_in_the_nav():
    """mkdocs --strict aborts on a page left out of the nav, but `--quiet` used to hide it in CI
    (issue 34 item 0): the nav is checked here too, without building the site."""
    import yaml

    config = yaml.safe_load(open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8"))
    assert not _left_out(os.path.join(ROOT, "docs"), config["nav"]), "add these pages to mkdocs.yml's nav"


def test_the_nav_check_finds_a_page_left_out(tmp_path):
    for name in ("index.md", "kept.md", "forgotten.md"):
        (tmp_path / name).write_text("# x\n")
    assert _left_out(str(tmp_path), [{"Home": "index.md"}, {"A": [{"k": "kept.md"}]}]) == ["forgotten.md"]


def test_ci_builds_the_docs_without_quiet():
    """`mkdocs build --strict --quiet` exits 0 on strict-mode warnings (mkdocs 1.6.1)."""
    run = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    build = [line for line in run.splitlines() if "mkdocs build" in line and not line.lstrip().startswith("#")]
    assert build and all("--strict" in line and "--quiet" not in line for line in build)
