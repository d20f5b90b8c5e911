"""The three command lines explain themselves: every option has a help line, every command ends its help with an example,
and a wrong value ends with one line naming it (no traceback)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from coordinator.cli import build_parser as coordinator_parser
from node_agent.cli import build_parser as node_parser
from simulations.cli import build_parser as sim_parser

PARSERS = {"edgebind-sim": sim_parser, "edgebind-node": node_parser, "edgebind-coordinator": coordinator_parser}


def _commands(p: argparse.ArgumentParser, path: tuple[str, ...]):
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, child in a.choices.items():
                yield from _commands(child, (*path, name))


def _all_commands():
    for prog, build in PARSERS.items():
        yield from _commands(build(), (prog,))


@pytest.mark.parametrize("path,parser", list(_all_commands()), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_option_has_help_and_every_command_an_example(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    undocumented = [a.option_strings or [a.dest] for a in parser._actions if not a.help and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    assert not undocumented, f"{' '.join(path)}: options without a help line: {undocumented}"
    text = parser.format_help()
    assert "example" in text.rsplit("options:", 1)[-1], f"{' '.join(path)}: its help ends with no example"
    for example in (parser.epilog or "").splitlines()[1:]:
        assert example.strip().split()[0] == path[0], f"{' '.join(path)}: example {example.strip()!r} is not a {path[0]} command"


def test_help_shows_defaults() -> None:
    text = " ".join(sim_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "(default: 0)" in text and "(default: sensor-bind)" in text  # --seed, --scenario


@pytest.mark.parametrize("argv,named", [
    (["edgebind-sim", "run", "--nodes", "many"], "--nodes"),
    (["edgebind-sim", "probe", "--objective", "magic"], "--objective"),
    (["edgebind-node", "up", "--node-id", "n"], "required"),
    (["edgebind-coordinator", "status"], "--store"),
])  # fmt: skip
def test_a_wrong_value_ends_with_one_line_naming_it(argv: list[str], named: str) -> None:
    module = {"edgebind-sim": "simulations.cli", "edgebind-node": "node_agent.cli", "edgebind-coordinator": "coordinator.cli"}[argv[0]]
    r = subprocess.run([sys.executable, "-m", module, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "error:" in last and named in last, last
