"""Importing the installed package must leave the process as it found it: torch's default dtype unchanged and
no stand-in or peer modules (torchvision, k_diffusion) registered in sys.modules. Each check runs in a fresh
interpreter, since the other tests' imports (benchmarks/peers.py stubs torchvision) share this one."""

import subprocess
import sys

import pytest

CHECK = """
import sys
import torch
torch.set_default_dtype(torch.{dtype})
before = set(sys.modules)
import ei_toolkit, ei_toolkit.compare
{then}
assert torch.get_default_dtype() == torch.{dtype}, torch.get_default_dtype()
added = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("torchvision", "k_diffusion"))
assert not added, added
"""

RUN = """
from ei_toolkit import compare
compare.run_comparison(problems=["gmm2d"], nfes=[5], n=8, pairs=[("ddim", "uniform_t")])
"""


@pytest.mark.parametrize(("dtype", "then"), [("float32", ""), ("float64", RUN)], ids=["import", "run_comparison"])
def test_import_leaves_default_dtype_and_sys_modules_alone(dtype, then):
    code = CHECK.format(dtype=dtype, then=then)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
