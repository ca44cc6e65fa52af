"""Concatenation along one dimension (torch.cat) as ONE Triton launch for all inputs.

Input i goes to the slice output.narrow(dim, offset_i, size_i). The launcher plans each
input's copy as `rows` runs of `length` elements (dimensions of size 1 dropped, the others
ordered by the output's strides, innermost last, and merged where both sides allow it) and
writes one row of an int64 table per input: where its first tile is in the grid, the
addresses of its data and of its output slice, its run, and the sizes and strides of its
row dimensions. Each program owns a BLOCK_R x BLOCK_L tile (rows x run) of one input: it
finds the input as the last one whose first tile is at or before its program id, casts
the two addresses to pointers and copies. The copy is of bytes (as 1, 2, 4 or 8-byte
integers; 16-byte complex128 elements as two 8-byte halves), so every dtype runs.

Where every run is contiguous and every address, row stride and run length a multiple of
the same power of two of bytes (up to 16), the kernel is told so (VEC), and Triton moves
that many bytes per access; the interpreter ignores this promise, so only a GPU tests it.
Offsets are 64-bit. A launch takes up to _MAX_INPUTS inputs (more take one launch per
_MAX_INPUTS). An input whose copy keeps more than _MAX_OUTER + 1 dimensions (some layouts
of more than 6 dimensions) is made contiguous first, and where even that does not do
(an output laid out so too) PyTorch copies it.
"""

import math

import torch
import triton
import triton.language as tl

from fastcnn.kernels.triton._common import check_dtype, check_strided, on_device_of

# Columns of the launch table, one row per input (all int64): the input's first tile in
# the grid, the addresses (bytes) of its data and of its output slice, its rows, its run
# (length and the strides along it), then size, input stride and output stride of each
# row dimension, innermost first. Strides are in copy units (UNIT).
_FIRST_TILE, _SRC, _DST, _ROWS, _LENGTH, _SRC_STEP, _DST_STEP, _OUTER = (
    tl.constexpr(column) for column in range(8))
_MAX_OUTER = 5
_FIELDS = tl.constexpr(_OUTER.value + 3 * _MAX_OUTER)

_MAX_INPUTS = 1024  # per launch: the program's search loads this many first tiles
_TILE = 4096  # elements per program
_MAX_BLOCK_L = 1024
_VECTOR_BYTES = 16

# The integer type each element size is copied as.
_UNITS = {1: tl.int8, 2: tl.int16, 4: tl.int32, 8: tl.int64}


