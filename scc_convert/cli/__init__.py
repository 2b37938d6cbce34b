"""The ``scc-convert`` command line: a thin shell over the public API.

    scc-convert MODEL [-o OUT] [--cg 4] [--co 0.5] [...]   convert a model file
    scc-convert profile MODEL [MODEL2] [...]               MACs/params/latency, or compare two
    scc-convert finetune CONVERTED --teacher ORIGINAL --data DIR|digits
                                                           recover accuracy (distillation)
    scc-convert export MODEL --format onnx|pt2 -o OUT     standard-op ONNX / torch.export program
    scc-convert demo                                       convert a built-in model, no download
    scc-convert info                                       versions, devices, SCC implementations
    scc-convert build-ext                                  build the native CPU kernel now

Exit codes: 0 success, 1 failure (the inputs could not be processed), 2 usage error. Every
error is one line on stderr (``--debug`` shows the traceback); no partial output file is
ever left behind.

Layout: :mod:`.parser` (argument types, shared argument groups, the one-line usage error),
:mod:`.common` (loading, outputs, printing), :mod:`.commands` (one module per subcommand).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .commands import commands
from .parser import CLIError, Parser

__all__ = ["main"]


def _parser(command, prog: str) -> Parser:
    p = Parser(prog=prog, description=getattr(command, "DESCRIPTION", command.SUMMARY))
    command.add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        registry = commands()
        if argv and argv[0] in registry and argv[0] != "convert":
            command = registry[argv[0]]
            args = _parser(command, f"scc-convert {command.NAME}").parse_args(argv[1:])
        else:
            command = registry["convert"]
            args = _parser(command, "scc-convert").parse_args(argv)
        return command.run(args)
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
        print(f"scc-convert: error: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1

