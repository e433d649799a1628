"""The docs and the command line stay in step (issue 12).

The parser is read from :func:`hidbpfd.cli.build_parser` each run, so a subcommand or an option
added later is covered without touching this file:

- every subcommand has a one-line help (``hidbpfd --help`` lists it) and a row in
  ``docs/commands.md`` whose first cell starts with ```hidbpfd SUBCOMMAND``; every such row names
  a real subcommand;
- every ``--option`` a subcommand accepts appears in its row or in a docs page the row links to
  (a subcommand that hands its words to its own parser, like ``vm``, is asked ``--help``);
- the top-level options and the epilog's pointer to the docs are there;
- every relative link in README.md and docs/*.md reaches an existing file (and heading), and
  every repository path quoted in backticks (``hidbpfd/...``, ``tests/...``) exists;
- README.md links every docs page and stays under 8 KB.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hidbpfd.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
COMMANDS = DOCS / "commands.md"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

# [text](target): target without spaces; images and plain links alike
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a path of this repository quoted in backticks, e.g. `hidbpfd/kernel/source.py`, `tests/captures/`
REPO_PATH = re.compile(r"`((?:hidbpfd|tests|units|config|tools|docs)/[\w./-]*)`")
OPTION = re.compile(r"--[a-z][a-z0-9-]*")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser under its name (aliases left out)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out[name] = sub
    return out


def _help_texts(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each subcommand, as ``hidbpfd --help`` shows it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


PARSER = build_parser()
SUBCOMMANDS = _subparsers(PARSER)


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (``\\|`` inside a cell is not a separator)."""
    body = line.strip().strip("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def _command_rows() -> dict[str, list[str]]:
    """docs/commands.md: subcommand -> the text of its row(s)."""
    rows: dict[str, list[str]] = {}
    for line in COMMANDS.read_text().splitlines():
        if not line.lstrip().startswith("|"):
            continue
        first = _cells(line)[0]
        m = re.match(r"`hidbpfd ([a-z][\w-]*)", first)
        if m:
            rows.setdefault(m.group(1), []).append(line)
    return rows


def _links(page: Path, text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {
        _slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", page.read_text(), re.M)
    }


def _options(name: str, sub: argparse.ArgumentParser) -> set[str]:
    """The long options ``hidbpfd NAME`` accepts, --help aside."""
    opts = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
    if "--help" not in opts:
        # the subcommand parses its own words (hidbpfd vm): ask it, as a user would
        out = subprocess.run(
            [sys.executable, "-m", "hidbpfd", name, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert out.returncode == 0, f"hidbpfd {name} --help: {out.stderr}"
        usage = out.stdout.split("\n\n")[0]
        opts |= set(OPTION.findall(usage))
    return opts - {"--help"}


def test_parser_has_subcommands() -> None:
    assert {"run", "check", "replay", "status"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_has_one_line_help(name: str) -> None:
    text = _help_texts(PARSER).get(name, "")
    assert text.strip() and "\n" not in text, f"hidbpfd {name}: give it help= (one line)"


def test_top_level_help_points_at_the_docs() -> None:
    text = PARSER.format_help()
    assert "docs/commands.md" in text
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), f"{name} not in --help"


def test_top_level_options_documented() -> None:
    doc = COMMANDS.read_text()
    opts = {s for a in PARSER._actions for s in a.option_strings if s.startswith("--")}
    missing = sorted(o for o in opts - {"--help"} if not re.search(rf"{o}(?![\w-])", doc))
    assert not missing, f"docs/commands.md does not mention the global options {missing}"


def test_every_subcommand_has_a_row() -> None:
    rows = _command_rows()
    missing = sorted(set(SUBCOMMANDS) - set(rows))
    assert not missing, (
        f"no row in docs/commands.md for {missing}: add `| `hidbpfd NAME ...` | what it does |`"
    )


def test_every_row_is_a_subcommand() -> None:
    unknown = sorted(set(_command_rows()) - set(SUBCOMMANDS))
    assert not unknown, f"docs/commands.md documents commands the CLI does not have: {unknown}"


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_documented(name: str) -> None:
    rows = _command_rows().get(name)
    if not rows:
        pytest.fail(f"hidbpfd {name} has no row in docs/commands.md")
    text = "\n".join(rows)
    for target in _links(COMMANDS, text):
        path = (COMMANDS.parent / target.split("#")[0]).resolve()
        if path.is_file():
            text += "\n" + path.read_text()
    missing = sorted(
        o for o in _options(name, SUBCOMMANDS[name]) if not re.search(rf"{o}(?![\w-])", text)
    )
    assert not missing, (
        f"hidbpfd {name} accepts {missing}, but neither its row in docs/commands.md nor a page "
        "it links to mentions them"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    bad = []
    for target in _links(page, page.read_text()):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{page.relative_to(ROOT)}: broken links {bad}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_paths_exist(page: Path) -> None:
    missing = sorted(
        {p for p in REPO_PATH.findall(page.read_text()) if not (ROOT / p.rstrip("/")).exists()}
    )
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_readme_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / t.split("#")[0]).resolve() for t in _links(ROOT / "README.md", readme)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, (
        f"README.md does not link {missing}: add a line '- [docs/NAME.md](docs/NAME.md): what it "
        "holds' under 'Where to read on'"
    )


def test_readme_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 8 * 1024


# a value a measurement was meant to fill in, left in a page (MEASURED_CHURN, TBD, TODO)
PLACEHOLDER = re.compile(r"\b(?:MEASURED_[A-Z_]+|TBD|TODO|FIXME|XXX)\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_placeholder_left(page: Path) -> None:
    found = [
        f"{page.relative_to(ROOT)}:{n}: {m.group(0)}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        for m in PLACEHOLDER.finditer(line)
    ]
    assert not found, f"placeholders where measured values belong: {found}"
