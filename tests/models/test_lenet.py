"""LeNet-5 as the paper describes it: the parameter count of section II.B, Table I's C3
connections, the layer sizes, the trainable subsampling, the scaled tanh, the RBF output,
the two initialisations."""

import pytest
import torch
import torch.nn.functional as F
from helpers import randn

import fastcnn.models.lenet  # noqa: F401  (registers lenet5)
from fastcnn.models import create_model, default_input_size, torch_layers
from fastcnn.models.lenet import C3_TABLE, PartialConv2d, Subsampling, lenet5, pm_one_code

# Table I as printed: a row per S2 map, a column per C3 map, X where they are connected.
PAPER_TABLE_I = """
X . . . X X X . . X X X X . X X
X X . . . X X X . . X X X X . X
X X X . . . X X X . . X . X X X
. X X X . . X X X X . . X . X X
. . X X X . . X X X X . X X . X
. . . X X X . . X X X X . X X X
"""


def parameters(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_is_the_papers():
    """Section II.B: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164 trainable
    parameters: 60,000 exactly, the paper's figure (its RBF output vectors were fixed);
    the 840 RBF vectors as parameters make 60,840, the default linear output 60,850."""
    model = lenet5()
    per_layer = {name: parameters(getattr(model, name))
                 for name in ("c1", "s2", "c3", "s4", "c5", "f6")}
    assert per_layer == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}
    assert sum(per_layer.values()) == 60000
    assert parameters(model) == 60850
    rbf = lenet5(rbf_output=True)
    assert parameters(rbf.output) == 840 and parameters(rbf) == 60840
    rbf.output.weight.requires_grad_(False)  # the paper's fixed output vectors
    assert sum(p.numel() for p in rbf.parameters() if p.requires_grad) == 60000
    assert parameters(lenet5(num_classes=26, in_chans=3)) == 60850 + 300 + 16 * 84 + 16


def test_c3_table_is_table_i():
    rows = [line.split() for line in PAPER_TABLE_I.strip().splitlines()]
    paper = tuple(tuple(s2 for s2 in range(6) if rows[s2][c3] == "X") for c3 in range(16))
    assert C3_TABLE == paper
    mask = lenet5().c3.connections()
    assert mask.tolist() == [[i in maps for i in range(6)] for maps in C3_TABLE]
    assert int(mask.sum()) == 60


def test_c3_table_has_the_papers_structure():
    """6 maps from 3 consecutive S2 maps, 6 from 4 consecutive, 3 from 4 non-consecutive,
    1 from all 6 (consecutive cyclically)."""
    def consecutive(maps):
        return any(set(maps) == {(start + i) % 6 for i in range(len(maps))}
                   for start in range(6))

    assert [len(m) for m in C3_TABLE] == [3] * 6 + [4] * 9 + [6]
    assert all(consecutive(m) for m in C3_TABLE[:12])
    assert not any(consecutive(m) for m in C3_TABLE[12:15])
    assert len(set(C3_TABLE)) == 16


def test_partial_conv_is_one_convolution_per_map_over_its_table():
    """C3's output map o is the convolution of S2 maps table[o] alone, forward and
    backward; the unconnected kernel positions are zeros and get no parameters."""
    c3 = PartialConv2d(6, 16, 5, C3_TABLE).double()
    x = randn(2, 6, 14, 14, dtype=torch.float64, channels_last=True).requires_grad_()
    y = c3(x)
    assert y.shape == (2, 16, 10, 10)
    start, expected = 0, []
    for o, maps in enumerate(C3_TABLE):
        kernel = c3.weight[start:start + len(maps)].unsqueeze(0)
        expected.append(F.conv2d(x[:, list(maps)], kernel, c3.bias[o:o + 1]))
        start += len(maps)
    expected = torch.cat(expected, 1)
    torch.testing.assert_close(y, expected)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, c3.weight, c3.bias), grad)
    want = torch.autograd.grad(expected, (x, c3.weight, c3.bias), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    dense = c3.dense_weight()
    assert torch.all(dense[~c3.connections()] == 0)
    assert "c3.kernel_index" not in lenet5().state_dict()  # derived from the table


def test_partial_conv_rejects_a_bad_table():
    with pytest.raises(ValueError, match="table must list"):
        PartialConv2d(6, 2, 5, [(0, 1), (6,)])
    with pytest.raises(ValueError, match="table must list"):
        PartialConv2d(6, 2, 5, [(0, 0)])
    with pytest.raises(ValueError, match="table must list"):
        PartialConv2d(6, 3, 5, [(0,), (1,)])


def test_subsampling_is_a_trainable_scaled_window_sum():
    s2 = Subsampling(6).double()
    x = randn(3, 6, 28, 28, dtype=torch.float64)
    window_sums = x.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))  # N x 6 x 14 x 14
    expected = window_sums * s2.weight.view(6, 1, 1) + s2.bias.view(6, 1, 1)
    torch.testing.assert_close(s2(x), expected)


