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
import functools
import sys
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastcnn.kernels.triton import conv_bn_relu, global_avg_pool, lrn, max_pool
from fastcnn.kernels.triton import concat, relu_lrn_max_pool

ACC_DTYPES = {"fp32": tl.float32, "fp16": tl.float32, "bf16": tl.float32,
              "fp64": tl.float64}


class Variant(NamedTuple):
    dtype: str  # of the tensor pointers, and so of ACC_DTYPE
    constexprs: dict  # the kernel's tl.constexpr parameters, but ACC_DTYPE
    int_type: str = "i32"  # of the integer arguments: i64 for strides of 2**31 and more
    ones: tuple = ()  # integer arguments equal to 1, which a launch specialises (unit strides)
    pointers: tuple = ()  # (name, type) of pointers not of dtype; type None: passed None


def lrn_variants():
    # every dtype with the general exponent; every exponent kind and both tilings in fp32
    def options(kind, blocks):
        return {"BETA_KIND": kind.value, "BLOCK_C": blocks[0], "BLOCK_S": blocks[1]}

    for dtype in ACC_DTYPES:
        yield Variant(dtype, options(lrn._BETA_FRACTIONAL, (16, 128)))
    for kind in (lrn._BETA_ZERO, lrn._BETA_THREE_QUARTERS, lrn._BETA_EVEN, lrn._BETA_ODD):
        yield Variant("fp32", options(kind, (16, 128)))
    yield Variant("fp32", options(lrn._BETA_THREE_QUARTERS, (64, 32)), "i64")


def unit_strides(axis, *tensors):
    return tuple(f"{t}_stride_{axis}" for t in tensors)


def row_launch(shape, kernel_size, channels_last, rows, width):
    # the launcher's own choice of tiling for a tensor of this shape and layout
    t = torch.empty(shape, device="meta")
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return max_pool._row_launch(t, kernel_size, shape[1], rows, width)[1]


# AlexNet's pooling: (16, 96, 55, 55) -> (16, 96, 27, 27), 3x3 stride 2; and a window of
# 17 x 17 taps, too many to unroll.
def pool_launch(channels_last, backward=False, kernel_size=(3, 3)):
    rows, width = (55, 55) if backward else (27, 27)
    return row_launch((16, 96, 55, 55), kernel_size, channels_last, rows, width)


def max_pool_forward_variants():
    unit_pooling = ("dil_h", "dil_w")
    nchw = unit_pooling + unit_strides("w", "x", "y", "pos")
    cl = unit_pooling + unit_strides("c", "x", "y", "pos")
    for dtype in ACC_DTYPES:
        for pos in ("*u8", None):
            yield Variant(dtype, {**pool_launch(False), "WRITE_POSITIONS": pos is not None},
                          ones=nchw, pointers=(("pos_ptr", pos),))
    for dtype, pos in (("fp32", "*u8"), ("bf16", None)):
        yield Variant(dtype, {**pool_launch(True), "WRITE_POSITIONS": pos is not None},
                      ones=cl, pointers=(("pos_ptr", pos),))
    # dilated, 3x3 stride 1 (the unit stride specialised), runtime loops with int32 positions
    yield Variant("fp32", {**pool_launch(False), "WRITE_POSITIONS": True},
                  ones=unit_strides("w", "x", "y", "pos"), pointers=(("pos_ptr", "*u8"),))
    yield Variant("fp16", {**pool_launch(False), "WRITE_POSITIONS": True},
                  ones=nchw + ("stride_h", "stride_w", "pad_h", "pad_w"),
                  pointers=(("pos_ptr", "*u8"),))
    yield Variant("fp32", {**pool_launch(False, kernel_size=(17, 17)), "WRITE_POSITIONS": True},
                  "i64", pointers=(("pos_ptr", "*i32"),))


