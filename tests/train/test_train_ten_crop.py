"""10-crop evaluation: torchvision's ten crops, the model's outputs averaged."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastcnn.train import ten_crop_predict, ten_crops


def test_crops_are_torchvisions():
    images = torch.randn(2, 3, 11, 14)
    ours = ten_crops(images, 8)
    theirs = TF.ten_crop(images, [8, 8])
    assert len(ours) == 10
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="larger than the images"):
        ten_crops(images, 12)


def test_predictions_are_the_average_over_the_crops():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).double()
    images = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    crops = TF.ten_crop(images, [9, 9])
    logits = torch.stack([model(c) for c in crops])
    torch.testing.assert_close(ten_crop_predict(model, images, 9), logits.mean(0))
    torch.testing.assert_close(ten_crop_predict(model, images, 9, softmax=True),
                               logits.softmax(-1).mean(0))
