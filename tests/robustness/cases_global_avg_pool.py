"""Bad and edge calls of global_avg_pool2d / GlobalAvgPool2d, each against
torch.nn.functional.adaptive_avg_pool2d(input, 1) (harness.py says what passing means)."""

import torch
import torch.nn.functional as F

import fastcnn
from harness import Case, seeded


def tensor(*shape, dtype=torch.float32, scale=1.0):
    return lambda: (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)


def case(name, make_input, names=(), flatten=None):
    make = seeded(make_input)
    if flatten is not None:
        def theirs(track):
            out = torch.nn.AdaptiveAvgPool2d(1)(track(make()))
            return out.flatten(-3) if flatten else out
        return Case(name, lambda track: fastcnn.nn.GlobalAvgPool2d(flatten)(track(make())),
                    theirs, names=names)
    return Case(name, lambda track: fastcnn.functional.global_avg_pool2d(track(make())),
                lambda track: F.adaptive_avg_pool2d(track(make()), 1), names=names)


x = tensor(2, 3, 5, 7)
CASES = [
    case("input None", lambda: None, names=("input",)),
    case("input a list", lambda: [[[1.0]]], names=("input",)),
    case("input a number", lambda: 1.0, names=("input",)),
    case("bool", lambda: x() > 0),
    case("uint8", lambda: (x() * 50).to(torch.uint8)),
    case("int64", lambda: (x() * 50).to(torch.int64)),
    case("complex", lambda: x().to(torch.complex64)),
    case("1-d", tensor(7)),
    case("2-d", tensor(5, 7)),
    case("5-d", tensor(2, 2, 3, 5, 7)),
    case("unbatched", tensor(3, 5, 7)),
    case("N=0", tensor(0, 3, 5, 7)),
    case("C=0", tensor(2, 0, 5, 7)),
    case("H=0", tensor(2, 3, 0, 7)),
    case("W=0", tensor(2, 3, 5, 0)),
    case("N=0 and H=0", tensor(0, 3, 0, 7)),
    case("unbatched C=0", tensor(0, 5, 7)),
    case("unbatched H=0", tensor(3, 0, 7)),
    case("mkldnn", lambda: x().to_mkldnn()),
    case("sparse", lambda: x().to_sparse()),
    case("nested", lambda: torch.nested.nested_tensor([x()[0], x()[1]])),
    case("channels_last", lambda: x().to(memory_format=torch.channels_last)),
    case("channels_last, C=1", lambda: tensor(2, 1, 5, 7)().to(memory_format=torch.channels_last)),
    case("channels_last, H=W=1", lambda: tensor(2, 5, 1, 1)().to(memory_format=torch.channels_last)),
    case("channels_last sliced", lambda: x().to(memory_format=torch.channels_last)[:, ::2, 1:]),
    case("transposed", lambda: x().transpose(2, 3)),
    case("batch and channels swapped", lambda: x().transpose(0, 1)),
    case("sliced", lambda: x()[:, 1:, ::2, 1::3]),
    case("expanded (stride 0)", lambda: x()[:1, :, :1].expand(2, 3, 5, 7)),
    case("NaN", lambda: x().index_fill(3, torch.tensor([2]), float("nan"))),
    case("+inf", lambda: x().index_fill(2, torch.tensor([1]), float("inf"))),
    case("+inf and -inf", lambda: x().index_fill(2, torch.tensor([1]), float("inf"))
         .index_fill(3, torch.tensor([0]), float("-inf"))),
    case("float16 near its largest value", tensor(2, 3, 5, 7, dtype=torch.float16, scale=2e4)),
    case("float16 tiny values", tensor(2, 3, 5, 7, dtype=torch.float16, scale=1e-6)),
    case("bfloat16 large values", tensor(2, 3, 5, 7, dtype=torch.bfloat16, scale=1e30)),
    # two values of up to 1.5e38 per plane: no order of summation overflows (larger sums do
    # in some orders, and PyTorch's own order differs between CPUs)
    case("float32 values of 1e38",
         lambda: (torch.rand(2, 3, 1, 2, dtype=torch.float64) * 3e38 - 1.5e38).to(torch.float32)),
    case("1x1", tensor(2, 3, 1, 1)),
    case("1 row", tensor(2, 3, 1, 999)),
    case("1 column", tensor(2, 3, 999, 1)),
    case("2048 channels of 1x1", tensor(2, 2048, 1, 1)),
    case("2048 channels of 7x7, channels_last",
         lambda: tensor(2, 2048, 7, 7)().to(memory_format=torch.channels_last)),
    case("odd sizes", tensor(3, 5, 7, 9)),
    case("large plane", tensor(1, 2, 257, 263)),
    case("float64", tensor(2, 3, 5, 7, dtype=torch.float64)),
    case("float16", tensor(2, 3, 5, 7, dtype=torch.float16)),
    case("bfloat16", tensor(2, 3, 5, 7, dtype=torch.bfloat16)),
    case("float16 channels_last",
         lambda: tensor(2, 3, 5, 7, dtype=torch.float16)().to(memory_format=torch.channels_last)),
    case("bfloat16 sliced", lambda: tensor(2, 6, 5, 7, dtype=torch.bfloat16)()[:, ::2]),
    case("module", x, flatten=False),
    case("module flatten", x, flatten=True),
    case("module flatten, unbatched", tensor(3, 5, 7), flatten=True),
    case("module flatten, N=0", tensor(0, 3, 5, 7), flatten=True),
    case("module, 2-d", tensor(5, 7), flatten=False),
    case("module, channels_last", lambda: x().to(memory_format=torch.channels_last),
         flatten=True),
]
