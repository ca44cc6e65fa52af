"""Checkpoints of `fastcnn train`: a dict saved with torch.save that names the registered
model and holds what rebuilds it, its weights and the training state."""

import os

import torch

from fastcnn.train.errors import UsageError

FORMAT = "fastcnn-checkpoint"


def save_checkpoint(path, model_name, model, *, num_classes, in_chans, image_size, epoch,
                    model_kwargs=None, optimizer=None, scheduler=None, data=None,
                    classes=None, history=()):
    """Saves {"format", "model" (the registered name), "model_kwargs", "state_dict",
    "num_classes", "in_chans", "image_size" ((H, W) of the images it was trained on),
    "epoch", "optimizer", "scheduler" (their
    state_dicts or None), "data" ("digits" or the --data path), "classes" (the class
    names, or None), "history" (a dict of numbers per epoch)} to path."""
    torch.save({
        "format": FORMAT,
        "model": model_name,
        "model_kwargs": dict(model_kwargs or {}),
        "state_dict": model.state_dict(),
        "num_classes": num_classes,
        "in_chans": in_chans,
        "image_size": list(image_size),
        "epoch": epoch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "data": data,
        "classes": list(classes) if classes is not None else None,
        "history": list(history),
    }, path)


def load_checkpoint(path, model_name=None):
    """The checkpoint dict saved at path. Raises UsageError, naming the file, when it does
    not exist, is not a fastcnn checkpoint, or (model_name given) is of another model."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {str(path)!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many kinds on a file it cannot read
        raise UsageError(f"{str(path)!r} is not a fastcnn checkpoint (torch.load: "
                         f"{type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        what = "a state_dict" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UsageError(f"{str(path)!r} is not a fastcnn checkpoint (it holds {what}; "
                         f"fastcnn train writes checkpoints)")
    if model_name is not None and checkpoint["model"] != model_name:
        raise UsageError(f"{str(path)!r} is a checkpoint of {checkpoint['model']}, "
                         f"not of {model_name}")
    return checkpoint


def model_from_checkpoint(checkpoint, path="checkpoint"):
    """The model a checkpoint dict names, built as it was trained, with its weights.
    Raises UsageError when the model is not registered or the weights do not fit it."""
    from fastcnn.models import create_model, list_models

    name = checkpoint["model"]
    if name not in list_models():
        raise UsageError(f"{str(path)!r} is a checkpoint of {name!r}, which is not a "
                         f"registered model")
    model = create_model(name, num_classes=checkpoint["num_classes"],
                         in_chans=checkpoint["in_chans"], **checkpoint["model_kwargs"])
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        if len(detail) > 300:
            detail = detail[:300] + " ..."
        raise UsageError(f"{str(path)!r} says it is a checkpoint of {name}, but its weights "
                         f"are not {name}'s: {detail}") from None
    return model
