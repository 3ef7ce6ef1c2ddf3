"""README.md and docs/: links resolve, documented commands exist and the cheap ones run as written;
config.yaml keeps at most two comment lines per key and docs/configuration.md names every key.

The manual is read by people who copy its commands: a renamed option or a moved heading should
fail here, not at a door. No model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from door_access.cli import build_parser
from door_access.config import Config
from door_access.core import Event
from door_access.door.access_log import AccessLog

from conftest import FR_IMAGES, REPO, SHARED_DATA

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
INVOKE = re.compile(r"(?:door-access|run_door\.py|-m door_access)\s+(.*)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$|[\[\]<>{}]|\.\.\.")
CHEAP = {"log", "review", "check"}  # load no model: run as written on a prepared site


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def prose(path: Path) -> str:
    """The text outside code blocks and code spans, where links live."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text()))


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS:
        for target in LINK.findall(prose(doc)):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                broken.append(f"{doc.name}: {target} (no file {file})")
            elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
                broken.append(f"{doc.name}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)
    assert len(DOCS) > 5 and "docs/configuration.md" in (REPO / "README.md").read_text()


def code_lines(path: Path, spans: bool = True) -> list[str]:
    """Every line of a code block (fenced or indented), `\\` continuations joined; and every code span."""
    text = path.read_text()
    blocks = FENCE.findall(text) + re.findall(r"(?:^ {4}.*\n?)+", FENCE.sub("", text), re.M)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return lines + re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) if spans else lines


def invocations(spans: bool = True) -> list[tuple[str, list[str]]]:
    """(where, argv) of each `door-access ...` in the docs, comments, redirects and closing quotes cut off.
    Code spans are mentions (`door-access eval --open-set`); code blocks are commands to copy."""
    found = []
    for doc in DOCS:
        for line in code_lines(doc, spans):
            m = INVOKE.search(line)
            if m and (spans or "`" not in line):  # `door-access x` inside a block is a mention
                argv = re.split(r"\s+#|\s>\s|\s\|\s|`", m.group(1))[0].split()
                if argv and argv[0] != "...":
                    found.append((f"{doc.name}: {line.strip()}", argv))
    if spans:
        table = (REPO / "docs" / "commands.md").read_text()
        found += [(f"commands.md: {row}", row.split()) for row in re.findall(r"^\| `([a-z][^`]*)` \|", table, re.M)]
    return found


def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.choices and "run" in a.choices)
    return parser, action.choices


def test_every_documented_command_and_option_exists():
    parser, subs = subparsers()
    found, wrong = invocations(), []
    for where, argv in found:
        if argv[0].startswith("-"):
            options, command = parser._option_string_actions, "door-access"
        elif argv[0] in subs:
            options, command, argv = subs[argv[0]]._option_string_actions, argv[0], argv[1:]
        else:
            wrong.append(f"{where}: no command {argv[0]!r}")
            continue
        for token in argv:
            option = token.strip("[]").split("=")[0]
            if option.startswith("-") and option not in options and not re.fullmatch(r"-[0-9.]+", option):
                wrong.append(f"{where}: {command} has no option {option}")
    assert not wrong, "\n".join(wrong)
    assert {argv[0] for _, argv in found} >= set(subs), "a command is not documented in docs/commands.md"


def test_the_commands_written_out_in_full_parse():
    """A command with no placeholder (NAME, [--opt], ...) must be accepted as written."""
    parser = build_parser()
    full = [(w, a) for w, a in invocations(spans=False)
            if not any(PLACEHOLDER.search(t) for t in a) and a[0] != "--help"]
    assert len(full) > 8
    for where, argv in full:
        try:
            parser.parse_args(argv)
        except Exception as exc:  # the CLI's parser raises UsageError instead of exiting
            pytest.fail(f"{where}: {exc}")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """An installation folder a reader could have: one person, the real weights, a clip as the camera,
    no speech, and an access log with an unlock and a denial at door `front`."""
    root = tmp_path_factory.mktemp("docs-site")
    (root / "images").mkdir()
    shutil.copy(FR_IMAGES / "obama.jpg", root / "images" / "alice.jpg")
    (root / "images" / "alice.jpg").chmod(0o600)  # as the door writes photos: `check` reports others-readable ones
    clip = SHARED_DATA / "face_recognition_examples" / "short_hamilton_clip.mp4"
    (root / "config.yaml").write_text(
        f"paths:\n  weights: {REPO / 'weights'}\n  cache: cache\ncamera:\n  source: {json.dumps(str(clip))}\n"
        "tts:\n  enabled: false\ndoor:\n  id: front\n")
    log = AccessLog(root / "access_log.sqlite", door_id="front")
    now = time.time()
    assert log.record(Event("unlock", 1.0, now - 60, "alice", 0.41, 1)) and log.flush(10)
    assert log.record(Event("denied", 2.0, now - 30, None, 1.1, 2, "unknown face (closest: alice)")) and log.flush(10)
    log.close()
    return root


