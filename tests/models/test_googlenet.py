"""GoogLeNet: the paper's network (Szegedy et al., 2015, Table 1 and section 5) and
torchvision's BatchNorm variant: parameter counts, Table 1's layer sizes and channel
numbers, the auxiliary classifiers (training mode only), initialisation, options and
errors. tests/models/test_zoo.py compares both with their references (torchvision's model,
fastcnn.models.torch_layers) in float64."""

import math

import pytest
import torch
import torchvision
from helpers import randn, randomise_batch_norms
from torch import nn

from fastcnn.models import create_model, list_models, torchvision_counterpart
from fastcnn.models.googlenet import googlenet, googlenet_torchvision
from fastcnn.nn import InceptionConcat, LocalResponseNorm, MaxPool2d, ReLULRNMaxPool

# Table 1: module, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj, output (C, H, W)
TABLE_1 = [
    ("inception3a", 64, 96, 128, 16, 32, 32, (256, 28, 28)),
    ("inception3b", 128, 128, 192, 32, 96, 64, (480, 28, 28)),
    ("inception4a", 192, 96, 208, 16, 48, 64, (512, 14, 14)),
    ("inception4b", 160, 112, 224, 24, 64, 64, (512, 14, 14)),
    ("inception4c", 128, 128, 256, 24, 64, 64, (512, 14, 14)),
    ("inception4d", 112, 144, 288, 32, 64, 64, (528, 14, 14)),
    ("inception4e", 256, 160, 320, 32, 128, 128, (832, 14, 14)),
    ("inception5a", 256, 160, 320, 32, 128, 128, (832, 7, 7)),
    ("inception5b", 384, 192, 384, 48, 128, 128, (1024, 7, 7)),
]
# Table 1's other rows, under each model's module names
STEM_SIZES = {
    googlenet: {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56), "norm1": (64, 56, 56),
                "conv3": (192, 56, 56), "relu_lrn_maxpool2": (192, 28, 28)},
    googlenet_torchvision: {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56),
                            "conv3": (192, 56, 56), "maxpool2": (192, 28, 28)},
}
POOL_SIZES = {"maxpool3": (480, 14, 14), "maxpool4": (832, 7, 7), "avgpool": (1024,),
              "fc": (1000,)}


@pytest.fixture(scope="module")
def paper():
    """The paper's GoogLeNet at num_classes=1000, built once."""
    return googlenet().eval()


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("builder, aux_logits, expected", [
    # 6,998,552 = stem 124,416 + Inception modules 5,849,136 + classifier 1,025,000; each
    # auxiliary classifier adds 65,664 (67,712) + 2,098,176 + 1,025,000
    (googlenet, True, 13_378_280),
    (googlenet, False, 6_998_552),
    (googlenet_torchvision, True, 13_004_888),
    (googlenet_torchvision, False, 6_624_904),
])
def test_parameter_counts(builder, aux_logits, expected):
    assert count(builder(aux_logits=aux_logits)) == expected


def test_torchvision_variant_has_the_count_of_torchvisions_weights():
    meta = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta
    assert meta["num_params"] == 6_624_904


@pytest.mark.parametrize("builder", [googlenet, googlenet_torchvision])
def test_table_1_output_sizes(builder, paper):
    """A 224 x 224 image gives every layer the size of the paper's Table 1."""
    model = paper if builder is googlenet else builder(aux_logits=False).eval()
    expected = {**STEM_SIZES[builder], **POOL_SIZES,
                **{name: size for name, *_, size in TABLE_1}}
    sizes, handles = {}, []
    for name in expected:
        hook = (lambda name: lambda m, args, out: sizes.update({name: tuple(out.shape)}))(name)
        handles.append(getattr(model, name).register_forward_hook(hook))
    with torch.no_grad():
        model(randn(1, 3, 224, 224))
    for handle in handles:
        handle.remove()
    assert sizes == {name: (1, *size) for name, size in expected.items()}


