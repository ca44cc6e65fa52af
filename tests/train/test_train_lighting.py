"""AlexNet's PCA lighting: the RGB covariance's eigen-decomposition and the per-image
shift sum_i alpha_i lambda_i p_i."""

import numpy as np
import pytest
import torch

from fastcnn.train import PCALighting, rgb_pca

COVARIANCE = np.array([[0.30, 0.12, 0.05],
                       [0.12, 0.20, 0.08],
                       [0.05, 0.08, 0.10]])


def images_with_covariance(covariance, n=6, size=8):
    """(n, 3, size, size) images whose pixels' RGB sample covariance is exactly
    `covariance`: random pixels, whitened by their own covariance, then coloured."""
    pixels = torch.randn(3, n * size * size, dtype=torch.float64)
    pixels = pixels - pixels.mean(1, keepdim=True)
    whiten = torch.linalg.inv(torch.linalg.cholesky(torch.cov(pixels)))
    colour = torch.linalg.cholesky(torch.from_numpy(covariance))
    pixels = colour @ whiten @ pixels + torch.tensor([[0.4], [0.5], [0.6]], dtype=torch.float64)
    return pixels.reshape(3, n, size, size).transpose(0, 1)


def test_eigenvectors_and_values_match_numpy():
    images = images_with_covariance(COVARIANCE)
    eigenvalues, eigenvectors = rgb_pca(images)
    expected_values, expected_vectors = np.linalg.eigh(COVARIANCE)
    order = np.argsort(expected_values)[::-1]
    np.testing.assert_allclose(eigenvalues.numpy(), expected_values[order], rtol=1e-10)
    for i, j in enumerate(order):  # eigenvectors are defined up to sign
        v, w = eigenvectors[:, i].numpy(), expected_vectors[:, j]
        np.testing.assert_allclose(v * np.sign(v @ w), w, atol=1e-10)
    assert torch.all(eigenvalues[:-1] >= eigenvalues[1:])
    float_values, _ = rgb_pca(images.float())
    assert float_values.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        rgb_pca(torch.randn(2, 1, 4, 4))


def test_lighting_adds_one_rgb_shift_per_image():
    eigenvalues, eigenvectors = rgb_pca(images_with_covariance(COVARIANCE))
    lighting = PCALighting(eigenvalues, eigenvectors, alpha_std=0.1)
    images = torch.rand(5, 3, 4, 4, dtype=torch.float64)
    output = lighting(images, generator=torch.Generator().manual_seed(7))
    alpha = torch.randn(5, 3, generator=torch.Generator().manual_seed(7)).double() * 0.1
    expected_shift = torch.stack([sum(alpha[n, i] * eigenvalues[i] * eigenvectors[:, i]
                                      for i in range(3)) for n in range(5)])
    shift = output - images
    torch.testing.assert_close(shift, expected_shift[:, :, None, None].expand_as(shift))
    single = lighting(images[0], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(single, output[0])


def test_alpha_has_standard_deviation_0_1():
    """Along each eigenvector the shift is alpha_i lambda_i: its spread over many images
    is 0.1 lambda_i."""
    eigenvalues, eigenvectors = rgb_pca(images_with_covariance(COVARIANCE))
    lighting = PCALighting(eigenvalues, eigenvectors)
    images = torch.zeros(20000, 3, 1, 1, dtype=torch.float64)
    shifts = lighting(images, generator=torch.Generator().manual_seed(0)).flatten(1)
    alphas = shifts @ eigenvectors / eigenvalues  # back along each p_i
    torch.testing.assert_close(alphas.std(0), torch.full((3,), 0.1, dtype=torch.float64),
                               rtol=0.03, atol=0)
    assert alphas.mean(0).abs().max() < 0.005
