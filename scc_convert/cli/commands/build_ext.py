"""``scc-convert build-ext``: build the native CPU kernel into the cache now."""

from __future__ import annotations

import argparse

from ..common import say
from ..parser import CLIError, add_common

NAME = "build-ext"
SUMMARY = "build the native C++ CPU kernel into the cache (otherwise built on first use)"
DESCRIPTION = ("Compile the native CPU kernel of the SCC op (csrc/, C++ compiler and ninja) into "
               "the cache ($SCC_CONVERT_CACHE, default ~/.cache/scc_convert), where the first CPU "
               "call finds it. Not needed when the package was installed with the kernel built "
               "(pip install --no-build-isolation). Exit 1 with the build log's path on failure.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="rebuild even if the cache has a build for this torch and these sources")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from ...ops import native

    say(args, f"building the native CPU kernel into {native.cache_dir()} ...")
    try:
        path = native.build(force=args.force)
    except native.BuildError as err:
        raise CLIError(str(err), 1) from None
    say(args, f"native CPU kernel: {path}")
    return 0
