"""Bad and edge calls of conv_bn_relu / ConvBNReLU, each against eager
relu(bn(conv(x)) + residual) on copies of the same modules (harness.py says what passing
means); the running statistics after the call are compared too."""

import contextlib

import torch

import fastcnn
from harness import Case, seeded

nn = torch.nn


class _BatchNormReLU(nn.BatchNorm2d):
    """A BatchNorm with its own forward (as timm's BatchNormAct2d)."""

    def forward(self, input):
        return torch.relu(super().forward(input))


class _StandardisedConv2d(nn.Conv2d):
    """A convolution with its own forward (weight standardisation, as timm's StdConv2d)."""

    def forward(self, input):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(input, w, self.bias)


def _eager(x, conv, bn, relu=True, residual=None):
    z = bn(conv(x))
    if residual is not None:
        z = z + residual
    return torch.relu(z) if relu else z


def _statistics(bn):
    return [t.clone() for t in (getattr(bn, "running_mean", None),
                                getattr(bn, "running_var", None)) if t is not None]


def case(name, x=None, conv=None, bn=None, relu=True, residual=None, train=True,
         names=(), context=contextlib.nullcontext, refuse=False, why="", precision=None):
    """x, conv, bn and residual are functions building them (the defaults below)."""
    x = x or (lambda: torch.randn(2, 3, 8, 8))
    conv = conv or (lambda: nn.Conv2d(3, 4, 3, bias=False))
    bn = bn or (lambda: nn.BatchNorm2d(4))
    make = seeded(lambda: (x(), conv(), bn(), residual() if residual else None))

    def call(fn):
        def run(track):
            inputs, c, b, r = make()
            if isinstance(b, nn.Module):
                b.train(train)
            for p in (getattr(c, "weight", None), getattr(b, "weight", None)):
                if isinstance(p, nn.Parameter):
                    track(p)
            with context():
                z = fn(track(inputs), c, b, relu, track(r))
            return (z, *_statistics(b))
        return run
    return Case(name, call(fastcnn.functional.conv_bn_relu), call(_eager), names=names,
                refuse=refuse, why=why, precision=precision)


def bn_with(**attributes):
    def make():
        bn = nn.BatchNorm2d(4)
        for key, value in attributes.items():
            setattr(bn, key, value)
        return bn
    return make


def _module_case(name, train, **kwargs):
    make = seeded(lambda: (torch.randn(2, 3, 8, 8), fastcnn.nn.ConvBNReLU(3, 4, 3, **kwargs)))

    def ours(track):
        x, m = make()
        return m.train(train)(track(x))

    def theirs(track):
        x, m = make()
        m.train(train)
        return _eager(track(x), m.conv, m.bn, m.relu)
    return Case(name, ours, theirs)


