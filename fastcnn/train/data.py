"""The data sets of `fastcnn train`: scikit-learn's handwritten digits (bundled, offline)
shaped like LeNet-5's input, and ImageFolder directories for any model."""

import os

import torch
import torch.nn.functional as F

# The digits of LeNet-5's paper are size-normalised to 20 x 20 and centred in its 32 x 32
# input field; its input values are -0.1 for the background and 1.175 for the ink, which
# makes their mean about 0 and their variance about 1 (section II.B).
DIGIT_SIZE = 20
INPUT_SIZE = 32
BACKGROUND, INK = -0.1, 1.175
# Within each class, every TEST_EVERY-th image (in scikit-learn's order) is a test image.
TEST_EVERY = 5


def digits():
    """scikit-learn's handwritten digits (1,797 8 x 8 images of 0-16, from the UCI optical
    recognition of handwritten digits set) as two TensorDatasets (train, test) of
    (N, 1, 32, 32) float32 images and int64 labels 0-9.

    Each image is resized bilinearly to 20 x 20, centred in a 32 x 32 field (a 6-pixel
    border) and mapped linearly from [0, 16] to [-0.1, 1.175], as the paper prepares MNIST
    for LeNet-5. The split is fixed and uses no random generator: within each class, the
    images at positions 4, 9, 14, ... (every fifth, in scikit-learn's order) are the test
    set, so both sets hold every class in the same proportion: 1,442 train, 355 test.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images).float().unsqueeze(1) / 16.0  # N x 1 x 8 x 8
    images = F.interpolate(images, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear",
                           align_corners=False)
    border = (INPUT_SIZE - DIGIT_SIZE) // 2
    images = F.pad(images, (border,) * 4)  # N x 1 x 32 x 32, background 0
    images = images * (INK - BACKGROUND) + BACKGROUND
    labels = torch.from_numpy(data.target).long()
    test = _every_nth_of_each_class(labels, TEST_EVERY)
    return (torch.utils.data.TensorDataset(images[~test], labels[~test]),
            torch.utils.data.TensorDataset(images[test], labels[test]))


def _every_nth_of_each_class(labels, n):
    """Boolean mask of the images that are the n-th, 2n-th, ... of their class."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for c in labels.unique():
        positions = (labels == c).nonzero().flatten()
        mask[positions[n - 1::n]] = True
    return mask


# ImageNet's per-channel mean and standard deviation (torchvision's models expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_folders(path, image_size, in_chans=3):
    """(train, test) torchvision ImageFolder data sets of the directory `path`: its train/
    and val/ (or test/) subdirectories when it has them, else `path` itself as the train
    set and no test set (test is None). Images are resized to image_size ((H, W), or an
    int for square images), converted to grayscale when in_chans is 1, and normalised with
    ImageNet's mean and standard deviation. Raises FileNotFoundError when `path` is not a
    directory, and ValueError when it holds no class folders of images."""
    from torchvision import datasets, transforms

    if not os.path.isdir(path):
        raise FileNotFoundError(f"--data {path!r}: no such directory")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    steps = [transforms.Resize(tuple(image_size))]
    if in_chans == 1:
        steps.append(transforms.Grayscale(1))
        mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    elif in_chans == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise ValueError(f"image folders give 1- or 3-channel images, not in_chans={in_chans}")
    transform = transforms.Compose(
        [*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])

    def folder(root):
        try:
            return datasets.ImageFolder(root, transform=transform)
        except (FileNotFoundError, RuntimeError) as error:  # no class folders, no images
            raise ValueError(f"--data {root!r} is not an image folder (one subdirectory of "
                             f"images per class): {error}") from None

    train_dir = os.path.join(path, "train")
    if not os.path.isdir(train_dir):
        return folder(path), None
    train = folder(train_dir)
    for name in ("val", "test"):
        if os.path.isdir(os.path.join(path, name)):
            test = folder(os.path.join(path, name))
            if test.classes != train.classes:
                raise ValueError(f"--data {path!r}: {name}/ has classes {test.classes}, "
                                 f"train/ has {train.classes}; they must be the same")
            return train, test
    return train, None