def test_inception_modules_have_table_1s_branches(paper):
    """Four branches: 1x1; 1x1 reduce -> 3x3; 1x1 reduce -> a real 5x5 (pad 2); 3x3/1
    max-pool -> 1x1 projection, all convolutions followed by a ReLU."""
    for name, c1, c3r, c3, c5r, c5, proj, _ in TABLE_1:
        module = getattr(paper, name)
        assert isinstance(module, InceptionConcat)
        b1, b2, b3, b4 = module.branches
        convs = [b1, *b2, *b3, b4[1]]
        assert [c.out_channels for c in convs] == [c1, c3r, c3, c5r, c5, proj], name
        assert [c.kernel_size[0] for c in convs] == [1, 1, 3, 1, 5, 1], name
        assert [c.padding[0] for c in convs] == [0, 0, 1, 0, 2, 0], name
        assert all(isinstance(c, nn.Conv2d) and c.bias is not None for c in convs)
        pool = b4[0]
        assert isinstance(pool, MaxPool2d) and (pool.kernel_size, pool.stride,
                                                pool.padding) == (3, 1, 1)


def test_paper_stem_has_the_caffe_models_lrn(paper):
    """LRN after the first max-pool, and ReLU -> LRN -> max-pool after conv2's 3x3: size 5,
    alpha 1e-4, beta 0.75, k 1 (bvlc_googlenet); max-pools 3x3/2 rounding up."""
    lrn, fused = paper.norm1, paper.relu_lrn_maxpool2
    assert isinstance(lrn, LocalResponseNorm) and isinstance(fused, ReLULRNMaxPool)
    for m in (lrn, fused):
        assert (m.size, m.alpha, m.beta, m.k) == (5, 1e-4, 0.75, 1.0)
    assert (fused.kernel_size, fused.stride, fused.padding, fused.ceil_mode) == (3, 2, 0, True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper.modules())


@pytest.mark.parametrize("builder, size", [(googlenet, 224), (googlenet_torchvision, 64)])
def test_auxiliary_outputs_in_training_only(builder, size):
    """Training mode returns torchvision's GoogLeNetOutputs(logits, aux_logits2,
    aux_logits1), the auxiliary classifiers taking 4a's and 4d's outputs; eval mode runs
    neither and returns the logits."""
    model = builder(num_classes=10)
    seen = []
    for aux in (model.aux1, model.aux2):
        aux.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    x = randn(1, 3, size, size)
    output = model.train()(x)
    assert isinstance(output, torchvision.models.GoogLeNetOutputs)
    assert all(o.shape == (1, 10) for o in output)
    assert seen == [512, 528]  # aux1 after 4a, aux2 after 4d
    with torch.no_grad():
        logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 10)
    assert seen == [512, 528]


@pytest.mark.parametrize("builder", [googlenet, googlenet_torchvision])
def test_without_auxiliary_classifiers(builder):
    """aux_logits=False: no auxiliary modules or keys; training mode returns the logits
    (and takes inputs smaller than 224 x 224)."""
    model = builder(num_classes=10, aux_logits=False)
    assert model.aux1 is None and model.aux2 is None
    assert not any("aux" in key for key in model.state_dict())
    output = model.train()(randn(1, 3, 64, 64))
    assert isinstance(output, torch.Tensor) and output.shape == (1, 10)


def test_paper_auxiliary_classifier_pools_5x5_stride_3_to_4x4():
    """Section 5: average pool 5x5/3 (4 x 4 at 224 x 224), 1x1 conv 128 + ReLU, FC 1024 +
    ReLU, dropout 0.7, linear. A training input too small for its 4 x 4 map is refused,
    with what to do instead."""
    model = googlenet(num_classes=10)
    aux = model.aux1
    assert isinstance(aux.pool, nn.AvgPool2d) and (aux.pool.kernel_size, aux.pool.stride) == (5, 3)
    assert (aux.conv.in_channels, aux.conv.out_channels, aux.fc1.in_features,
            aux.fc1.out_features, aux.dropout.p) == (512, 128, 2048, 1024, 0.7)
    assert model.dropout.p == 0.4
    assert aux.pool(randn(1, 512, 14, 14)).shape == (1, 512, 4, 4)
    with pytest.raises(ValueError, match="takes a 4 x 4 map .* got 1 x 1: .*aux_logits=False"):
        model.train()(randn(1, 3, 64, 64))
    with torch.no_grad():
        assert model.eval()(randn(1, 3, 64, 64)).shape == (1, 10)