def max_pool_backward_variants():
    nchw = ("dil_h", "dil_w") + unit_strides("w", "g", "pos", "dx")
    cl = ("dil_h", "dil_w") + unit_strides("c", "g", "pos", "dx")
    for dtype in ACC_DTYPES:
        yield Variant(dtype, pool_launch(False, True), ones=nchw, pointers=(("pos_ptr", "*u8"),))
    yield Variant("fp32", pool_launch(True, True), ones=cl, pointers=(("pos_ptr", "*u8"),))
    yield Variant("fp16", pool_launch(False, True), ones=nchw + ("stride_h", "stride_w"),
                  pointers=(("pos_ptr", "*u8"),))
    yield Variant("fp32", pool_launch(False, True, kernel_size=(17, 17)), "i64",
                  pointers=(("pos_ptr", "*i32"),))


# AlexNet's stem, ReLU -> LRN(5) -> 3x3 stride 2 max-pool of (16, 96, 55, 55): every dtype
# in NCHW (forward also without positions), channels_last, the general exponent, and a
# window of 9 x 9 taps (too many to unroll) with an LRN window wider than one read.
def relu_lrn_max_pool_variants(backward):
    names = ("x", "g", "pos", "dx") if backward else ("x", "y", "pos")
    rows, width = (55, 55) if backward else (27, 27)

    def options(channels_last=False, beta=0.75, kernel_size=(3, 3), size=5, positions=True):
        t = torch.empty(16, 96, 55, 55, device="meta")
        if channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        launch = relu_lrn_max_pool._launch_settings(t, kernel_size, (2, 2), size, 1e-4, beta, 2.0,
                                                    rows, width, backward)[2]
        launch.pop("ACC_DTYPE")
        return {**launch, **({} if backward else {"WRITE_POSITIONS": positions})}

    byte = (("pos_ptr", "*u8"),)
    for dtype in ACC_DTYPES:
        yield Variant(dtype, options(), ones=unit_strides("w", *names), pointers=byte)
    if not backward:
        yield Variant("fp32", options(positions=False), ones=unit_strides("w", *names),
                      pointers=(("pos_ptr", None),))
    yield Variant("bf16", options(True), ones=unit_strides("c", *names), pointers=byte)
    # lrn.py's general exponent (its variants cover the other kinds of _power)
    yield Variant("fp32", options(beta=0.6), ones=unit_strides("w", *names), pointers=byte)
    yield Variant("fp32", options(kernel_size=(9, 9), size=11), "i64", pointers=byte)


# ResNet-50's (16, 2048, 7, 7) in both layouts, and a 112 x 112 image: S walked in steps.
def gap_options(shape, channels_last):
    t = torch.empty(shape, device="meta")
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    blocks = global_avg_pool._blocks(t.flatten(2))
    return {"BLOCK_C": blocks[0], "BLOCK_S": blocks[1]}


def gap_variants(spatial, pooled):
    # spatial names the (N, C, S) tensor, pooled the (N, C, 1) one, whose channels are
    # contiguous in both layouts
    nchw = (f"{spatial}_stride_s", f"{pooled}_stride_c")
    cl = (f"{spatial}_stride_c", f"{pooled}_stride_c")
    for dtype in ACC_DTYPES:
        yield Variant(dtype, gap_options((16, 2048, 7, 7), False), ones=nchw)
    for dtype in ("fp32", "bf16"):
        yield Variant(dtype, gap_options((16, 2048, 7, 7), True), ones=cl)
    yield Variant("fp32", gap_options((16, 64, 112, 112), False), "i64")


# conv_bn_relu's per-channel vectors and partial results are in the accumulation dtype,
# but the batch statistics' partial results (partial_*), always float64
STAT_POINTERS = {"scale_ptr", "shift_ptr", "mean_ptr", "invstd_ptr", "sum_dz_ptr",
                 "sum_dz_xhat_ptr", "sum_dz_dy_ptr"}


