"""The ``scc-convert`` command line: a thin shell over the public API.

    scc-convert [convert] MODEL [-o OUT] [--cg 4] [--co 0.5] [...]   convert a model file
    scc-convert profile MODEL [MODEL2] [...]         MACs/params/latency, or compare two
    scc-convert finetune CONVERTED --teacher ORIGINAL --data DIR|digits
                                                     recover accuracy (distillation)
    scc-convert export MODEL --format onnx|pt2 -o OUT
                                                     standard-op ONNX / torch.export program
    scc-convert demo                                 convert a built-in model, no download
    scc-convert info                                 versions, devices, SCC implementations
    scc-convert build-ext                            build the native CPU kernel now
    scc-convert --help | --version                   every command with a one-line summary

Exit codes: 0 success, 1 failure (the inputs could not be processed), 2 usage error. Every
error is one line on stderr (``--debug`` shows the traceback), and so is every warning
(``scc-convert: warning: ...``); no partial output file is ever left behind.

Layout: :mod:`.parser` (argument types, shared argument groups, the one-line usage error),
:mod:`.common` (loading, outputs, printing), :mod:`.commands` (one module per subcommand).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

from .commands import commands
from .parser import CLIError, Parser

__all__ = ["main"]

_TOP_LEVEL = ("-h", "--help", "--version")


def _parser(registry: dict[str, ModuleType]) -> Parser:
    import torch

    from .. import __version__

    top = Parser(
        prog="scc-convert",
        description="Replace a CNN's pointwise convolutions (and nn.Linear pointwise layers) with "
                    "Sliding-Channel Convolutions, and profile, fine-tune and export the result.",
        epilog="'scc-convert MODEL ...' is short for 'scc-convert convert MODEL ...'. "
               "'scc-convert COMMAND --help' shows a command's options.",
    )
    top.add_argument("--version", action="version", version=f"scc-convert {__version__} (torch {torch.__version__})")
    sub = top.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    for command in registry.values():
        p = sub.add_parser(command.NAME, help=command.SUMMARY, prog=f"scc-convert {command.NAME}",
                           description=getattr(command, "DESCRIPTION", command.SUMMARY))
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return top


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"scc-convert: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if "--quiet" in argv else "default")  # --quiet: errors only
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.showwarning = _one_line_warnings
            registry = commands()
            if not argv:
                raise CLIError("give a MODEL to convert or a command (scc-convert --help lists them)", 2)
            if argv[0] not in registry and argv[0] not in _TOP_LEVEL:
                argv = ["convert", *argv]
            args = _parser(registry).parse_args(argv)
            return args.run(args)
    except CLIError as err:
        if debug:
            raise
        print(f"scc-convert: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("scc-convert: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI promises one line, not a traceback
        if debug:
            raise
        text = str(err).strip()
        print(f"scc-convert: error: {type(err).__name__}: {text.splitlines()[0][:300] if text else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1
