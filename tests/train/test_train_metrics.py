"""topk_error: the fraction of samples whose target is not among the k best logits."""

import pytest
import torch

from fastcnn.train import topk_error


def test_top1_and_top5_of_a_known_batch():
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5, 6],    # ranks: 6 5 4 3 2 1 0
                           [6.0, 5, 4, 3, 2, 1, 0],    # ranks: 0 1 2 3 4 5 6
                           [0.0, 0, 0, 9, 0, 0, 1],
                           [1.0, 2, 3, 4, 5, 6, 7]])
    target = torch.tensor([6, 5, 3, 1])  # best; 6th best; best; 6th best
    assert topk_error(logits, target) == (0.5, 0.5)
    assert topk_error(logits, target, k=(1, 6)) == (0.5, 0.0)
    assert topk_error(logits, target, k=1) == 0.5
    assert topk_error(logits, torch.tensor([0, 0, 6, 2]), k=(1, 2, 5)) == (0.75, 0.5, 0.25)


def test_k_of_the_number_of_classes_or_more_counts_every_sample_right():
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    assert topk_error(logits, target, k=(3, 5)) == (0.0, 0.0)
    assert topk_error(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)) == (0.0, 0.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\(N, C\) logits and \(N,\) targets"):
        topk_error(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be at least 1"):
        topk_error(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), k=(0, 1))
