"""What the three command lines share: help that shows defaults and ends with an example."""

from __future__ import annotations

import argparse
import logging


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help line shows its default, unless the line already says it or there is none to show
    (a flag, an empty default whose meaning the line gives); descriptions and examples keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        nothing = d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (str, list, tuple)) and not d)
        if "default" in text or not action.option_strings or nothing or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def command(sub: argparse._SubParsersAction, name: str, summary: str, *examples: str, description: str = "") -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` gives ``summary`` (and ``description``), every option's default and ``examples``."""
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return sub.add_parser(name, help=summary, description=description or summary, epilog=epilog, formatter_class=HelpFormatter)


def parser(prog: str, description: str, *examples: str) -> argparse.ArgumentParser:
    """A top-level parser in the same style as ``command``."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def tls_or_insecure(secured: str, insecure: bool, what: str) -> None:
    """TLS is the default for the SuperLink link: plain text takes an explicit --insecure, and says so loudly."""
    if secured and insecure:
        raise ValueError(f"give {what.split()[0]} or --insecure, not both")
    if not secured and not insecure:
        raise ValueError(f"the SuperLink link is TLS by default: give {what}, or --insecure to run it in plain text")
    if insecure:
        logging.getLogger("edgebind").warning("INSECURE: the SuperLink link runs in plain text; anyone on the path can read the traffic and join")