def conv_bn_relu_variants(fn):
    def pointers(dtype):
        acc = "*fp64" if dtype == "fp64" else "*fp32"
        return tuple((name, "*fp64" if name.startswith("partial_") else acc)
                     for name in fn.arg_names if name in STAT_POINTERS or
                     name.startswith("partial_"))

    def options(**changes):
        on = {"HAS_SCALE": True, "HAS_RESIDUAL": True, "RELU": True, "WRITE_DR": True,
              "BLOCK_C": 8, "BLOCK_S": 256}
        return {name: value for name, value in {**on, **changes}.items()
                if name in fn.arg_names}

    # every dtype with every option on; each option off in fp32; both tilings
    for dtype in ACC_DTYPES:
        yield Variant(dtype, options(), pointers=pointers(dtype))
    for option in ("HAS_SCALE", "HAS_RESIDUAL", "RELU", "WRITE_DR"):
        if option in fn.arg_names:
            yield Variant("fp32", options(**{option: False}), pointers=pointers("fp32"))
    yield Variant("fp32", options(BLOCK_C=64, BLOCK_S=32), "i64", pointers=pointers("fp32"))


def concat_variants():
    # every copy unit with 16-byte vectors; unaligned; every row dimension; many inputs
    def options(unit, vec=1, outer_rank=1, inputs_block=4, blocks=(4, 1024)):
        return {"UNIT": unit, "OUTER_RANK": outer_rank, "VEC": vec, "INPUTS_BLOCK": inputs_block,
                "BLOCK_R": blocks[0], "BLOCK_L": blocks[1]}

    table = (("table_ptr", "*i64"),)
    for unit in (tl.int8, tl.int16, tl.int32, tl.int64):
        yield Variant("fp32", options(unit, vec=128 // unit.primitive_bitwidth), pointers=table)
    yield Variant("fp32", options(tl.int16, blocks=(32, 128)), pointers=table)
    yield Variant("fp32", options(tl.int32, 4, concat._MAX_OUTER, 1, (64, 64)), pointers=table)
    yield Variant("fp32", options(tl.int64, 1, 2, 1024, (4096, 1)), "i64", pointers=table)


KERNELS = [
    (concat._concat_kernel, concat_variants),
    (lrn._lrn_forward_kernel, lrn_variants),
    (lrn._lrn_backward_kernel, lrn_variants),
    (max_pool._max_pool2d_forward_kernel, max_pool_forward_variants),
    (max_pool._max_pool2d_backward_kernel, max_pool_backward_variants),
    (relu_lrn_max_pool._relu_lrn_max_pool2d_forward_kernel,
     functools.partial(relu_lrn_max_pool_variants, False)),
    (relu_lrn_max_pool._relu_lrn_max_pool2d_backward_kernel,
     functools.partial(relu_lrn_max_pool_variants, True)),
    (global_avg_pool._global_avg_pool2d_forward_kernel, lambda: gap_variants("x", "y")),
    (global_avg_pool._global_avg_pool2d_backward_kernel, lambda: gap_variants("dx", "g")),
]
KERNELS += [(fn, functools.partial(conv_bn_relu_variants, fn)) for fn in (
    conv_bn_relu._channel_affine_act_kernel, conv_bn_relu._batch_norm_stats_kernel,
    conv_bn_relu._backward_reduce_kernel, conv_bn_relu._backward_kernel)]


def compile_kernel(fn, variant, capability):
    constexprs = {"ACC_DTYPE": ACC_DTYPES[variant.dtype], **variant.constexprs}
    pointers = dict(variant.pointers)
    unknown = (set(variant.ones) | set(pointers)) - set(fn.arg_names)
    if unknown:
        raise ValueError(f"no parameters {sorted(unknown)}")
    signature, values = {}, {}
    for index, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            signature[name], values[(index,)] = "constexpr", constexprs[name]
        elif name in variant.ones:
            signature[name], values[(index,)] = "constexpr", 1
        elif name.endswith("_ptr"):
            pointer = pointers.get(name, "*" + variant.dtype)
            if pointer is None:
                signature[name], values[(index,)] = "constexpr", None
            else:
                signature[name] = pointer
        else:
            signature[name] = param.annotation or variant.int_type
    source = ASTSource(fn=fn, signature=signature, constexprs=values)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32))


failures = 0
for capability in (80, 90):
    for fn, variants in KERNELS:
        for variant in variants():
            try:
                compile_kernel(fn, variant, capability)
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
