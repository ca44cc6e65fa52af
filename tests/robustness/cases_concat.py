"""Bad and edge calls of concat, each against torch.cat (harness.py says what passing
means)."""

import numpy
import torch

import fastcnn
from harness import Case, seeded


def tensor(*shape, dtype=torch.float32, scale=1.0):
    def make():
        x = torch.randn(*shape, dtype=torch.float64) * scale
        if dtype.is_floating_point or dtype.is_complex:
            return x.to(dtype)
        return (x * 3).round().to(dtype)
    return make


def _tracked(tensors, track):
    if isinstance(tensors, (list, tuple)):
        return type(tensors)(track(t) if isinstance(t, torch.Tensor) else t for t in tensors)
    return tensors


def case(name, make_tensors, *dim, names=()):
    """concat(tensors, *dim) against torch.cat(tensors, *dim), whose dim has no default:
    1, concat's, where the case leaves it out. make_tensors builds the `tensors` argument
    (a list of fresh tensors, or anything else)."""
    make = seeded(make_tensors)
    return Case(name, lambda track: fastcnn.functional.concat(_tracked(make(), track), *dim),
                lambda track: torch.cat(_tracked(make(), track), *(dim or (1,))), names=names)


def tensors(*makers, transform=None):
    """A builder of the list [m() for m in makers], each passed through transform."""
    return lambda: [transform(m()) if transform else m() for m in makers]


x, y = tensor(2, 3, 4, 5), tensor(2, 2, 4, 5)
empty = tensor(0)
channels_last = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731

