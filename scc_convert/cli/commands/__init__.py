"""The subcommands of ``scc-convert``, one module each.

A command module defines:

* ``NAME`` — the word on the command line;
* ``SUMMARY`` — one line for ``scc-convert --help``; ``DESCRIPTION`` — the longer text of
  ``scc-convert NAME --help``;
* ``add_arguments(parser)`` — its arguments, on an ``argparse.ArgumentParser``;
* ``run(args) -> int`` — the work; the exit code (raise ``cli.parser.CLIError`` for a
  one-line error).

Adding a subcommand: write ``scc_convert/cli/commands/<module>.py`` and add its module name
to ``MODULES`` below (the order is the order of ``--help``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = (
    "convert",
    "profile",
    "sweep",
    "finetune",
    "export",
    "demo",
    "info",
    "build_ext",
)


def commands() -> dict[str, ModuleType]:
    """``NAME -> module`` for every registered subcommand, in ``MODULES`` order."""
    modules = (importlib.import_module(f"{__name__}.{name}") for name in MODULES)
    return {m.NAME: m for m in modules}
