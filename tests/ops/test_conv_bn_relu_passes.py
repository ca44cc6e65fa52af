"""The passes around conv_bn_relu's convolution (batch statistics, affine + ReLU, the
backward's sums and gradient), kernel by kernel on (N, C, S) views, against the reference
kernels in float64 on every backend."""

import pytest
import torch
from helpers import VIEW_LAYOUTS, assert_close_to_reference, randn, strided_view

from fastcnn import backends
from fastcnn.ops.layout import channel_view


def test_batch_statistics_are_numerically_stable(backend_device):
    """Values far from zero (mean 1e4, standard deviation 1) in float32: the variance is
    that of the float32 values, computed exactly, to float32 precision."""
    backend, device = backend_device
    y = (1e4 + randn(2, 3, 3000, dtype=torch.float64)).float().to(device)
    mean = torch.empty(3, device=device)
    var = torch.empty(3, device=device)
    backends.kernels(backend).batch_norm_stats(y, mean, var)
    var_ref, mean_ref = torch.var_mean(y.double(), dim=(0, 2), correction=0)
    torch.testing.assert_close(mean.double().cpu(), mean_ref.cpu(), rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double().cpu(), var_ref.cpu(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", VIEW_LAYOUTS)
def test_kernels_read_and_write_any_strides(backend_device, layout):
    """The kernel entry points on (N, C, S) views laid out every way, against the
    reference kernels on the same views."""
    backend, device = backend_device
    n, c, s = 2, 20, 24

    def view(kind):
        return strided_view(kind, n, c, s, device=device)

    def vector(fill=None):
        v = torch.rand(c, dtype=torch.float64, device=device) + 0.5
        return v if fill is None else v.fill_(fill)

    y, grad, residual = view(layout).normal_(), view("neither").normal_(), view(layout).normal_()
    scale, shift, invstd = vector(), vector() - 1, vector()
    results = {}
    for name in (backend, "reference"):
        kernels = backends.kernels(name)
        out, dy, dr = (view("neither").fill_(float("nan")) for _ in range(3))
        mean, var, sum_dz, sum_dz_xhat = (vector(float("nan")) for _ in range(4))
        kernels.channel_affine_act(y, scale, shift, residual, out, True)
        kernels.batch_norm_stats(y, mean, var)
        kernels.batch_norm_act_backward_reduce(grad, y, residual, scale, shift, mean, invstd,
                                               sum_dz, sum_dz_xhat, True)
        kernels.batch_norm_act_backward(grad, y, residual, scale, shift, mean, invstd, sum_dz,
                                        sum_dz_xhat, dy, dr, True)
        in_place = y.clone()
        kernels.channel_affine_act(in_place, scale, shift, None, in_place, False)
        results[name] = (out, mean, var, sum_dz, sum_dz_xhat, dy, dr, in_place)
    for ours, expected in zip(results[backend], results["reference"]):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


# (N, C, S) views of the C++ kernels' work splits: channels_last ones, whose channels the
# reductions take 16 at a time (whole chunks, then a narrower last one) over blocks of
# positions of one image (one, or several per image), and NCHW ones of short rows, which
# are taken several images at a time (a last, smaller group of images included).
TILINGS = {
    "channels-last-16": (True, (3, 16, 50)),
    "channels-last-37": (True, (3, 37, 50)),
    "channels-last-64": (True, (3, 64, 50)),
    "channels-last-blocks": (True, (2, 64, 1000)),
    "nchw-image-groups": (False, (100, 8, 49)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tiling", TILINGS.values(), ids=TILINGS.keys())
@pytest.mark.parametrize("with_residual", [False, True], ids=["", "residual"])
def test_passes_against_float64(backend_device, dtype, tiling, with_residual):
    """Every pass (batch statistics, affine + ReLU, backward sums, backward) on the views of
    TILINGS against the reference kernels on the same values in float64. The backward sums
    are compared divided by their count, as the means they stand for. A NaN in the
    residual makes its value before the ReLU NaN, whose gradient passes as torch.relu's."""
    backend, device = backend_device
    channels_last, (n, c, s) = tiling

    def feature_map():
        if channels_last:
            return randn(n, s, c, dtype=dtype, device=device).transpose(1, 2)
        return randn(n, c, s, dtype=dtype, device=device)

    tensors = [feature_map(), feature_map(), feature_map() if with_residual else None]
    if with_residual:
        tensors[2][1, c - 1, s // 2] = float("nan")
    # scale, shift, mean, invstd, and the backward's sum_dz, sum_dz_xhat
    vectors = [torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64),
               torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5,
               torch.randn(c, dtype=torch.float64) * n * s,
               torch.randn(c, dtype=torch.float64) * n * s]
    results = {}
    for side, name, to in (("ours", backend, dtype), ("expected", "reference", torch.float64)):
        y, grad, residual = (None if t is None else t.to(to) for t in tensors)
        opmath = torch.float64 if to == torch.float64 else torch.float32
        scale, shift, mean, invstd, sum_dz, sum_dz_xhat = (
            v.to(device=device, dtype=opmath) for v in vectors)
        kernels = backends.kernels(name)
        batch_mean, batch_var, found_dz, found_dz_xhat = (
            torch.empty(c, dtype=opmath, device=device) for _ in range(4))
        out, dy, dr = (torch.empty_like(y) for _ in range(3))
        kernels.batch_norm_stats(y, batch_mean, batch_var)
        kernels.channel_affine_act(y, scale, shift, residual, out, True)
        kernels.batch_norm_act_backward_reduce(grad, y, residual, scale, shift, mean, invstd,
                                               found_dz, found_dz_xhat, True)
        kernels.batch_norm_act_backward(grad, y, residual, scale, shift, mean, invstd, sum_dz,
                                        sum_dz_xhat, dy, dr if with_residual else None, True)
        results[side] = ((batch_mean, batch_var, found_dz / (n * s), found_dz_xhat / (n * s)),
                         (out, dy) + ((dr,) if with_residual else ()))
    accumulation = torch.float64 if dtype == torch.float64 else torch.float32
    for ours, expected in zip(results["ours"][0], results["expected"][0]):
        assert_close_to_reference(ours, expected, accumulation, backend, device)
    for ours, expected in zip(results["ours"][1], results["expected"][1]):
        assert ours.dtype == dtype
        # dy is a difference of terms as large as the largest values (k (y - mean) reaches
        # tens): its rounding is relative to them, not to each value
        scale = expected[expected.isfinite()].abs().max().clamp(min=1)
        assert_close_to_reference(ours.double() / scale, expected / scale, dtype, backend,
                                  device)


# Strides that fit in 32 bits (so Triton types them int32) times indices that do not.
@pytest.mark.parametrize("shape, strides", [((3, 2, 3), (2**30 + 3, 4, 1)),
                                            ((1, 3, 3), (3 * (2**30 + 3), 2**30 + 3, 1))],
                         ids=["batch-stride", "channel-stride"])
def test_64_bit_offsets(backend_device, shape, strides):
    """Element offsets beyond 2**31 in every kernel. The storage is reserved, not touched:
    only the few elements of the views are written."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the storage trick relies on lazily committed host memory")

    def huge(fill):
        t = torch.empty_strided(shape, strides, dtype=torch.float16)
        return t.normal_() if fill else t

    y, grad, residual, out, dy, dr = (huge(i < 3) for i in range(6))
    c = shape[1]
    scale, shift, invstd = torch.rand(c) + 0.5, torch.randn(c), torch.rand(c) + 0.5
    results = {}
    for name in (backend, "reference"):
        kernels = backends.kernels(name)
        mean, var, sum_dz, sum_dz_xhat = (torch.empty(c) for _ in range(4))
        kernels.channel_affine_act(y, scale, shift, residual, out, True)
        kernels.batch_norm_stats(y, mean, var)
        kernels.batch_norm_act_backward_reduce(grad, y, residual, scale, shift, mean, invstd,
                                               sum_dz, sum_dz_xhat, True)
        kernels.batch_norm_act_backward(grad, y, residual, scale, shift, mean, invstd, sum_dz,
                                        sum_dz_xhat, dy, dr, True)
        results[name] = [t.clone() for t in (out, mean, var, sum_dz, sum_dz_xhat, dy, dr)]
    for ours, expected in zip(results[backend], results["reference"]):
        assert_close_to_reference(ours, expected, torch.float16)


@pytest.mark.parametrize("layout", VIEW_LAYOUTS)
def test_cpu_reductions_do_not_depend_on_the_thread_count(layout):
    """The C++ statistics and backward sums split their work by the shape alone: one thread
    or two give the same bits (float64, where any other order of the sums would show)."""
    n, c, s = 8, 16, 3000  # several partial results
    y, grad = (strided_view(layout, n, c, s).normal_() for _ in range(2))
    vectors = [torch.rand(c, dtype=torch.float64) + 0.5 for _ in range(4)]
    kernels, threads, results = backends.kernels("cpp"), torch.get_num_threads(), []
    for count in (1, 2):
        torch.set_num_threads(count)
        try:
            found = [torch.empty(c, dtype=torch.float64) for _ in range(4)]
            kernels.batch_norm_stats(y, *found[:2])
            kernels.batch_norm_act_backward_reduce(grad, y, None, *vectors, *found[2:], True)
        finally:
            torch.set_num_threads(threads)
        results.append(found)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_cpp_entry_points_refuse_outputs_that_share_memory_with_inputs():
    base = randn(201)
    y, shifted = base[:200].view(2, 4, 25), base[1:].view(2, 4, 25)
    grad = channel_view(randn(2, 4, 5, 5))
    v = torch.rand(4)
    kernels = backends.kernels("cpp")
    with pytest.raises(RuntimeError, match="output must not share memory with input"):
        kernels.channel_affine_act(y, v, v, None, shifted, True)
    with pytest.raises(RuntimeError, match="grad_input must not share memory with grad_output"):
        kernels.batch_norm_act_backward(grad, y, None, v, v, v, v, v, v, grad, None, True)
    with pytest.raises(RuntimeError, match=r"output must have the shape of input \[2, 4, 25\]"):
        kernels.channel_affine_act(y, v, v, None, torch.empty(2, 3, 25), True)
    with pytest.raises(RuntimeError, match="output must have the dtype of input"):
        kernels.channel_affine_act(y, v, v, None, torch.empty(2, 4, 25, dtype=torch.float64),
                                   True)
    with pytest.raises(RuntimeError, match="scale must be Float for Float input"):
        kernels.channel_affine_act(y, v.double(), v, None, y, True)
