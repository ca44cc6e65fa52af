"""Top-k error, the measure of the ImageNet papers (AlexNet's top-1 and top-5)."""


def topk_error(logits, target, k=(1, 5)):
    """The fraction of samples whose target is not among the k highest logits.

    logits (N, C), target (N,) class indices. k an int gives one float; a tuple of ints
    gives a tuple of floats, one per k. A k of C or more counts every sample as right (its
    target is always among the C classes), as top-5 of a 3-class problem would. Ties are
    broken as torch.topk breaks them.
    """
    ks = (k,) if isinstance(k, int) else tuple(k)
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"topk_error takes (N, C) logits and (N,) targets, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if any(j < 1 for j in ks):
        raise ValueError(f"k must be at least 1, got {k}")
    if logits.shape[0] == 0:
        errors = tuple(0.0 for _ in ks)
    else:
        largest = min(max(ks), logits.shape[1])
        top = logits.topk(largest, dim=1).indices  # N x largest, best first
        hits = top == target.unsqueeze(1)
        errors = tuple(1.0 - hits[:, :min(j, largest)].any(1).float().mean().item()
                       for j in ks)
    return errors[0] if isinstance(k, int) else errors
