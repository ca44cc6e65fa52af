"""Bad and edge calls of max_pool2d / MaxPool2d, each against torch.nn.functional.max_pool2d
(harness.py says what passing means)."""

import numpy
import torch
import torch.nn.functional as F

import fastcnn
from harness import Case, seeded


def tensor(*shape, dtype=torch.float32, fill=None):
    def make():
        t = torch.randn(*shape, dtype=torch.float64)
        if fill is not None:
            t = t.clone().fill_(fill) if not callable(fill) else fill(t)
        return t.to(dtype)
    return make


def case(name, make_input, *args, names=(), module=False, **kwargs):
    make = seeded(make_input)
    if module:
        return Case(name, lambda track: fastcnn.nn.MaxPool2d(*args, **kwargs)(track(make())),
                    lambda track: torch.nn.MaxPool2d(*args, **kwargs)(track(make())),
                    names=names)
    return Case(name, lambda track: fastcnn.functional.max_pool2d(track(make()), *args, **kwargs),
                lambda track: F.max_pool2d(track(make()), *args, **kwargs), names=names)


x = tensor(2, 3, 8, 8)
CASES = [
    # the input: types, dtypes, dimensions, empty sizes, layouts, special values
    case("input None", lambda: None, 2, names=("input",)),
    case("input a list", lambda: [[1.0, 2.0]], 2, names=("input",)),
    case("bool", lambda: x() > 0, 2),
    case("uint8", lambda: (x() * 50).to(torch.uint8), 2),
    case("int8", lambda: (x() * 50).to(torch.int8), 2),
    case("int32", lambda: (x() * 50).to(torch.int32), 2),
    case("int64", lambda: (x() * 50).to(torch.int64), 2, return_indices=True),
    case("complex", lambda: x().to(torch.complex64), 2),
    case("float64", tensor(2, 3, 8, 8, dtype=torch.float64), 3, 2, 1),
    case("float16", tensor(2, 3, 8, 8, dtype=torch.float16), 3, 2, 1),
    case("bfloat16", tensor(2, 3, 8, 8, dtype=torch.bfloat16), 3, 2, 1),
    case("1-d", tensor(8), 2),
    case("2-d", tensor(8, 8), 2),
    case("5-d", tensor(1, 2, 3, 8, 8), 2),
    case("unbatched", tensor(3, 8, 8), 3, 2),
    case("N=0", tensor(0, 3, 8, 8), 2),
    case("C=0", tensor(2, 0, 8, 8), 2),
    case("H=0", tensor(2, 3, 0, 8), 2),
    case("W=0", tensor(2, 3, 8, 0), 2),
    case("unbatched C=0", tensor(0, 8, 8), 2),
    case("mkldnn", lambda: x().to_mkldnn(), 2),
    case("sparse", lambda: x().to_sparse(), 2),
    case("nested", lambda: torch.nested.nested_tensor([x()[0], x()[1]]), 2),
    case("channels_last", lambda: x().to(memory_format=torch.channels_last), 3, 2, 1),
    case("transposed", lambda: x().transpose(2, 3), 3, 2),
    case("sliced", lambda: x()[:, ::2, 1:, ::3], 2, 1),
    case("expanded (stride 0)", lambda: x()[:1, :, :1].expand(2, 3, 8, 8), 2),
    case("all -inf", tensor(1, 2, 4, 4, fill=float("-inf")), 2, return_indices=True),
    case("NaN", tensor(1, 2, 4, 4, fill=lambda t: t.index_fill(3, torch.tensor([1]),
                                                            float("nan"))), 2, 1,
         return_indices=True),
    case("+inf and NaN", tensor(1, 1, 4, 4, fill=lambda t: t.index_fill(2, torch.tensor([0]),
                                                                     float("inf"))), 3, 1, 1),
    case("1x1 input", tensor(2, 3, 1, 1), 1),
    # kernel_size
    case("kernel 0", x, 0, names=("kernel_size",)),
    case("kernel -1", x, -1, names=("kernel_size",)),
    case("kernel (2, 0)", x, (2, 0), names=("kernel_size",)),
    case("kernel ()", x, (), names=("kernel_size",)),
    case("kernel (2, 2, 2)", x, (2, 2, 2), names=("kernel_size",)),
    case("kernel 2.0", x, 2.0, names=("kernel_size",)),
    case("kernel '2'", x, "2", names=("kernel_size",)),
    case("kernel True", x, True, names=("kernel_size",)),
    case("kernel None", x, None, names=("kernel_size",)),
    case("kernel numpy int", x, numpy.int64(2)),
    case("kernel larger than input", x, 9, names=("kernel_size",)),
    case("kernel (1, 8)", x, (1, 8)),
    case("kernel 2^31", x, 2 ** 31, names=("kernel_size",)),
    case("kernel 2^31-1, padding 2^30-1", x, 2 ** 31 - 1, 1, 2 ** 30 - 1),
    case("kernel 2^30, padding 2^29", x, 2 ** 30, padding=2 ** 29, return_indices=True),
    # stride
    case("stride 0", x, 2, 0, names=("stride",)),
    case("stride -1", x, 2, -1, names=("stride",)),
    case("stride None", x, 3, None),
    case("stride ()", x, 3, ()),
    case("stride []", x, 3, []),
    case("stride (1, 3)", x, 3, (1, 3)),
    case("stride 10^9", x, 2, 10 ** 9, return_indices=True),
    case("stride 2^31-1", x, 3, 2 ** 31 - 1, 1),
    case("stride 2^31", x, 2, 2 ** 31, names=("stride",)),
    # padding
    case("padding -1", x, 3, 1, -1, names=("padding",)),
    case("padding more than half the kernel", x, 2, 1, 2, names=("padding",)),
    case("padding (1, 0)", x, 3, 1, (1, 0)),
    case("padding (0, 1), kernel (1, 3)", x, (1, 3), 1, (0, 1)),
    case("padding 2^31", x, 3, 1, 2 ** 31, names=("padding",)),
    # dilation
    case("dilation 0", x, 2, 1, 0, 0, names=("dilation",)),
    case("dilation 2", x, 3, 1, 1, 2, return_indices=True),
    case("dilation (2, 3)", x, 2, 1, 0, (2, 3)),
    case("dilation 2^31-1, kernel 1", x, 1, 1, 0, 2 ** 31 - 1),
    case("dilation 2^31", x, 1, 1, 0, 2 ** 31, names=("dilation",)),
    case("dilation larger than the input", x, 2, 1, 0, 9, names=("kernel_size",)),
    # ceil_mode and return_indices
    case("ceil_mode", tensor(1, 2, 7, 7), 2, 2, 0, 1, True, return_indices=True),
    case("ceil_mode, last window in the padding", tensor(1, 2, 5, 5), 2, 2, 1, 1, True),
    case("ceil_mode 1", x, 2, ceil_mode=1, names=("ceil_mode",)),
    case("ceil_mode 'yes'", x, 2, ceil_mode="yes", names=("ceil_mode",)),
    case("return_indices, channels_last",
         lambda: x().to(memory_format=torch.channels_last), 3, 2, 1, return_indices=True),
    case("return_indices, unbatched", tensor(3, 7, 7), 3, 2, 1, return_indices=True),
    case("return_indices 1", x, 2, return_indices=1),
    # the module
    case("module", x, 3, 2, 1, module=True),
    case("module, return_indices and ceil_mode", tensor(1, 2, 7, 7), 3, 2, 1, 1, True, True,
         module=True),
    case("module, kernel 0", x, 0, module=True, names=("kernel_size",)),
]
# The dilated window that holds no element of the input: PyTorch returns -inf with an
# index outside the input (its backward then writes out of bounds); fastcnn refuses it.
_dilated = seeded(x)
CASES.append(Case("dilation leaves a window outside the input",
                  lambda track: fastcnn.functional.max_pool2d(track(_dilated()), 2, 1, 1, 9),
                  lambda track: F.max_pool2d(track(_dilated()), 2, 1, 1, 9),
                  names=("dilation",), refuse=True,
                  why="PyTorch's index of that window lies outside the input"))