def test_paper_initialisation_is_the_caffe_models():
    """bvlc_googlenet's "xavier": U(-sqrt(3 / fan_in), sqrt(3 / fan_in)) for every weight;
    biases 0.2, classifiers' 0."""
    model = googlenet()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = math.sqrt(3 / m.weight[0].numel())
            assert m.weight.abs().max() <= bound, name
            assert m.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1), name
            classifier = name in ("fc", "aux1.fc2", "aux2.fc2")
            assert torch.all(m.bias == (0.0 if classifier else 0.2)), name


def test_torchvision_variant_is_initialised_as_torchvision():
    """From the same seed, torchvision's GoogLeNet (init_weights=True) and this one hold the
    same state_dict: the same modules, made in the same order, initialised alike."""
    torch.manual_seed(0)
    theirs = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    torch.manual_seed(0)
    ours = googlenet_torchvision()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_torchvision_variant_keeps_torchvisions_3x3_and_keys():
    model = googlenet_torchvision(aux_logits=False)
    module = model.inception3a
    assert isinstance(module, InceptionConcat)
    assert module.branches == (module.branch1, module.branch2, module.branch3, module.branch4)
    assert module.branch3[1].conv.kernel_size == (3, 3)
    assert module.branch1.bn.eps == 1e-3
    assert [k for k in model.state_dict() if k.startswith("inception3a.branch2.0.")] == [
        "inception3a.branch2.0.conv.weight", "inception3a.branch2.0.bn.weight",
        "inception3a.branch2.0.bn.bias", "inception3a.branch2.0.bn.running_mean",
        "inception3a.branch2.0.bn.running_var", "inception3a.branch2.0.bn.num_batches_tracked"]


def test_transform_input_as_torchvisions():
    theirs = torchvision.models.googlenet(aux_logits=False, init_weights=True,
                                          transform_input=True)
    theirs = randomise_batch_norms(theirs, scale=0.1).eval()
    ours = googlenet_torchvision(aux_logits=False, transform_input=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="3 \\(RGB\\) input channels, got in_chans=1"):
        googlenet_torchvision(in_chans=1, transform_input=True)


@pytest.mark.parametrize("builder", [googlenet, googlenet_torchvision])
def test_inception_modules_write_in_place(builder):
    """No torch.cat runs: every Inception branch writes into its slice of the output."""
    model = builder(num_classes=10, aux_logits=False).eval()
    with torch.no_grad(), torch.profiler.profile() as prof:
        model(randn(1, 3, 64, 64))
    names = [e.name for e in prof.events()]
    assert "aten::convolution" in names or "aten::conv2d" in names
    assert "aten::cat" not in names


def test_registry():
    assert list_models("googlenet*") == ["googlenet", "googlenet_torchvision"]
    assert torchvision_counterpart("googlenet_torchvision")[0] == "googlenet"
    assert torchvision_counterpart("googlenet") is None
    model = create_model("googlenet", num_classes=5, in_chans=1, aux_logits=False)
    assert model.fc.out_features == 5 and model.conv1.in_channels == 1
    with torch.no_grad():
        assert model.eval()(randn(1, 1, 64, 64)).shape == (1, 5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'aux'"):
        create_model("googlenet", aux=False)


def test_torchvision_weights_by_name_imply_transform_input(monkeypatch, tmp_path):
    """torchvision builds its GoogLeNet with transform_input=True for its published weights;
    so does create_model given their name (not given a file, nor when set)."""
    state = torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict",
                        lambda self, progress=True, check_hash=False: state)
    name = "GoogLeNet_Weights.IMAGENET1K_V1"
    assert create_model("googlenet_torchvision", weights=name).transform_input is True
    assert create_model("googlenet_torchvision", weights=name,
                        transform_input=False).transform_input is False
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    assert create_model("googlenet_torchvision", weights=str(path)).transform_input is False