CASES = [
    # the sequence of tensors
    case("tensors a tensor", x, 0, names=("tensors",)),
    case("tensors an int", lambda: 5, names=("tensors",)),
    case("tensors None", lambda: None, names=("tensors",)),
    case("tensors a generator", lambda: (t for t in [x(), x()]), 0, names=("tensors",)),
    case("tensors a dict", lambda: {0: x()}, 0, names=("tensors",)),
    case("empty list", lambda: [], names=("tensors", "non-empty")),
    case("empty tuple", lambda: (), 0, names=("tensors", "non-empty")),
    case("element None", lambda: [x(), None], names=("tensors[1]",)),
    case("element an int", lambda: [x(), 1], names=("tensors[1]",)),
    case("element a list", lambda: [[1.0, 2.0], x()], 0, names=("tensors[0]",)),
    case("element a numpy array", lambda: [x(), numpy.ones((2, 3, 4, 5))], names=("tensors[1]",)),
    case("a zero-dim element", lambda: [x(), torch.tensor(1.0)], names=("tensors[1]", "zero")),
    case("only zero-dim elements", lambda: [torch.tensor(1.0)] * 2, 0, names=("tensors[0]",)),
    case("a tuple", lambda: (x(), y()), 1),
    case("the same tensor twice", lambda: [x()] * 2, 0),
    case("one tensor", tensors(x), 2),
    case("20 tensors", lambda: [tensor(2, 1 + i % 3, 3)() for i in range(20)], 1),
    # dim
    case("dim left out (1)", tensors(x, y)),
    case("dim 0", tensors(x, x), 0),
    case("dim 3", tensors(x, tensor(2, 3, 4, 2)), 3),
    case("dim -1", tensors(x, tensor(2, 3, 4, 2)), -1),
    case("dim -4", tensors(x, x), -4),
    case("dim 4", tensors(x, x), 4, names=("dim",)),
    case("dim -5", tensors(x, x), -5, names=("dim",)),
    case("dim 2**40", tensors(x, x), 2**40, names=("dim",)),
    case("dim 2**70", tensors(x, x), 2**70, names=("dim",)),
    case("dim 1.0", tensors(x, y), 1.0, names=("dim",)),
    case("dim True", tensors(x, y), True, names=("dim",)),
    case("dim None", tensors(x, y), None, names=("dim",)),
    case("dim '1'", tensors(x, y), "1", names=("dim",)),
    case("dim a numpy int", tensors(x, y), numpy.int64(1)),
    case("dim a 0-d int tensor", tensors(x, y), torch.tensor(1)),
    case("dim a 0-d float tensor", tensors(x, y), torch.tensor(1.0), names=("dim",)),
    # shapes
    case("ranks differ", tensors(x, tensor(3, 4, 5)), 0, names=("tensors[1]", "dimensions")),
    case("sizes differ outside dim", tensors(x, tensor(2, 3, 4, 6)), 1,
         names=("tensors[1]", "shape", "dim 1")),
    case("batch differs, dim 1", tensors(x, tensor(3, 2, 4, 5)), names=("tensors[1]",)),
    case("sizes differ along dim only", tensors(x, tensor(5, 3, 4, 5)), 0),
    case("zero along dim", tensors(x, tensor(2, 0, 4, 5), y), 1),
    case("all zero along dim", tensors(tensor(2, 0, 4, 5), tensor(2, 0, 4, 5)), 1),
    case("zero batch", tensors(tensor(0, 3, 4, 5), tensor(0, 2, 4, 5)), 1),
    case("(0,) skipped", tensors(empty, x, empty, y), 1),
    case("(0,) skipped, negative dim", tensors(empty, x, y), -3),
    case("(0,) first, dim out of range for the rest", tensors(empty, x), 4, names=("dim",)),
    case("only (0,) tensors, any dim", tensors(empty, empty), 7),
    case("(0,) with 1-d tensors", tensors(empty, tensor(5), tensor(3)), 0),
    case("(0, 0) is not skipped", tensors(tensor(0, 0), x), 1, names=("tensors[1]",)),
    case("(0,) float64 promotes float32", tensors(x, tensor(0, dtype=torch.float64)), 1),
    case("1-d", tensors(tensor(3), tensor(4)), 0),
    case("2-d along dim 0", tensors(tensor(3, 5), tensor(1, 5)), 0),
    case("5-d", tensors(tensor(2, 3, 2, 3, 2), tensor(2, 3, 2, 1, 2)), 3),
    case("6-d permuted", tensors(tensor(2, 1, 3, 2, 2, 3), tensor(2, 1, 3, 2, 2, 3),
                                 transform=lambda t: t.permute(5, 4, 3, 2, 1, 0)), 2),
    # dtypes
    case("float32 and float64", tensors(x, tensor(2, 2, 4, 5, dtype=torch.float64))),
    case("int32 and float16", tensors(tensor(2, 3, 4, 5, dtype=torch.int32),
                                      tensor(2, 2, 4, 5, dtype=torch.float16))),
    case("bool", tensors(tensor(2, 3, dtype=torch.bool), tensor(2, 3, dtype=torch.bool)), 0),
    case("bool and uint8", tensors(tensor(2, 3, dtype=torch.bool), tensor(2, 3, dtype=torch.uint8)),
         0),
    case("uint8 and int8", tensors(tensor(2, 3, dtype=torch.uint8), tensor(2, 3, dtype=torch.int8)),
         0),
    case("int64 of 1e15", tensors(tensor(2, 3, dtype=torch.int64, scale=1e15),
                                  tensor(2, 3, dtype=torch.int64)), 1),
    case("float32 and complex64", tensors(x, tensor(2, 2, 4, 5, dtype=torch.complex64))),
    case("complex128 conjugated", tensors(tensor(2, 3, dtype=torch.complex128),
                                          tensor(2, 3, dtype=torch.complex128),
                                          transform=torch.conj), 0),
    case("float16", tensors(tensor(2, 3, 4, dtype=torch.float16), tensor(2, 3, 4,
                                                                        dtype=torch.float16)), 2),
    case("bfloat16 of 1e30", tensors(tensor(2, 3, dtype=torch.bfloat16, scale=1e30),
                                     tensor(2, 3, dtype=torch.bfloat16)), 1),
    case("NaN and inf", lambda: [x().index_fill(1, torch.tensor([1]), float("nan")),
                                 y().index_fill(3, torch.tensor([0]), float("inf"))]),
    # layouts
    case("channels_last", tensors(x, y, transform=channels_last)),
    case("channels_last and NCHW", lambda: [channels_last(x()), y()]),
    case("channels_last and (0,)", lambda: [channels_last(x()), empty()]),
    case("channels_last sliced", lambda: [channels_last(x())[:, 1:], channels_last(y())[..., ::1]]),
    case("channels_last W=1", tensors(tensor(2, 3, 4, 1), tensor(2, 2, 4, 1),
                                      transform=channels_last)),
    case("transposed", tensors(tensor(2, 3, 5, 4), tensor(2, 2, 5, 4),
                               transform=lambda t: t.transpose(2, 3))),
    case("expanded (stride 0)", lambda: [x(), y()[:1].expand(2, 2, 4, 5)]),
    case("batch innermost", tensors(x, y, transform=lambda t: t.permute(1, 2, 3, 0)
                                    .contiguous().permute(3, 0, 1, 2))),
    case("channels_last_3d", tensors(tensor(2, 3, 2, 3, 2), tensor(2, 1, 2, 3, 2),
                                     transform=lambda t: t.contiguous(
                                         memory_format=torch.channels_last_3d))),
    # what the kernels do not take: torch.cat's own result or error
    case("sparse", tensors(x, y, transform=lambda t: t.to_sparse())),
    case("sparse and dense", lambda: [x(), y().to_sparse()]),
    case("mkldnn", tensors(x, y, transform=lambda t: t.to_mkldnn())),
    case("nested", lambda: [torch.nested.nested_tensor([tensor(2, 3)(), tensor(4, 3)()])] * 2,
         0),
    case("quantized", tensors(x, y, transform=lambda t: torch.quantize_per_tensor(
        t, 0.1, 0, torch.quint8))),
    case("CPU and meta", lambda: [x(), y().to("meta")], names=("tensors[1]", "device")),
    case("(0,) on meta", lambda: [x(), torch.empty(0, device="meta")],
         names=("tensors[1]", "device")),
]