def door_access(site: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "door_access", *argv], cwd=site, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_cheap_commands_run_as_written(site):
    """`log`, `review` and `check` exactly as the docs write them (exit 0), and every `--help`."""
    runs = [(w, a) for w, a in invocations(spans=False)
            if a[0] in CHEAP and not any(PLACEHOLDER.search(t) for t in a)]
    assert {a[0] for _, a in runs} == CHEAP
    for where, argv in sorted(set((w, tuple(a)) for w, a in runs)):
        proc = door_access(site, *argv)
        assert proc.returncode == 0, f"{where}: exit {proc.returncode}\n{proc.stdout}{proc.stderr[-2000:]}"
    assert "alice" in door_access(site, "log", "--last", "20").stdout
    _, subs = subparsers()
    for argv in (["--help"], *([name, "--help"] for name in subs)):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 0, argv


def test_make_run_and_make_test_are_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "    make run\n" in readme and "    make test\n" in readme
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    for target in ("run", "test"):
        proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "door-access setup" in proc.stdout, proc.stderr


KEY = re.compile(r"^( *)([a-z_]+):(.*)$")


def inline_comment(rest: str) -> bool:
    """Whether a YAML value (the part after `key:`) carries a `#` comment outside quotes."""
    quote = None
    for i, c in enumerate(rest):
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or rest[i - 1] in " \t"):
            return True
    return False


def comment_lines_per_key(text: str) -> dict[str, int]:
    """Comment lines per dotted key: inline, continued below it (deeper indent), or directly above it
    at its own indent. Comments separated from every key by a blank line (the file's header) count for none."""
    lines = text.splitlines()
    counts: dict[str, int] = {}
    path: list[tuple[int, str]] = []
    prev = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            prev = None
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            nxt = next((x for x in lines[i + 1:] if x.strip() and not x.strip().startswith("#")), "")
            following = lines[i + 1:i + 1 + lines[i + 1:].index(nxt)] if nxt in lines[i + 1:] else []
            m = KEY.match(nxt)
            if m and len(m.group(1)) == indent and all(x.strip() for x in following):
                continue  # a lead comment: counted when its key is reached
            if prev is not None and indent > prev[1]:
                counts[prev[0]] += 1
            continue
        m = KEY.match(line)
        assert m, f"config.yaml line {i + 1} is not `key: value`"
        path = [(d, k) for d, k in path if d < indent] + [(indent, m.group(2))]
        dotted = ".".join(k for _, k in path)
        above = 0
        for back in reversed(lines[:i]):
            if back.strip().startswith("#") and len(back) - len(back.lstrip()) == indent:
                above += 1
            else:
                break
        counts[dotted] = above + inline_comment(m.group(3))
        prev = (dotted, indent)
    return counts


def config_keys() -> list[str]:
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(Config) if s.name not in ("base_dir", "file")
            for f in dataclasses.fields(s.default_factory())]


def test_every_config_key_has_a_comment_of_at_most_two_lines():
    text = (REPO / "config.yaml").read_text()
    counts = comment_lines_per_key(text)
    assert set(config_keys()) <= set(counts)
    long = {k: n for k, n in counts.items() if n > 2}
    bare = [k for k in config_keys() if counts[k] == 0]
    assert not long, f"keys with more than two comment lines: {long}"
    assert not bare, f"keys without a comment: {bare}"
    wide = [n + 1 for n, line in enumerate(text.splitlines()) if len(line) > 120]
    assert not wide, f"config.yaml lines over 120 characters: {wide}"


def test_the_comment_counter_sees_long_comments():
    """The rule itself, on a config with a paragraph above a key and a three-line inline comment."""
    counts = comment_lines_per_key(
        "# header\n\nrecognition:\n  # one\n  # two\n  # three\n  threshold: 0.85\n"
        "  margin: 0.15  # a\n                # b\n                # c\ncamera:\n  source: '#0'  # x\n")
    assert counts == {"recognition": 0, "recognition.threshold": 3, "recognition.margin": 3,
                      "camera": 0, "camera.source": 1}


def test_the_configuration_page_names_every_key():
    page = (REPO / "docs" / "configuration.md").read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    missing = [k for k in config_keys()
               if f"`{k}`" not in page and f"`{k.split('.')[1]}`" not in sections.get(k.split(".")[0], "")]
    assert not missing, f"docs/configuration.md does not name: {missing}"


def test_every_test_the_docs_cite_exists():
    """The guarantees cite their tests (`tests/test_x.py::test_y`, then `::test_z` of the same file)."""
    cited, missing = 0, []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            current = None
            for file, name in re.findall(r"`(tests/\w+\.py)?(?:::(\w+))?`", line):
                current = file or current
                if not current:
                    continue
                source = REPO / current
                cited += 1
                if not source.is_file() or name and not re.search(rf"^def {name}\(", source.read_text(), re.M):
                    missing.append(f"{doc.name}: {current}::{name}")
    assert cited > 15 and not missing, missing
