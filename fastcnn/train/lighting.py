"""AlexNet's PCA colour augmentation (Krizhevsky, Sutskever & Hinton, 2012, section 4.1):
each training image gets the principal components of the training set's RGB values added,
scaled by the eigenvalues times random N(0, 0.1) factors drawn once per image."""

import torch


def rgb_pca(images):
    """(eigenvalues, eigenvectors) of the 3 x 3 covariance of the RGB values of all pixels
    of images (N, 3, H, W): eigenvalues (3,) in decreasing order, eigenvectors (3, 3) with
    the i-th eigenvector p_i in column i. Computed in float64; returned in images' dtype."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"rgb_pca takes (N, 3, H, W) images, got {tuple(images.shape)}")
    pixels = images.transpose(0, 1).reshape(3, -1).double()  # 3 x (N H W)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(pixels))  # ascending
    return (eigenvalues.flip(0).to(images.dtype),
            eigenvectors.flip(1).to(images.dtype))


class PCALighting(torch.nn.Module):
    """Adds [p1, p2, p3] [a1 l1, a2 l2, a3 l3]^T to every pixel of an image, with l_i, p_i
    the eigenvalues and eigenvectors of the training set's RGB covariance (rgb_pca) and
    a_i ~ N(0, alpha_std) drawn once per image (AlexNet: alpha_std = 0.1).

    Takes one image (3, H, W) or a batch (N, 3, H, W), in the value range the eigenvalues
    were computed in; `generator` (a torch.Generator) makes the draw reproducible.
    """

    def __init__(self, eigenvalues, eigenvectors, alpha_std=0.1):
        super().__init__()
        self.register_buffer("eigenvalues", torch.as_tensor(eigenvalues).reshape(3).clone())
        self.register_buffer("eigenvectors",
                             torch.as_tensor(eigenvectors).reshape(3, 3).clone())
        self.alpha_std = alpha_std

    def forward(self, images, generator=None):
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"PCALighting takes (3, H, W) or (N, 3, H, W) images, got "
                             f"{tuple(images.shape)}")
        alpha = torch.randn(batch.shape[0], 3, generator=generator).to(self.eigenvalues)
        alpha = alpha * self.alpha_std
        shift = (alpha * self.eigenvalues) @ self.eigenvectors.T  # N x 3: sum_i a_i l_i p_i
        output = batch + shift.to(batch.dtype)[:, :, None, None]
        return output.squeeze(0) if images.dim() == 3 else output

    def extra_repr(self):
        return f"alpha_std={self.alpha_std}"