@triton.jit
def _concat_kernel(
    table_ptr,  # (inputs, _FIELDS) int64: one row per input, see the columns above
    inputs,  # rows of the table
    # compile-time options
    UNIT: tl.constexpr,  # the integer type elements are copied as
    OUTER_RANK: tl.constexpr,  # row dimensions read from the table (at most _MAX_OUTER)
    VEC: tl.constexpr,  # units that every address, row stride and run length is a
    # multiple of, with every run contiguous; 1: no such promise
    # tiling
    INPUTS_BLOCK: tl.constexpr,  # inputs rounded up to a power of two
    BLOCK_R: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    # the input of this tile: the last one whose first tile is at or before it
    slots = tl.arange(0, INPUTS_BLOCK)
    firsts = tl.load(table_ptr + slots * _FIELDS + _FIRST_TILE, mask=slots < inputs,
                     other=2**62)
    entry = table_ptr + (tl.sum((firsts <= pid).to(tl.int32)) - 1).to(tl.int64) * _FIELDS

    src = tl.load(entry + _SRC).to(tl.pointer_type(UNIT))
    dst = tl.load(entry + _DST).to(tl.pointer_type(UNIT))
    length = tl.load(entry + _LENGTH)
    if VEC > 1:
        # (a pointer's divisibility is in bytes; the hint must follow the cast, which
        # forgets any on the integer)
        unit_bytes: tl.constexpr = UNIT.primitive_bitwidth // 8
        src = tl.multiple_of(src, VEC * unit_bytes)
        dst = tl.multiple_of(dst, VEC * unit_bytes)
        length = tl.multiple_of(length, VEC)

    tile = pid - tl.load(entry + _FIRST_TILE)
    tiles_l = tl.cdiv(length, BLOCK_L)
    rows = tile // tiles_l * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    run = tile % tiles_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)

    # where each row starts: its index unravelled over the row dimensions, innermost first
    # (the first term assigned, not added to zeros, which the compiler would fold away
    # with the hint below)
    rest = rows
    for d in tl.static_range(OUTER_RANK):
        dim = entry + _OUTER + 3 * d
        size = tl.load(dim)
        index = rest % size
        rest = rest // size
        if d == 0:
            src_rows = index * tl.load(dim + 1)
            dst_rows = index * tl.load(dim + 2)
        else:
            src_rows += index * tl.load(dim + 1)
            dst_rows += index * tl.load(dim + 2)

    if VEC > 1:
        src_rows = tl.multiple_of(src_rows, VEC)
        dst_rows = tl.multiple_of(dst_rows, VEC)
        src_run = run
        dst_run = run
    else:
        src_run = run * tl.load(entry + _SRC_STEP)
        dst_run = run * tl.load(entry + _DST_STEP)
    mask = (rows < tl.load(entry + _ROWS))[:, None] & (run < length)[None, :]
    values = tl.load(src + src_rows[:, None] + src_run[None, :], mask=mask)
    tl.store(dst + dst_rows[:, None] + dst_run[None, :], values, mask=mask)


def _plan(input, output, dim, offset, factor):
    """(address of the input, address of its output slice, axes) with axes the copy's
    dimensions as [size, input stride, output stride] in units, merged, outermost first.
    An element is `factor` units."""
    axes = [[size, a * factor, b * factor]
            for size, a, b in zip(input.shape, input.stride(), output.stride()) if size != 1]
    if factor > 1:
        axes.append([factor, 1, 1])
    axes.sort(key=lambda axis: (axis[2], axis[1]), reverse=True)
    merged = []
    for size, a, b in axes:
        if merged and merged[-1][1] == a * size and merged[-1][2] == b * size:
            merged[-1] = [merged[-1][0] * size, a, b]
        else:
            merged.append([size, a, b])
    dst = output.data_ptr() + offset * output.stride(dim) * output.element_size()
    return input.data_ptr(), dst, merged or [[1, 1, 1]]


def _vector_units(plans, unit_bytes):
    """The VEC of a launch: the largest power of two of units, up to 16 bytes, that divides
    every address, row stride and run length, with every run contiguous; else 1."""
    vec = _VECTOR_BYTES // unit_bytes
    for src, dst, axes in plans:
        length, src_step, dst_step = axes[-1]
        if src_step != 1 or dst_step != 1 or src % unit_bytes or dst % unit_bytes:
            return 1
        values = [src // unit_bytes, dst // unit_bytes, length]
        values += [stride for axis in axes[:-1] for stride in axis[1:]]
        while vec > 1 and any(v % vec for v in values):
            vec //= 2
    return vec


def _launch(plans, device, unit_bytes):
    """One launch copying every planned input."""
    longest = max(axes[-1][0] for _, _, axes in plans)
    most_rows = max(math.prod(axis[0] for axis in axes[:-1]) for _, _, axes in plans)
    block_l = min(triton.next_power_of_2(longest), _MAX_BLOCK_L)
    block_r = min(max(_TILE // block_l, 1), triton.next_power_of_2(most_rows))
    outer_rank = max(1, max(len(axes) - 1 for _, _, axes in plans))
    table, first = [], 0
    for src, dst, axes in plans:
        length, src_step, dst_step = axes[-1]
        rows = math.prod(axis[0] for axis in axes[:-1])
        row = [first, src, dst, rows, length, src_step, dst_step]
        for axis in reversed(axes[:-1]):
            row += axis
        table.append(row + [1, 0, 0] * (_MAX_OUTER - len(axes) + 1))
        first += triton.cdiv(rows, block_r) * triton.cdiv(length, block_l)
    table = torch.tensor(table, dtype=torch.int64)
    if device.type == "cuda":
        table = table.pin_memory().to(device, non_blocking=True)
    with on_device_of(table):
        _concat_kernel[(first,)](
            table, len(plans), UNIT=_UNITS[unit_bytes], OUTER_RANK=outer_rank,
            VEC=_vector_units(plans, unit_bytes),
            INPUTS_BLOCK=triton.next_power_of_2(len(plans)), BLOCK_R=block_r, BLOCK_L=block_l)


def _check_args(inputs, output, dim):
    check_strided("output", output)
    if not 0 <= dim < output.dim():
        raise ValueError(f"dim must be in [0, {output.dim()}) for the {output.dim()}-d "
                         f"output, got {dim}")
    total = 0
    for i, t in enumerate(inputs):
        name = f"inputs[{i}]"
        check_strided(name, t)
        check_dtype(name, t, "output", output)
        if t.device != output.device:
            raise ValueError(f"{name} must be on the device of output, {output.device}, got "
                             f"{t.device}")
        if t.dim() != output.dim() or any(a != b for d, (a, b) in
                                          enumerate(zip(t.shape, output.shape)) if d != dim):
            raise ValueError(f"{name} of shape {tuple(t.shape)} must have the shape of output "
                             f"{tuple(output.shape)} in every dimension but dim {dim}")
        total += t.shape[dim]
    if total != output.shape[dim]:
        raise ValueError(f"the inputs' sizes along dim {dim} add up to {total}, but output has "
                         f"{output.shape[dim]}")


def concat_forward(inputs, output, dim):
    """Writes the concatenation of inputs (a list of tensors of output's dtype, rank and
    sizes outside dim) along dim into output; any strides."""
    _check_args(inputs, output, dim)
    element = output.element_size()
    unit_bytes = min(element, 8)
    factor = element // unit_bytes
    plans, copies, offset = [], [], 0
    for t in inputs:
        if t.numel() > 0:
            plan = _plan(t, output, dim, offset, factor)
            if len(plan[2]) > _MAX_OUTER + 1:
                t = t.contiguous()
                copies.append(t)  # alive until the launch has read it
                plan = _plan(t, output, dim, offset, factor)
            if len(plan[2]) > _MAX_OUTER + 1:  # an output laid out that way: torch copies
                output.narrow(dim, offset, t.shape[dim]).copy_(t)
            else:
                plans.append(plan)
        offset += t.shape[dim]
    for start in range(0, len(plans), _MAX_INPUTS):
        _launch(plans[start:start + _MAX_INPUTS], output.device, unit_bytes)