f64, f16, bf16 = torch.float64, torch.float16, torch.bfloat16
x_of = lambda *shape, dtype=torch.float32: (lambda: torch.randn(*shape).to(dtype))  # noqa
CASES = [
    # the BatchNorm module
    case("BatchNorm1d", bn=lambda: nn.BatchNorm1d(4)),
    case("BatchNorm3d", bn=lambda: nn.BatchNorm3d(4)),
    case("LazyBatchNorm2d, training", bn=lambda: nn.LazyBatchNorm2d()),
    case("LazyBatchNorm2d, eval", bn=lambda: nn.LazyBatchNorm2d(), train=False),
    case("SyncBatchNorm, eval", bn=lambda: nn.SyncBatchNorm(4), train=False),
    case("a BatchNorm2d subclass with its own forward", bn=lambda: _BatchNormReLU(4)),
    case("InstanceNorm2d", bn=lambda: nn.InstanceNorm2d(4), names=("bn",), refuse=True,
         why="conv_bn_relu takes a BatchNorm; other normalisations are not BatchNorm"),
    case("bn None", bn=lambda: None, names=("bn",)),
    case("bn.num_features wrong", bn=lambda: nn.BatchNorm2d(5), names=("num_features",)),
    case("bn float64, x float32", bn=lambda: nn.BatchNorm2d(4).double(), names=("bn.",)),
    case("bn float16, x float32", bn=lambda: nn.BatchNorm2d(4).half(), names=("bn.",)),
    case("bn float32, x float16", x=x_of(2, 3, 8, 8, dtype=f16),
         conv=lambda: nn.Conv2d(3, 4, 3).half()),
    case("bn float32, x bfloat16, eval", x=x_of(2, 3, 8, 8, dtype=bf16),
         conv=lambda: nn.Conv2d(3, 4, 3).bfloat16(), train=False),
    case("eps 0, training", bn=lambda: nn.BatchNorm2d(4, eps=0), names=("eps",)),
    case("eps 0, eval", bn=lambda: nn.BatchNorm2d(4, eps=0), train=False),
    case("eps -1, eval", bn=lambda: nn.BatchNorm2d(4, eps=-1), train=False, names=("eps",)),
    case("momentum None", bn=lambda: nn.BatchNorm2d(4, momentum=None)),
    case("momentum 0", bn=lambda: nn.BatchNorm2d(4, momentum=0.0)),
    case("momentum 1", bn=lambda: nn.BatchNorm2d(4, momentum=1.0)),
    case("affine False", bn=lambda: nn.BatchNorm2d(4, affine=False)),
    case("affine False, eval", bn=lambda: nn.BatchNorm2d(4, affine=False), train=False),
    case("no running statistics, training",
         bn=lambda: nn.BatchNorm2d(4, track_running_stats=False)),
    case("no running statistics, eval",
         bn=lambda: nn.BatchNorm2d(4, track_running_stats=False), train=False),
    case("running_mean None, eval", bn=bn_with(running_mean=None), train=False,
         names=("running_mean",)),
    case("running_var None, eval", bn=bn_with(running_var=None), train=False,
         names=("running_var",)),
    case("running statistics None, eval", bn=bn_with(running_mean=None, running_var=None),
         train=False),
    case("running statistics None, training", bn=bn_with(running_mean=None, running_var=None)),
    case("num_batches_tracked None, momentum None",
         bn=bn_with(num_batches_tracked=None, momentum=0.3)),
    # the convolution module
    case("conv None", conv=lambda: None, names=("conv",)),
    case("Conv1d", conv=lambda: nn.Conv1d(3, 4, 3), names=("conv",)),
    case("Conv3d", conv=lambda: nn.Conv3d(3, 4, 3), names=("conv",)),
    case("LazyConv2d", conv=lambda: nn.LazyConv2d(4, 3)),
    case("a Conv2d subclass with its own forward", conv=lambda: _StandardisedConv2d(3, 4, 3)),
    case("padding 'same'", conv=lambda: nn.Conv2d(3, 4, 3, padding="same")),
    case("padding 'valid'", conv=lambda: nn.Conv2d(3, 4, 3, padding="valid")),
    case("padding_mode reflect", conv=lambda: nn.Conv2d(3, 4, 3, padding=1,
                                                          padding_mode="reflect")),
    case("padding_mode circular", conv=lambda: nn.Conv2d(3, 4, 3, padding=2,
                                                           padding_mode="circular")),
    case("conv bias, training", conv=lambda: nn.Conv2d(3, 4, 3)),
    case("conv bias, eval", conv=lambda: nn.Conv2d(3, 4, 3), train=False),
    case("groups 3", x=x_of(2, 6, 8, 8), conv=lambda: nn.Conv2d(6, 4, 3, groups=2)),
    case("depthwise", x=x_of(2, 4, 8, 8), conv=lambda: nn.Conv2d(4, 4, 3, groups=4)),
    case("dilation 2, stride 2", conv=lambda: nn.Conv2d(3, 4, 3, stride=2, dilation=2)),
    case("stride 0", conv=lambda: nn.Conv2d(3, 4, 3, stride=0)),
    case("conv float64, x float32", conv=lambda: nn.Conv2d(3, 4, 3).double()),
    case("kernel larger than the input", x=x_of(2, 3, 2, 8)),
    # the input
    case("x None", x=lambda: None, names=("x",)),
    case("x 3-d", x=x_of(3, 8, 8)),
    case("x 5-d", x=x_of(1, 2, 3, 8, 8)),
    case("x with the wrong channels", x=x_of(2, 5, 8, 8)),
    case("x int64", x=lambda: torch.randint(-3, 3, (2, 3, 8, 8))),
    case("x mkldnn", x=lambda: torch.randn(2, 3, 8, 8).to_mkldnn()),
    case("x channels_last", x=lambda: torch.randn(2, 3, 8, 8).to(
        memory_format=torch.channels_last)),
    case("x sliced", x=lambda: torch.randn(2, 6, 8, 9)[:, ::2, :, 1:]),
    case("x transposed", x=lambda: torch.randn(2, 3, 8, 8).transpose(2, 3)),
    case("x expanded (stride 0)", x=lambda: torch.randn(1, 3, 1, 8).expand(2, 3, 8, 8)),
    case("x with NaN", x=lambda: torch.randn(2, 3, 8, 8).index_fill(
        2, torch.tensor([3]), float("nan"))),
    case("x with inf, eval", x=lambda: torch.randn(2, 3, 8, 8).index_fill(
        2, torch.tensor([3]), float("inf")), train=False),
    case("one value per channel, training", x=x_of(1, 3, 3, 3)),
    case("one value per channel, eval", x=x_of(1, 3, 3, 3), train=False),
    case("N=0, training", x=x_of(0, 3, 8, 8)),
    case("N=0, eval", x=x_of(0, 3, 8, 8), train=False),
    case("C=0 input channels", x=x_of(2, 0, 8, 8), conv=lambda: nn.Conv2d(0, 4, 3)),
    case("float64", x=x_of(2, 3, 8, 8, dtype=f64), conv=lambda: nn.Conv2d(3, 4, 3).double(),
         bn=lambda: nn.BatchNorm2d(4).double()),
    case("float16, eval", x=x_of(2, 3, 8, 8, dtype=f16), conv=lambda: nn.Conv2d(3, 4, 3).half(),
         bn=lambda: nn.BatchNorm2d(4).half(), train=False),
    case("bfloat16", x=x_of(2, 3, 8, 8, dtype=bf16),
         conv=lambda: nn.Conv2d(3, 4, 3).bfloat16(), bn=lambda: nn.BatchNorm2d(4).bfloat16()),
    # the residual
    case("residual", residual=lambda: torch.randn(2, 4, 6, 6)),
    case("residual, eval, no ReLU", residual=lambda: torch.randn(2, 4, 6, 6), relu=False,
         train=False),
    case("residual broadcast (1, C, 1, 1)", residual=lambda: torch.randn(1, 4, 1, 1)),
    case("residual broadcast to a larger shape", residual=lambda: torch.randn(3, 1, 4, 1, 1)),
    case("residual of another shape", residual=lambda: torch.randn(2, 4, 5, 6)),
    case("residual int64", residual=lambda: torch.randint(-3, 3, (2, 4, 6, 6))),
    case("residual bool", residual=lambda: torch.randn(2, 4, 6, 6) > 0),
    case("residual float64", residual=lambda: torch.randn(2, 4, 6, 6, dtype=f64),
         precision=torch.float32),
    case("residual float16", residual=lambda: torch.randn(2, 4, 6, 6).half(), train=False),
    case("residual a number", residual=lambda: 0.5),
    case("residual a 0-d tensor", residual=lambda: torch.tensor(0.5)),
    case("residual channels_last, x NCHW", residual=lambda: torch.randn(2, 4, 6, 6).to(
        memory_format=torch.channels_last)),
    case("residual a string", residual=lambda: "r"),
    # relu, autocast, no_grad, the module
    case("relu 1", relu=1, names=("relu",), refuse=True, why="relu is a bool flag"),
    case("autocast bfloat16, training",
         context=lambda: torch.autocast("cpu", dtype=bf16), precision=bf16),
    case("autocast bfloat16, float32 residual, eval", residual=lambda: torch.randn(2, 4, 6, 6),
         train=False, context=lambda: torch.autocast("cpu", dtype=bf16), precision=bf16),
    case("no_grad, eval", train=False, context=torch.no_grad),
    case("no_grad, training", context=torch.no_grad),
    _module_case("ConvBNReLU, training", True, stride=2, padding=1),
    _module_case("ConvBNReLU, eval", False, padding=1, relu=False),
]