def test_layer_sizes_are_the_papers():
    model = lenet5()
    sizes = {}
    for name in ("c1", "s2", "c3", "s4", "c5"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[1:])))
    x = randn(2, 1, 32, 32)
    assert model(x).shape == (2, 10)
    assert sizes == {"c1": (6, 28, 28), "s2": (6, 14, 14), "c3": (16, 10, 10),
                     "s4": (16, 5, 5), "c5": (120, 1, 1)}
    assert model.forward_features(x).shape == (2, 120, 1, 1)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 84)
    with pytest.raises(ValueError, match="takes 32 x 32 inputs"):
        model(randn(1, 1, 36, 36))


def test_squashing_is_the_scaled_tanh():
    """f(a) = 1.7159 tanh(2a/3), f(+-1) = +-1, after every layer up to F6."""
    model = lenet5()
    a = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(model.act(a), 1.7159 * torch.tanh(2 * a / 3))
    assert abs(float(model.act(torch.tensor(1.0))) - 1) < 1e-4
    x = randn(2, 1, 32, 32)
    f6 = model.forward_head(model.forward_features(x), pre_logits=True)
    assert f6.abs().max() < 1.7159


def test_rbf_output_is_minus_the_squared_distance():
    model = lenet5(rbf_output=True).double()
    x = randn(4, 1, 32, 32, dtype=torch.float64)
    f6 = model.forward_head(model.forward_features(x), pre_logits=True)
    penalties = ((f6[:, None, :] - model.output.weight[None]) ** 2).sum(-1)  # y_i
    torch.testing.assert_close(model(x), -penalties)
    torch.testing.assert_close(model.output(f6), penalties)


def test_rbf_code_is_a_fixed_plus_minus_one_code():
    code = lenet5(rbf_output=True).output.weight.detach()
    assert code.shape == (10, 84)
    assert set(code.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(code, lenet5(rbf_output=True).output.weight.detach())
    assert torch.equal(code, pm_one_code(10, 84))
    assert len({tuple(row) for row in code.tolist()}) == 10
    distances = (code[:, None] != code[None]).sum(-1)
    assert distances[~torch.eye(10, dtype=torch.bool)].min() >= 20  # far apart
    uniform = lenet5(rbf_output=True, rbf_code=False).output.weight
    assert uniform.abs().max() <= 1 and len(uniform.unique()) > 2


def test_initialisations():
    """"lecun": weights within sqrt(3 / fan-in), zero biases; "paper": weights and biases
    within 2.4 / fan-in (Appendix A)."""
    for init, bound, zero_bias in (("lecun", lambda f: (3 / f) ** 0.5, True),
                                   ("paper", lambda f: 2.4 / f, False)):
        model = lenet5(init=init)
        fan_ins = {"c1": 25, "s2": 4, "s4": 4, "c5": 400, "f6": 120, "output": 84}
        for name, fan_in in fan_ins.items():
            layer = getattr(model, name)
            assert layer.weight.abs().max() <= bound(fan_in), (init, name)
            assert layer.weight.abs().max() > 0.5 * bound(fan_in), (init, name)
            assert (layer.bias.abs().max() == 0) == zero_bias
        start = 0
        for maps in C3_TABLE:
            kernels = model.c3.weight[start:start + len(maps)]
            assert kernels.abs().max() <= bound(25 * len(maps))
            start += len(maps)
    with pytest.raises(ValueError, match="init must be 'lecun' or 'paper'"):
        lenet5(init="xavier")


def test_options_registry_and_torch_layers():
    model = create_model("lenet5", num_classes=5, in_chans=3)
    assert model.c1.in_channels == 3 and model.output.out_features == 5
    assert default_input_size("lenet5") == (1, 32, 32)
    model = lenet5(rbf_output=True)
    copy = torch_layers(model)  # no fastcnn layer: a plain copy with the same keys
    assert list(copy.state_dict()) == list(model.state_dict())
    x = randn(3, 1, 32, 32)
    torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)
