"""The Triton kernels compile for real GPUs (Ampere sm_80 and Hopper sm_90), checked
without one: Triton's own compiler and ptxas run here; nothing is launched.

The interpreter, which runs the kernels in the other tests, accepts code that the compiler
rejects, so this is the check that stands in for a GPU until one runs them."""

import os
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the test session has TRITON_INTERPRET=1 set, under which
# kernels are defined for the interpreter and cannot be compiled.
SCRIPT = r"""
import sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastcnn.kernels.triton import lrn

POINTER_TYPES = {"fp32": tl.float32, "fp16": tl.float32, "bf16": tl.float32,
                 "fp64": tl.float64}


def variants():
    # every dtype with the general exponent; every exponent kind and both tilings in fp32
    for dtype in POINTER_TYPES:
        yield dtype, lrn._BETA_FRACTIONAL, (16, 128), "i32"
    for kind in (lrn._BETA_ZERO, lrn._BETA_THREE_QUARTERS, lrn._BETA_EVEN, lrn._BETA_ODD):
        yield "fp32", kind, (16, 128), "i32"
    yield "fp32", lrn._BETA_THREE_QUARTERS, (64, 32), "i64"


def compile_kernel(fn, dtype, kind, blocks, int_type, capability):
    constexprs = {"BETA_KIND": kind.value, "ACC_DTYPE": POINTER_TYPES[dtype],
                  "BLOCK_C": blocks[0], "BLOCK_S": blocks[1]}
    signature, values = {}, {}
    for index, param in enumerate(fn.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            values[(index,)] = constexprs[param.name]
        elif param.name.endswith("_ptr"):
            signature[param.name] = "*" + dtype
        else:
            signature[param.name] = param.annotation or int_type
    source = ASTSource(fn=fn, signature=signature, constexprs=values)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32))


failures = 0
for capability in (80, 90):
    for fn in (lrn._lrn_forward_kernel, lrn._lrn_backward_kernel):
        for variant in variants():
            try:
                compile_kernel(fn, *variant, capability)
            except Exception as error:
                failures += 1
                print(f"FAILED sm_{capability} {fn.__name__} {variant}: {error}")
print(f"{failures} failures")
sys.exit(1 if failures else 0)
"""


def test_triton_kernels_compile_for_gpus():
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("this Triton has no NVIDIA backend to compile with")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failures" in result.stdout
