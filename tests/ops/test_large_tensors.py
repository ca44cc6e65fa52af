"""The C++ kernels on tensors of more than 2^31 elements (64-bit offsets everywhere),
against torch in float32 on pieces of rows where the op is local: the first rows and the
last ones, which lie past element 2^31. Slow, and ~12 GiB: `python -m pytest -m slow`."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_reference

import fastcnn
from fastcnn.functional import global_avg_pool2d, local_response_norm, max_pool2d

pytestmark = pytest.mark.slow

# Just over 2^31 elements: 4 GiB in float16.
_SHAPE = (1, 2, 32768, 32769)

# Rows of random values repeated down each plane (filling 2^31 values one by one takes
# longer than the ops); a prime count, so that no power-of-two offset error lands on the
# same values.
_PERIOD = 1021

# Rows of each piece compared with torch.
_ROWS = 256


def _random_rows(shape, dtype=torch.float16):
    x = torch.empty(shape, dtype=dtype)
    block = torch.randn(*shape[:2], _PERIOD, shape[3]).to(dtype)
    for top in range(0, shape[2], _PERIOD):
        rows = min(_PERIOD, shape[2] - top)
        x[:, :, top:top + rows] = block[:, :, :rows]
    return x


def _end_pieces(height):
    """The first and the last _ROWS rows (an even count, so pooling windows stay whole)."""
    return [slice(0, _ROWS), slice(height - _ROWS, height)]


@pytest.fixture(autouse=True)
def cpp_backend():
    with fastcnn.use_backend("cpp"):
        yield


def test_max_pool2d_forward_and_backward():
    x = _random_rows(_SHAPE).requires_grad_()
    assert x.numel() > 2**31
    y = max_pool2d(x, 2, 2)  # non-overlapping windows: pieces of even rows are independent
    grad = _random_rows(y.shape)
    y.backward(grad)
    for rows in _end_pieces(_SHAPE[2]):
        out_rows = slice(rows.start // 2, rows.stop // 2)
        x_ref = x.detach()[:, :, rows].float().requires_grad_()
        y_ref = F.max_pool2d(x_ref, 2, 2)
        y_ref.backward(grad[:, :, out_rows].float())
        # a maximum is one of the inputs, and its gradient one value of grad: both exact
        assert torch.equal(y[:, :, out_rows].detach().float(), y_ref.detach())
        assert torch.equal(x.grad[:, :, rows].float(), x_ref.grad)


def test_global_avg_pool2d_forward_and_backward():
    x = _random_rows(_SHAPE).requires_grad_()
    assert x.numel() > 2**31
    y = global_avg_pool2d(x)
    sums = sum(x.detach()[:, :, top:top + 4096].sum(dim=(2, 3), keepdim=True,
                                                     dtype=torch.float64)
               for top in range(0, _SHAPE[2], 4096))
    assert_close_to_reference(y, sums / (_SHAPE[2] * _SHAPE[3]), torch.float16)
    grad = torch.randn(y.shape).to(y.dtype)
    y.backward(grad)
    for rows in _end_pieces(_SHAPE[2]):
        expected = (grad.double() / (_SHAPE[2] * _SHAPE[3])).expand(-1, -1, _ROWS, _SHAPE[3])
        assert_close_to_reference(x.grad[:, :, rows], expected, torch.float16)


def test_local_response_norm_forward():
    shape = (1, 8, 16384, 16385)  # more channels than a window
    x = _random_rows(shape, torch.bfloat16)
    assert x.numel() > 2**31
    with torch.no_grad():
        y = local_response_norm(x, 5, alpha=1e-2, beta=0.75, k=2.0)
    for rows in _end_pieces(shape[2]):
        y_ref = F.local_response_norm(x[:, :, rows].float(), 5, alpha=1e-2, beta=0.75, k=2.0)
        assert_close_to_reference(y[:, :, rows], y_ref, torch.bfloat16)
