"""What building the native CPU kernel takes: its sources and flags.

Standard library only, so that ``setup.py`` can read it without importing the package (or
torch); ``native.py`` uses the same for the build on first use.
"""

from __future__ import annotations

import sys

__all__ = ["SOURCES", "compile_flags"]

# csrc/, in build order; the .cpp files are the translation units.
SOURCES = (
    "kernels.h", "kernels_impl.h", "kernels_last_impl.h", "kernels_stacked_impl.h", "tiles.h", "windows.h",
    "output_cache.h", "drivers.h",
    "output_cache.cpp", "isa_avx512.cpp", "isa_avx2.cpp", "isa_portable.cpp", "kernels.cpp",
    "forward.cpp", "forward_last.cpp", "backward.cpp", "backward_last.cpp", "ops.cpp",
)


def compile_flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags (besides those torch.utils.cpp_extension adds).

    ``-ffp-contract=fast`` lets the micro-kernels' multiply-adds become FMA instructions (ISO
    C++ mode forbids it otherwise); ``-fopenmp`` because ``at::parallel_for`` is OpenMP
    inline code in torch's Linux builds (the process then shares torch's libgomp).
    """
    cflags = ["-O3", "-ffp-contract=fast", "-g0"]
    ldflags: list[str] = []
    if sys.platform.startswith("linux"):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags
