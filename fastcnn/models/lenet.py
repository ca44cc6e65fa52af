"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, 1998, "Gradient-based learning applied to
document recognition", section II.B), with its trainable subsampling layers, the partial
connection table of C3 (Table I), the scaled tanh and, optionally, the Euclidean RBF output.

fastcnn has no op for these layers, so they are plain torch modules: the model has no
fastcnn layer and `fastcnn.models.torch_layers(model)` is a copy of it.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fastcnn.models._registry import register_model

# Table I of the paper: the S2 maps each C3 map takes its input from. Maps 0-5 read 3
# consecutive S2 maps, 6-11 read 4 consecutive ones, 12-14 read 4 non-consecutive ones,
# and map 15 reads all 6: 60 connections of 5x5 weights instead of 96.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


def _init_(weight, bias, fan_in, init):
    """The initialisation of a unit with fan-in F. "paper" is Appendix A's: weights and
    biases uniform in [-2.4/F, 2.4/F] (the paper treats a bias as one more weight).
    "lecun" is the same authors' rule in "Efficient BackProp" (LeCun, Bottou, Orr &
    Mueller, 1998, section 4.6) for this tanh: weights of standard deviation F^-1/2
    (uniform in [-sqrt(3/F), sqrt(3/F)]), biases 0. Dividing by F rather than sqrt(F)
    shrinks the weighted sums of the wide layers (on the digits, C3's to 1/8 and C5's to
    1/16 of their inputs' spread), which the paper's second-order step sizes made up for;
    with first-order optimisers it trains far slower than "lecun", the default."""
    if init == "paper":
        bound = 2.4 / fan_in
        nn.init.uniform_(weight, -bound, bound)
        nn.init.uniform_(bias, -bound, bound)
    elif init == "lecun":
        bound = (3.0 / fan_in) ** 0.5
        nn.init.uniform_(weight, -bound, bound)
        nn.init.zeros_(bias)
    else:
        raise ValueError(f"init must be 'lecun' or 'paper', got {init!r}")
    return weight


class ScaledTanh(nn.Module):
    """The squashing function of Appendix A, f(a) = 1.7159 tanh(2a / 3): f(1) = 1 and
    f(-1) = -1, and the second derivative is largest at a = +-1."""

    amplitude = 1.7159
    slope = 2.0 / 3.0

    def forward(self, input):
        return self.amplitude * torch.tanh(self.slope * input)


class Subsampling(nn.Module):
    """S2 and S4: each output is the sum of a non-overlapping kernel_size x kernel_size
    window of its input map, times the map's trainable coefficient, plus the map's trainable
    bias (2 parameters per map). The squashing function follows in the model."""

    def __init__(self, channels, kernel_size=2):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self, init="lecun"):
        fan_in = self.kernel_size ** 2  # the coefficient multiplies the sum of the window
        _init_(self.weight, self.bias, fan_in, init)

    def forward(self, input):
        window_sum = F.avg_pool2d(input, self.kernel_size, divisor_override=1)
        return window_sum * self.weight[:, None, None] + self.bias[:, None, None]

    def extra_repr(self):
        return f"{self.weight.numel()}, kernel_size={self.kernel_size}"


