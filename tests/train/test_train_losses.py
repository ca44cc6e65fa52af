"""GoogLeNet's loss with auxiliary classifiers weighted 0.3, and label smoothing."""

import torch
import torch.nn.functional as F
from torchvision.models import GoogLeNetOutputs

from fastcnn.train import AUX_WEIGHT, classification_loss, main_logits


def test_auxiliary_losses_are_weighted_0_3():
    target = torch.tensor([1, 4, 2])
    logits, aux2, aux1 = (torch.randn(3, 5, dtype=torch.float64) for _ in range(3))
    expected = (F.cross_entropy(logits, target)
                + 0.3 * F.cross_entropy(aux2, target) + 0.3 * F.cross_entropy(aux1, target))
    assert AUX_WEIGHT == 0.3
    output = GoogLeNetOutputs(logits, aux2, aux1)
    torch.testing.assert_close(classification_loss(output, target), expected)
    torch.testing.assert_close(classification_loss((logits, aux2, aux1), target), expected)
    torch.testing.assert_close(classification_loss(logits, target),
                               F.cross_entropy(logits, target))
    torch.testing.assert_close(classification_loss(GoogLeNetOutputs(logits, None, None),
                                                   target), F.cross_entropy(logits, target))
    torch.testing.assert_close(classification_loss(output, target, aux_weight=1.0),
                               F.cross_entropy(logits, target) + F.cross_entropy(aux2, target)
                               + F.cross_entropy(aux1, target))
    assert main_logits(output) is logits and main_logits(logits) is logits


def test_label_smoothing_is_inception_v3s():
    """The target distribution (1 - e) one-hot + e / C, Szegedy et al. 2016, section 7."""
    e, classes = 0.1, 6
    logits = torch.randn(4, classes, dtype=torch.float64)
    target = torch.tensor([0, 5, 2, 2])
    q = (1 - e) * F.one_hot(target, classes) + e / classes
    expected = -(q * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(classification_loss(logits, target, label_smoothing=e),
                               expected)
    aux = torch.randn(4, classes, dtype=torch.float64)
    q_aux = -(q * aux.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(
        classification_loss((logits, aux, None), target, label_smoothing=e),
        expected + 0.3 * q_aux)
