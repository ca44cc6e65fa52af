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

from fastcnn.kernels.triton import conv_bn_relu, lrn

POINTER_TYPES = {"fp32": tl.float32, "fp16": tl.float32, "bf16": tl.float32,
                 "fp64": tl.float64}
ACC_NAMES = {tl.float32: "fp32", tl.float64: "fp64"}
# conv_bn_relu's per-channel vectors and partial results are in the accumulation dtype
STAT_POINTERS = {"scale_ptr", "shift_ptr", "mean_ptr", "invstd_ptr", "sum_dz_ptr",
                 "sum_dz_xhat_ptr", "sum_dz_dy_ptr"}
# except the batch statistics' partial results (partial_*), always float64


def lrn_variants():
    # every dtype with the general exponent; every exponent kind and both tilings in fp32
    for dtype in POINTER_TYPES:
        yield dtype, {"BETA_KIND": lrn._BETA_FRACTIONAL.value, "BLOCK_C": 16, "BLOCK_S": 128}, "i32"
    for kind in (lrn._BETA_ZERO, lrn._BETA_THREE_QUARTERS, lrn._BETA_EVEN, lrn._BETA_ODD):
        yield "fp32", {"BETA_KIND": kind.value, "BLOCK_C": 16, "BLOCK_S": 128}, "i32"
    yield "fp32", {"BETA_KIND": lrn._BETA_THREE_QUARTERS.value, "BLOCK_C": 64, "BLOCK_S": 32}, "i64"


def conv_bn_relu_variants():
    # every dtype with every option on; each option off in fp32; both tilings
    on = {"HAS_SCALE": True, "HAS_RESIDUAL": True, "RELU": True, "WRITE_DR": True}
    for dtype in POINTER_TYPES:
        yield dtype, {**on, "BLOCK_C": 8, "BLOCK_S": 256}, "i32"
    for option in on:
        yield "fp32", {**on, option: False, "BLOCK_C": 8, "BLOCK_S": 256}, "i32"
    yield "fp32", {**on, "BLOCK_C": 64, "BLOCK_S": 32}, "i64"


def compile_kernel(fn, dtype, options, int_type, capability):
    acc = POINTER_TYPES[dtype]
    constexprs = {"ACC_DTYPE": acc, **options}
    signature, values = {}, {}
    for index, param in enumerate(fn.params):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            values[(index,)] = constexprs[param.name]
        elif param.name.startswith("partial_"):
            signature[param.name] = "*fp64"
        elif param.name in STAT_POINTERS:
            signature[param.name] = "*" + ACC_NAMES[acc]
        elif param.name.endswith("_ptr"):
            signature[param.name] = "*" + dtype
        else:
            signature[param.name] = param.annotation or int_type
    source = ASTSource(fn=fn, signature=signature, constexprs=values)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32))


KERNELS = [(fn, lrn_variants) for fn in (lrn._lrn_forward_kernel, lrn._lrn_backward_kernel)]
KERNELS += [(fn, conv_bn_relu_variants) for fn in (
    conv_bn_relu._channel_affine_act_kernel, conv_bn_relu._batch_norm_stats_kernel,
    conv_bn_relu._backward_reduce_kernel, conv_bn_relu._backward_kernel)]

failures = 0
for capability in (80, 90):
    for fn, variants in KERNELS:
        for dtype, options, int_type in variants():
            options = {k: v for k, v in options.items()
                       if any(p.name == k for p in fn.params)}
            try:
                compile_kernel(fn, dtype, options, int_type, capability)
            except Exception as error:
                failures += 1
                print(f"FAILED sm_{capability} {fn.__name__} {dtype} {options}: {error}")
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
