"""The classification loss of the papers: cross entropy, with GoogLeNet's auxiliary
classifiers and Inception-v3's label smoothing."""

import torch
import torch.nn.functional as F

# Szegedy et al., 2015, "Going deeper with convolutions", section 5: the auxiliary
# classifiers' losses are added to the total loss with a discount weight of 0.3.
AUX_WEIGHT = 0.3


def classification_loss(output, target, aux_weight=AUX_WEIGHT, label_smoothing=0.0):
    """Cross entropy of output against target (class indices), averaged over the batch.

    output is a logits tensor, or a tuple (logits, aux_logits2, aux_logits1) as GoogLeNet
    returns in training (torchvision's GoogLeNetOutputs namedtuple, fastcnn's googlenet):
    then the loss is CE(logits) + aux_weight * (CE(aux2) + CE(aux1)), GoogLeNet's total
    loss; auxiliary entries that are None (a model built without them) are skipped.

    label_smoothing = e > 0 is the label-smoothing regularisation of Szegedy et al., 2016
    ("Rethinking the Inception architecture", section 7): the target distribution is
    (1 - e) on the true class plus e / C on every class, which is what
    F.cross_entropy(..., label_smoothing=e) computes (Inception-v3 used e = 0.1).
    """
    if isinstance(output, torch.Tensor):
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)
    logits, *auxiliary = output
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    for aux in auxiliary:
        if aux is not None:
            loss = loss + aux_weight * F.cross_entropy(aux, target,
                                                       label_smoothing=label_smoothing)
    return loss


def main_logits(output):
    """The logits of a model's output: the output itself, or the first entry of a tuple
    with auxiliary logits (GoogLeNet in training)."""
    return output if isinstance(output, torch.Tensor) else output[0]
