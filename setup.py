"""Packaging (metadata in setup.cfg) and the native CPU kernel.

The kernel (``csrc/``) is built as the extension ``scc_convert._C`` when torch can be
imported here — ``pip install --no-build-isolation .`` (or ``-e .``), so that it is built
against the torch it will run with. Under pip's default build isolation torch is absent and
the package installs without it; the kernel is then built on first use (or by
``scc-convert build-ext``) into a cache. A failed build does not fail the install: the
package says so and falls back in the same way. Wheels carry ``csrc/`` as
``scc_convert/_csrc`` for that first-use build.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _native_build():
    """scc_convert/ops/native_build.py, read without importing the package."""
    spec = importlib.util.spec_from_file_location("native_build", HERE / "scc_convert" / "ops" / "native_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithSources(build_py):
    """Copies csrc/ into the built package as scc_convert/_csrc."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "scc_convert" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for name in _native_build().SOURCES:
            shutil.copy2(HERE / "csrc" / name, target / name)


def _extension_setup():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("scc_convert: torch is not importable while building (pip's build isolation), so the native "
              "CPU kernel is left for first use; `pip install --no-build-isolation` builds it now")
        return {}

    class OptionalBuildExtension(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - any compiler failure: install without the kernel
                print(f"scc_convert: building the native CPU kernel failed ({str(err).splitlines()[0]}); it is "
                      f"built on first use instead, else the PyTorch path runs")

    nb = _native_build()
    cflags, ldflags = nb.compile_flags()
    extension = CppExtension(
        name="scc_convert._C",
        sources=[f"csrc/{name}" for name in nb.SOURCES if name.endswith(".cpp")],
        extra_compile_args={"cxx": cflags},
        extra_link_args=ldflags,
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": OptionalBuildExtension}}


options = _extension_setup()
options.setdefault("cmdclass", {})["build_py"] = BuildPyWithSources
setup(**options)
