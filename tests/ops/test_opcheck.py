"""torch.library.opcheck of every fastcnn custom op on every backend: the schema says what
the op mutates and returns, the fake implementation gives the real outputs' shapes,
strides and dtypes, and AOT dispatch (torch.compile's) gives eager's results."""

import inspect

import pytest
import torch
from helpers import randn

from fastcnn import ops


def _vector(c, low=0.5):
    return torch.rand(c, dtype=torch.float64) + low


def _samples(device, channels_last):
    """(op, args without the backend) for every custom op, on small float64 tensors."""
    n, c, h, w = 2, 6, 7, 5
    x = randn(n, c, h, w, dtype=torch.float64, device=device, channels_last=channels_last)
    y3 = x.flatten(2) if not channels_last else x.permute(0, 2, 3, 1).flatten(1, 2) \
        .transpose(1, 2)
    g3, r3 = torch.randn_like(y3), torch.randn_like(y3)
    v = [_vector(c).to(device) for _ in range(6)]
    pool = ([3, 3], [2, 2], [1, 1], [1, 1])
    pooled, positions = ops.max_pool2d_with_positions(x, *pool, False, "reference")
    stem = (5, 1e-2, 0.75, 2.0, [3, 3], [2, 2], [1, 1])  # ReLU -> LRN -> max-pool
    stem_pooled, stem_positions = ops.relu_lrn_max_pool2d_with_positions(x, *stem, False,
                                                                         "reference")
    return [
        (ops.lrn_forward, (x, 5, 1e-2, 0.75, 2.0)),
        (ops.lrn_backward, (x, torch.randn_like(x), 5, 1e-2, 0.75, 2.0)),
        (ops.max_pool2d, (x, *pool, False)),
        (ops.max_pool2d_with_positions, (x, *pool, True)),
        (ops.max_pool2d_backward, (torch.randn_like(pooled), positions, h, w, *pool,
                                   channels_last)),
        (ops.max_pool2d_into, (x, *pool, torch.empty_like(pooled.repeat(1, 2, 1, 1))[:, c:])),
        (ops.max_pool2d_with_positions_into, (x, *pool, torch.empty_like(pooled))),
        (ops.relu_lrn_max_pool2d, (x, *stem, True)),
        (ops.relu_lrn_max_pool2d_with_positions, (x, *stem, False)),
        (ops.relu_lrn_max_pool2d_backward, (x, torch.randn_like(stem_pooled), stem_positions,
                                            *stem)),
        (ops.global_avg_pool2d, (x,)),
        (ops.global_avg_pool2d_backward, (randn(n, c, 1, 1, dtype=torch.float64,
                                                device=device), h, w, channels_last)),
        (ops.channel_affine_act, (y3, v[0], v[1], r3, True)),
        (ops.channel_affine_act_, (y3.clone(), v[0], v[1], None, False)),
        # into a channel slice of a larger tensor (a concatenation's output)
        (ops.channel_affine_act_out, (y3, v[0], v[1], r3, True,
                                      torch.empty_like(x.repeat(1, 2, 1, 1))[:, 1:c + 1])),
        (ops.batch_norm_stats, (y3,)),
        (ops.batch_norm_act_backward_reduce, (g3, y3, r3, v[0], v[1], v[2], v[3], True)),
        (ops.batch_norm_act_backward, (g3, y3, r3, *v, True, True)),
        # inputs of x's layout, a slice, and a (0,) tensor that torch.cat skips
        (ops.concat_forward, ([x, x[:, :2], x.new_empty(0)], 1)),
        (ops.concat_forward, ([x.transpose(2, 3), x.transpose(2, 3)], 0)),
    ]


def test_every_custom_op_is_sampled():
    sampled = {op.custom_op for op, _ in _samples("cpu", False)}
    functions = [getattr(ops, name) for name in ops.__all__]
    registered = {f.custom_op for f in functions
                  if not inspect.ismodule(f) and hasattr(f, "custom_op")}
    assert sampled == registered


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_opcheck(backend_device, channels_last):
    backend, device = backend_device
    for op, args in _samples(device, channels_last):
        torch.library.opcheck(op.custom_op, (*args, backend))