class PartialConv2d(nn.Module):
    """A convolution in which output map o sees only the input maps table[o] (C3).

    `weight` holds only the connected kernels, (connections, k, k) in the order of the
    table (output map by output map, input maps as listed), so parameters() counts only
    trainable weights: 60 x 25 + 16 biases = 1,516 for C3, as the paper counts them. forward
    scatters them into a zero (out, in, k, k) kernel (index_copy along the fixed
    `kernel_index` buffer, differentiable: the unconnected positions get no gradient and
    stay zero) and runs one dense convolution, which on 6 input maps costs less than 16
    convolutions of 3 to 6 maps each.
    """

    def __init__(self, in_channels, out_channels, kernel_size, table):
        super().__init__()
        if len(table) != out_channels or not all(
                0 < len(maps) == len(set(maps)) and all(0 <= i < in_channels for i in maps)
                for maps in table):
            raise ValueError(f"table must list, for each of the {out_channels} output maps, "
                             f"distinct input maps in 0..{in_channels - 1}; got {table!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = kernel_size
        self.table = tuple(tuple(maps) for maps in table)
        connections = sum(len(maps) for maps in self.table)
        self.weight = nn.Parameter(torch.empty(connections, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        # position of each connected kernel in the flattened (out * in) kernel list; a fixed
        # function of the table, so it is not saved in the state_dict
        index = [o * in_channels + i for o, maps in enumerate(self.table) for i in maps]
        self.register_buffer("kernel_index", torch.tensor(index), persistent=False)
        self.reset_parameters()

    def reset_parameters(self, init="lecun"):
        start = 0
        with torch.no_grad():
            for o, maps in enumerate(self.table):
                fan_in = len(maps) * self.kernel_size ** 2
                _init_(self.weight[start:start + len(maps)], self.bias[o:o + 1], fan_in, init)
                start += len(maps)

    def connections(self):
        """The (out, in) boolean connection mask of the table."""
        mask = torch.zeros(self.out_channels * self.in_channels, dtype=torch.bool,
                           device=self.kernel_index.device)
        return mask.index_fill_(0, self.kernel_index, True).view(self.out_channels, -1)

    def dense_weight(self):
        """The (out, in, k, k) kernel: the connected weights in place, zeros elsewhere."""
        k = self.kernel_size
        kernel = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)
        kernel = kernel.index_copy(0, self.kernel_index, self.weight)
        return kernel.view(self.out_channels, self.in_channels, k, k)

    def forward(self, input):
        return F.conv2d(input, self.dense_weight(), self.bias)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"connections={self.weight.shape[0]}")


class EuclideanRBF(nn.Module):
    """The output layer of section II.B: y_i = sum_j (x_j - w_ij)^2, the squared distance
    of the input to class i's parameter vector (a penalty: the smaller the better).

    With code=True (the default) w starts as a fixed +-1 code: each entry +1 or -1 with
    equal probability, drawn from a torch.Generator seeded with 0, so every model gets the
    same code (the paper's option of a random +-1 code; its hand-drawn 7x12 bitmaps of the
    characters are not reproduced). With code=False, w starts uniform in [-1, 1]. +-1 is
    where the scaled tanh of F6 has its largest curvature: f(+-1) = +-1.
    """

    def __init__(self, in_features, out_features, code=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.code = code
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            if self.code:
                self.weight.copy_(pm_one_code(self.out_features, self.in_features))
            else:
                nn.init.uniform_(self.weight, -1.0, 1.0)

    def forward(self, input):
        return (input.unsqueeze(-2) - self.weight).square().sum(-1)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, code={self.code}"


def pm_one_code(rows, columns, seed=0):
    """A (rows, columns) float tensor of +-1, each entry drawn with equal probability from
    a torch.Generator seeded with `seed`: the same code on every call."""
    generator = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (rows, columns), generator=generator, device="cpu")
    return bits.float().mul_(2).sub_(1)


class LeNet5(nn.Module):
    """LeNet-5: LeCun, Bottou, Bengio & Haffner, 1998, "Gradient-based learning applied to
    document recognition". Input 32 x 32 (in_chans maps, 1 in the paper).

    C1 6@5x5 (28x28) -> S2 (14x14) -> C3 16@5x5 with Table I's connections (10x10) -> S4
    (5x5) -> C5 120@5x5 (1x1) -> F6 84 -> output; every layer up to F6 is followed by the
    scaled tanh 1.7159 tanh(2a/3). S2 and S4 are the paper's trainable subsampling (sum of
    a 2x2 window times a coefficient plus a bias, per map).

    Parameters (in_chans=1, num_classes=10): C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6
    10,164: 60,000, the paper's "60,000 trainable parameters" exactly, since the paper keeps
    the output layer's parameter vectors fixed (chosen by hand, "at least initially"). With
    that output, rbf_output=True, as trainable parameters here (freeze them with
    `model.output.weight.requires_grad_(False)` for the paper's setting): 60,840; with the
    default linear output (84 x 10 + 10): 60,850.

    The output is a logit per class. With rbf_output=True it is minus the RBF penalty, -y_i:
    cross entropy on it is the paper's MAP criterion (equation 9) without the constant
    j of the rubbish class, and the class with the smallest penalty has the largest logit.
    init="lecun" (the default) initialises weights uniform with standard deviation F^-1/2
    (F the unit's fan-in) and biases 0, "Efficient BackProp"'s rule; init="paper" uses
    Appendix A's uniform in [-2.4/F, 2.4/F], from which SGD and Adam learn far slower
    (see _init_). Nothing is fused: the layers are plain torch.
    """

    def __init__(self, num_classes=10, in_chans=1, rbf_output=False, rbf_code=True,
                 init="lecun"):
        super().__init__()
        self.num_classes, self.in_chans, self.rbf_output = num_classes, in_chans, rbf_output
        self.act = ScaledTanh()
        self.c1 = nn.Conv2d(in_chans, 6, 5)
        self.s2 = Subsampling(6)
        self.c3 = PartialConv2d(6, 16, 5, C3_TABLE)
        self.s4 = Subsampling(16)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        if rbf_output:
            self.output = EuclideanRBF(84, num_classes, code=rbf_code)
        else:
            self.output = nn.Linear(84, num_classes)
        self.reset_parameters(init)

    def reset_parameters(self, init="lecun"):
        """Every layer initialised by `init` ("lecun" or "paper", see _init_); the RBF
        output's vectors by their own rule (EuclideanRBF)."""
        for layer in (self.c1, self.c5, self.f6, self.output):
            if isinstance(layer, EuclideanRBF):
                layer.reset_parameters()
            else:
                _init_(layer.weight, layer.bias, layer.weight[0].numel(), init)
        self.s2.reset_parameters(init)
        self.c3.reset_parameters(init)
        self.s4.reset_parameters(init)

    def forward_features(self, x):
        x = self.act(self.c1(x))  # N x 6 x 28 x 28
        x = self.act(self.s2(x))  # N x 6 x 14 x 14
        x = self.act(self.c3(x))  # N x 16 x 10 x 10
        x = self.act(self.s4(x))  # N x 16 x 5 x 5
        x = self.act(self.c5(x))  # N x 120 x 1 x 1
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"LeNet-5 takes 32 x 32 inputs (C5 must be 1 x 1); got an input "
                             f"whose C5 maps are {tuple(x.shape[-2:])}")
        return x

    def forward_head(self, x, pre_logits=False):
        x = self.act(self.f6(x.flatten(1)))  # N x 84
        if pre_logits:
            return x
        x = self.output(x)  # N x num_classes
        return -x if self.rbf_output else x

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(1, 32, 32))
def lenet5(num_classes=10, in_chans=1, rbf_output=False, rbf_code=True, init="lecun"):
    """LeNet-5 (LeCun et al., 1998), 32 x 32 inputs; rbf_output=True for the paper's
    Euclidean RBF output units, their vectors starting as a fixed +-1 code (rbf_code);
    init="paper" for Appendix A's initialisation."""
    return LeNet5(num_classes, in_chans, rbf_output, rbf_code, init)
