"""The 10-crop evaluation of AlexNet (Krizhevsky et al., 2012, section 4.1) and VGG
(Simonyan & Zisserman, 2015, section 3.2): the four corner crops and the centre crop of
each image, and their horizontal mirrors, with the predictions averaged."""

import torch


def ten_crops(images, size):
    """The ten (N, C, size, size) crops of images (N, C, H, W), in torchvision's ten_crop
    order: top-left, top-right, bottom-left, bottom-right, centre, then the same five
    cropped from the mirrored images (with an odd margin, the centre crop of the mirror is
    one pixel off the mirror of the centre crop; torchvision's is the former)."""
    h, w = images.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the images ({h} x {w})")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    corners = ((0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left))
    mirrored = images.flip(-1)
    return ([images[..., i:i + size, j:j + size] for i, j in corners]
            + [mirrored[..., i:i + size, j:j + size] for i, j in corners])


@torch.no_grad()
def ten_crop_predict(model, images, size, softmax=False):
    """The model's (N, classes) output averaged over the ten crops of images (N, C, H, W):
    the mean of the logits, or with softmax=True the mean of the softmax probabilities (the
    papers average the softmax outputs; both rank the classes alike for most images). The
    crops run one at a time, so memory stays that of one batch."""
    total = None
    for crop in ten_crops(images, size):
        output = model(crop)
        output = output.softmax(1) if softmax else output
        total = output if total is None else total + output
    return total / 10
