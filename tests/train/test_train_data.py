"""The digits as LeNet-5's input with their fixed split, and image folders."""

import pytest
import torch
from PIL import Image

from fastcnn.train import data


@pytest.fixture(scope="module")
def digits():
    return data.digits()


def test_digits_shapes_and_values(digits):
    train, test = digits
    assert (len(train), len(test)) == (1442, 355)
    images, labels = train.tensors
    assert images.shape == (1442, 1, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    assert test.tensors[0].shape == (355, 1, 32, 32)
    # background -0.1, ink up to 1.175; the 6-pixel border is background
    assert images.min() == pytest.approx(-0.1) and images.max() == pytest.approx(1.175)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[6:26, 6:26] = False
    torch.testing.assert_close(images[..., border], torch.full_like(images[..., border], -0.1))


def test_digits_split_is_fixed_and_stratified(digits):
    """Every fifth image of each class (in scikit-learn's order) is a test image."""
    from sklearn.datasets import load_digits

    train, test = digits
    target = torch.from_numpy(load_digits().target)
    for c in range(10):
        count = int((target == c).sum())
        assert int((test.tensors[1] == c).sum()) == count // 5
        assert int((train.tensors[1] == c).sum()) == count - count // 5
    again_train, again_test = data.digits()
    assert torch.equal(again_test.tensors[0], test.tensors[0])
    assert torch.equal(again_train.tensors[1], train.tensors[1])
    # no test image is also a training image (the 1,797 images are all different)
    seen = {x.numpy().tobytes() for x in train.tensors[0]}
    assert not any(x.numpy().tobytes() in seen for x in test.tensors[0])


def make_folder(root, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (60 * c + 10 * i, 100, 200 - 50 * c)
            Image.new("RGB", size, colour).save(root / name / f"{i}.png")
    return root


def test_image_folders(tmp_path):
    flat = make_folder(tmp_path / "flat")
    train, test = data.image_folders(str(flat), 24)
    assert test is None and train.classes == ["cat", "dog"] and len(train) == 6
    image, label = train[0]
    assert image.shape == (3, 24, 24) and label == 0
    gray, _ = data.image_folders(str(flat), 16, in_chans=1)
    assert gray[0][0].shape == (1, 16, 16)

    split = tmp_path / "split"
    make_folder(split / "train")
    make_folder(split / "val", per_class=1)
    train, test = data.image_folders(str(split), 32)
    assert (len(train), len(test)) == (6, 2)
    assert train.classes == test.classes


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        data.image_folders(str(tmp_path / "missing"), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not an image folder"):
        data.image_folders(str(tmp_path / "empty"), 32)
    make_folder(tmp_path / "odd" / "train")
    make_folder(tmp_path / "odd" / "test", classes=("cat", "cow"))
    with pytest.raises(ValueError, match="test/ has classes"):
        data.image_folders(str(tmp_path / "odd"), 32)
    with pytest.raises(ValueError, match="in_chans=4"):
        data.image_folders(str(tmp_path / "odd"), 32, in_chans=4)
