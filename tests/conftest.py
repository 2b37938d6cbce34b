import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

# tests/triton runs the Triton kernels under the interpreter, in its own pytest process with
# TRITON_INTERPRET=1 set before triton is imported (see tests/triton/conftest.py).
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["triton"]
