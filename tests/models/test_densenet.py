"""fastcnn's DenseNets against torchvision's: the same state_dict keys and shapes (a randomly
initialised torchvision model loads with strict=True), logits, and one training step's
loss, gradients and running statistics; the registry that builds them."""

import pytest
import torch
import torchvision
from helpers import randn, randomise_batch_norms

import fastcnn
from fastcnn.models import create_model, densenet121, list_models
from fastcnn.models.densenet import torchvision_state_dict


def test_densenet121_matches_torchvision():
    """float64, a 64 x 64 input (every block still runs): eval logits, then a training
    step: loss, every parameter's gradient, every running statistic."""
    theirs = torchvision.models.densenet121(num_classes=10)
    theirs = randomise_batch_norms(theirs, scale=0.1).double()
    ours = densenet121(num_classes=10).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    target = torch.tensor([3, 7])
    losses = []
    for model in (ours.train(), theirs.train()):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for a, b in zip(ours.buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201"])
def test_every_densenet_has_torchvisions_parameters(name):
    theirs = getattr(torchvision.models, name)()
    ours = create_model(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict(), strict=True)


def test_features_alone_give_torchvisions_features():
    theirs = torchvision.models.densenet121().eval()
    ours = densenet121().eval()
    ours.load_state_dict(theirs.state_dict())
    x = randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.features(x), theirs.features(x), rtol=1e-4, atol=1e-5)


def test_published_weights_keys_are_renamed():
    """torchvision's published DenseNet weights name layer parameters "norm.1", "conv.2"."""
    state_dict = torchvision.models.densenet121().state_dict()
    legacy = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
              for k, v in state_dict.items()}
    assert legacy.keys() != state_dict.keys()
    renamed = torchvision_state_dict(legacy)
    assert list(renamed) == list(state_dict)
    densenet121().load_state_dict(renamed, strict=True)


def test_registry(tmp_path, monkeypatch):
    assert {"densenet121", "densenet161", "densenet169", "densenet201"} <= set(list_models())
    assert list_models("densenet1?1") == ["densenet121", "densenet161"]
    with pytest.raises(ValueError, match="unknown model 'densenet'; registered: densenet121"):
        create_model("densenet")
    model = create_model("densenet121", num_classes=5, in_chans=1)
    assert model.classifier.out_features == 5 and model.features.conv0.in_channels == 1
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model("densenet121", num_classes=5, in_chans=1, weights=str(path))
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_model("densenet121", weights=str(path))
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        create_model("densenet121", weights="no-such-file.pt")

    def offline(self, progress=True, check_hash=False):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="pass the path of a saved state_dict"):
        create_model("densenet121", weights="DenseNet121_Weights.IMAGENET1K_V1")
    assert fastcnn.models.densenet121 is densenet121
