"""Bad and edge calls of local_response_norm / LocalResponseNorm, each against
torch.nn.functional.local_response_norm (harness.py says what passing means)."""

import numpy
import torch
import torch.nn.functional as F

import fastcnn
from harness import Case, seeded


def tensor(*shape, dtype=torch.float32, scale=1.0):
    return lambda: (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)


def case(name, make_input, *args, names=(), module=False, **kwargs):
    make = seeded(make_input)
    if module:
        return Case(name, lambda track: fastcnn.nn.LocalResponseNorm(*args, **kwargs)(track(make())),
                    lambda track: torch.nn.LocalResponseNorm(*args, **kwargs)(track(make())),
                    names=names)
    return Case(name, lambda track: fastcnn.functional.local_response_norm(track(make()), *args,
                                                                          **kwargs),
                lambda track: F.local_response_norm(track(make()), *args, **kwargs), names=names)


def wider_than_the_channels(name, make_input, size):
    """A window wider than 2C - 1 covers every channel at every position: the same as a
    window of 2C + 1 with alpha scaled to keep alpha / size (PyTorch allocates a buffer
    sized by the window and runs out of memory instead)."""
    make = seeded(make_input)

    def expected():
        x = make()
        c = x.shape[1]
        return F.local_response_norm(x, 2 * c + 1, 1e-4 * (2 * c + 1) / size, 0.75, 1.0)
    return Case(name, lambda track: fastcnn.functional.local_response_norm(make(), size),
                lambda track: F.local_response_norm(make(), size), expected=expected,
                why="PyTorch's buffer is sized by the window")


def low_precision(name, make_input, *args):
    """PyTorch has no float16/bfloat16 LRN on CPU; fastcnn's is PyTorch's in float32,
    rounded."""
    make = seeded(make_input)

    def expected():
        x = make()
        return F.local_response_norm(x.float(), *args).to(x.dtype)
    return Case(name, lambda track: fastcnn.functional.local_response_norm(make(), *args),
                lambda track: F.local_response_norm(make(), *args), expected=expected,
                why="PyTorch has no float16/bfloat16 CPU kernel")


x = tensor(2, 6, 5, 4)
CASES = [
    # the input
    case("input None", lambda: None, 3, names=("input",)),
    case("input a list", lambda: [[[1.0]]], 3, names=("input",)),
    case("bool", lambda: x() > 0, 3),
    case("int64", lambda: (x() * 5).to(torch.int64), 3),
    case("uint8", lambda: (x() * 50).to(torch.uint8), 3),
    case("complex", lambda: x().to(torch.complex64), 3),
    case("1-d", tensor(6), 3),
    case("2-d", tensor(6, 4), 3),
    case("3-d", tensor(2, 6, 5), 3),
    case("5-d", tensor(2, 6, 3, 2, 2), 3),
    case("6-d", tensor(1, 6, 2, 2, 2, 2), 3),
    case("N=0", tensor(0, 6, 5, 4), 3),
    case("C=0", tensor(2, 0, 5, 4), 3),
    case("H=0", tensor(2, 6, 0, 4), 3),
    case("C=1", tensor(2, 1, 5, 4), 3),
    case("mkldnn", lambda: x().to_mkldnn(), 3),
    case("sparse", lambda: x().to_sparse(), 3),
    case("channels_last", lambda: x().to(memory_format=torch.channels_last), 5),
    case("transposed", lambda: x().transpose(2, 3), 3),
    case("sliced", lambda: x()[:, 1:, ::2], 3),
    case("expanded (stride 0)", lambda: x()[:, :1].expand(2, 6, 5, 4), 3),
    case("NaN", lambda: x().index_fill(1, torch.tensor([2]), float("nan")), 3),
    case("+inf", lambda: x().index_fill(1, torch.tensor([2]), float("inf")), 3),
    case("float32 values of 1e20 (squares overflow)", tensor(2, 6, 5, 4, scale=1e20), 3),
    case("float64", tensor(2, 6, 5, 4, dtype=torch.float64), 3),
    low_precision("float16", tensor(2, 6, 5, 4, dtype=torch.float16), 3),
    low_precision("bfloat16", tensor(2, 6, 5, 4, dtype=torch.bfloat16), 3),
    low_precision("float16 whose squares overflow float16",
                  tensor(2, 6, 5, 4, dtype=torch.float16, scale=500), 3),
    # size
    case("size 0", x, 0, names=("size",)),
    case("size -1", x, -1, names=("size",)),
    case("size 1", x, 1),
    case("size 2 (even)", x, 2),
    case("size C", x, 6),
    case("size 2C+1", x, 13),
    case("size 2^20", x, 2 ** 20),
    wider_than_the_channels("size 2^31", x, 2 ** 31),
    wider_than_the_channels("size 2^62", x, 2 ** 62),
    case("size 3.0", x, 3.0, names=("size",)),
    case("size '3'", x, "3", names=("size",)),
    case("size True", x, True, names=("size",)),
    case("size None", x, None, names=("size",)),
    case("size numpy int", x, numpy.int64(3)),
    # alpha, beta, k
    case("alpha 0", x, 3, 0.0),
    case("alpha -0.01", x, 3, -1e-2),
    case("alpha NaN", x, 3, float("nan")),
    case("alpha inf", x, 3, float("inf")),
    case("alpha an int", x, 3, 1),
    case("alpha a 0-d tensor", x, 3, torch.tensor(1e-2, dtype=torch.float64)),
    case("alpha a string", x, 3, "a", names=("alpha",)),
    case("alpha None", x, 3, None, names=("alpha",)),
    case("beta 0", x, 3, 1e-2, 0.0),
    case("beta -1", x, 3, 1e-2, -1.0),
    case("beta 100", x, 3, 1e-2, 100.0),
    case("beta NaN", x, 3, 1e-2, float("nan")),
    case("beta a string", x, 3, 1e-2, "b", names=("beta",)),
    case("k 0", x, 3, 1e-2, 0.75, 0.0),
    case("k -1", x, 3, 1e-2, 0.75, -1.0),
    case("k inf", x, 3, 1e-2, 0.75, float("inf")),
    case("k NaN", x, 3, 1e-2, 0.75, float("nan")),
    case("k an int", x, 3, 1e-2, 0.75, 2),
    case("k a string", x, 3, 1e-2, 0.75, "k", names=("k",)),
    # the module
    case("module", x, 5, 1e-3, 0.5, 2.0, module=True),
    case("module, size 0", x, 0, module=True, names=("size",)),
    case("module, 3-d", tensor(2, 6, 5), 3, module=True),
]
