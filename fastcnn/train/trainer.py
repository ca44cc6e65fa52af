"""The trainer behind `fastcnn train` and `fastcnn eval`: a registered model on the digits
or an image folder, a progress bar per epoch, a line of numbers per epoch, a checkpoint."""

import math
import os
import time

import torch

from fastcnn.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fastcnn.train.errors import UsageError
from fastcnn.train.losses import classification_loss, main_logits
from fastcnn.train.metrics import topk_error
from fastcnn.train.progress import progress_bar
from fastcnn.train.schedules import make_scheduler

DIGITS = "digits"
# Defaults of the settings not given, by data source. The digits: Adam with label
# smoothing 0.1, with which LeNet-5 passes 97% test accuracy in 10 epochs from every seed
# tried (SGD at a rate fast enough there stays at chance from some seeds). Image folders:
# AlexNet's SGD (momentum 0.9, weight decay 5e-4, rate 0.01).
RECIPES = {
    DIGITS: dict(epochs=10, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                 label_smoothing=0.1),
    "folder": dict(epochs=30, batch_size=64, optimizer="sgd", lr=0.01, weight_decay=5e-4,
                   label_smoothing=0.0),
}
OPTIMIZERS = ("sgd", "adam")


def model_input_size(name):
    """(C, H, W) of the images registered model `name` was designed for. Raises UsageError
    when no model of that name is registered."""
    from fastcnn.models import default_input_size, list_models

    if name not in list_models():
        raise UsageError(f"unknown model {name!r}; registered models: "
                         f"{', '.join(list_models())}")
    return tuple(default_input_size(name))


def load_data(data, image_size, in_chans=3):
    """(train set, test set or None, class names, in_chans) of `data`: None for the digits
    (in_chans 1), else the path of an image folder (data.image_folders) of in_chans
    channels resized to image_size (H, W)."""
    from fastcnn.train import data as datasets

    if data is None:
        if tuple(image_size) != (datasets.INPUT_SIZE, datasets.INPUT_SIZE):
            raise UsageError(f"the digits are {datasets.INPUT_SIZE} x {datasets.INPUT_SIZE} "
                             f"images and this model takes {_size(image_size)}: "
                             f"give --data PATH, an image folder")
        train_set, test_set = datasets.digits()
        return train_set, test_set, [str(d) for d in range(10)], 1
    try:
        train_set, test_set = datasets.image_folders(data, image_size, in_chans)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    return train_set, test_set, train_set.classes, in_chans


def _size(image_size):
    return " x ".join(str(n) for n in image_size)


def make_optimizer(name, parameters, lr, weight_decay):
    """"sgd": SGD with momentum 0.9 (AlexNet's); "adam": Adam, weight_decay as L2."""
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    raise UsageError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _loader(dataset, batch_size, shuffle, workers, seed=0):
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    if workers is None:  # image folders decode files: worth other processes; tensors not
        workers = 0 if isinstance(dataset, torch.utils.data.TensorDataset) \
            else min(4, os.cpu_count() or 1)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       num_workers=workers, generator=generator)


@torch.no_grad()
def measure(model, loader, device):
    """{"loss", "top1_error", "top5_error", "images"} of the model in eval mode over the
    loader (loss: mean cross entropy)."""
    model.eval()
    loss = top1 = top5 = 0.0
    images = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = main_logits(model(x))
        n = y.shape[0]
        loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        e1, e5 = topk_error(logits, y, k=(1, 5))
        top1, top5, images = top1 + e1 * n, top5 + e5 * n, images + n
    images = max(images, 1)
    return {"loss": loss / images, "top1_error": top1 / images, "top5_error": top5 / images,
            "images": images}


def _train_epoch(model, loader, optimizer, device, label_smoothing, description, progress):
    """One pass over the loader; (mean loss, top-1 error, images, seconds)."""
    model.train()
    batches = progress_bar(loader, len(loader), description) if progress else loader
    loss_sum = errors = 0.0
    images = 0
    start = time.perf_counter()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        output = model(x)
        loss = classification_loss(output, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = y.shape[0]
        loss_sum += loss.item() * n
        errors += topk_error(main_logits(output).detach(), y, k=1) * n
        images += n
        if progress:
            batches.set_postfix_str(f"loss {loss.item():.4f}")
    seconds = time.perf_counter() - start
    if progress:
        batches.close()
    if not math.isfinite(loss_sum):
        raise UsageError(f"the training loss is {loss_sum}: lower the learning rate (--lr)")
    return loss_sum / max(images, 1), errors / max(images, 1), images, seconds


def train(model_name, data=None, *, epochs=None, batch_size=None, lr=None, optimizer=None,
          weight_decay=None, schedule="cosine", label_smoothing=None, out=None, device=None,
          seed=0, workers=None, progress=True, log=print, model_kwargs=None):
    """Trains registered model `model_name` on `data` (None: scikit-learn's digits; else
    the path of an image folder, data.image_folders), saving a checkpoint to `out`
    (default MODEL.pt) after every epoch. Settings left None take RECIPES[...]'s values.
    Logs the settings, then per epoch the training loss, training and test top-1 error and
    images per second. Returns {"checkpoint": out, "history": [per-epoch dicts], "seconds"}.
    Raises UsageError for a model name, data path or setting that cannot be used."""
    model_kwargs = dict(model_kwargs or {})
    in_chans, *image_size = model_input_size(model_name)
    source = DIGITS if data is None else os.path.abspath(data)
    train_set, test_set, classes, in_chans = load_data(data, image_size, in_chans)
    given = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                 weight_decay=weight_decay, label_smoothing=label_smoothing)
    recipe = RECIPES[DIGITS if source == DIGITS else "folder"]
    settings = {k: recipe[k] if v is None else v for k, v in given.items()}
    if settings["epochs"] < 1 or settings["batch_size"] < 1 or not settings["lr"] > 0:
        raise UsageError(f"epochs, batch size and learning rate must be positive, got "
                         f"{settings['epochs']}, {settings['batch_size']}, {settings['lr']}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = out or f"{model_name}.pt"

    torch.manual_seed(seed)
    from fastcnn.models import create_model

    model = create_model(model_name, num_classes=len(classes), in_chans=in_chans,
                         **model_kwargs).to(device)
    opt = make_optimizer(settings["optimizer"], model.parameters(), settings["lr"],
                         settings["weight_decay"])
    try:
        scheduler = make_scheduler(schedule, opt, settings["epochs"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    train_loader = _loader(train_set, settings["batch_size"], True, workers, seed)
    test_loader = (_loader(test_set, 256, False, workers) if test_set is not None else None)

    log(f"training {model_name} on {source} ({len(train_set)} training images"
        f"{f', {len(test_set)} test images' if test_set is not None else ', no test set'}, "
        f"{len(classes)} classes, {_size(image_size)}) on {device}: "
        f"{settings['epochs']} epochs, batch {settings['batch_size']}, "
        f"{settings['optimizer']} lr {settings['lr']:g} weight decay "
        f"{settings['weight_decay']:g}, label smoothing {settings['label_smoothing']:g}, "
        f"{schedule} schedule")
    history = []
    start = time.perf_counter()
    for epoch in range(1, settings["epochs"] + 1):
        lr_now = opt.param_groups[0]["lr"]
        loss, train_error, images, seconds = _train_epoch(
            model, train_loader, opt, device, settings["label_smoothing"],
            f"epoch {epoch}/{settings['epochs']}", progress)
        scheduler.step()
        record = {"epoch": epoch, "lr": lr_now, "loss": loss, "train_top1_error": train_error,
                  "images_per_s": images / seconds}
        line = (f"epoch {epoch}/{settings['epochs']}  loss {loss:.4f}  "
                f"train top-1 error {100 * train_error:.2f}%")
        if test_loader is not None:
            result = measure(model, test_loader, device)
            record.update(test_loss=result["loss"], test_top1_error=result["top1_error"],
                          test_top5_error=result["top5_error"])
            line += (f"  test top-1 error {100 * result['top1_error']:.2f}% "
                     f"(top-5 {100 * result['top5_error']:.2f}%)")
        history.append(record)
        log(f"{line}  {images / seconds:,.0f} images/s  lr {lr_now:.3g}")
        save_checkpoint(out, model_name, model, model_kwargs=model_kwargs,
                        num_classes=len(classes), in_chans=in_chans, image_size=image_size,
                        epoch=epoch, optimizer=opt, scheduler=scheduler, data=source,
                        classes=classes, history=history)
    seconds = time.perf_counter() - start
    final = history[-1]
    summary = (f"test accuracy {100 * (1 - final['test_top1_error']):.2f}%"
               if "test_top1_error" in final else
               f"training top-1 error {100 * final['train_top1_error']:.2f}%")
    log(f"{summary} after {settings['epochs']} epochs in {seconds:.1f} s; "
        f"checkpoint saved to {out}")
    return {"checkpoint": out, "history": history, "seconds": seconds}


def evaluate(checkpoint, data=None, *, batch_size=256, device=None, model_name=None,
             workers=None, log=print):
    """Evaluates a checkpoint (a path, or a dict from load_checkpoint) on `data`: the path
    of an image folder (its val/ or test/ subfolder when it has one), or None for the test
    set of the data it was trained on (the digits' or the folder's). model_name, when
    given, must be the model the checkpoint is of. Logs and returns {"loss", "top1_error",
    "top5_error", "images"}. Raises UsageError for a file that is not a checkpoint (of
    model_name) or bad data."""
    path = checkpoint if not isinstance(checkpoint, dict) else "checkpoint"
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint, model_name)
    elif model_name is not None and checkpoint.get("model") != model_name:
        raise UsageError(f"the checkpoint is of {checkpoint.get('model')}, not {model_name}")
    model = model_from_checkpoint(checkpoint, path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if data is None and checkpoint["data"] != DIGITS:
        data = checkpoint["data"]
    train_set, test_set, classes, _ = load_data(data, checkpoint["image_size"],
                                                checkpoint["in_chans"])
    if len(classes) != checkpoint["num_classes"]:
        raise UsageError(f"{data!r} has {len(classes)} classes; the checkpoint's "
                         f"{checkpoint['model']} has {checkpoint['num_classes']}")
    if checkpoint.get("classes") is not None and list(classes) != list(checkpoint["classes"]):
        raise UsageError(f"{data!r} has the classes {list(classes)}; the checkpoint was "
                         f"trained on {list(checkpoint['classes'])}")
    dataset = test_set if test_set is not None else train_set
    result = measure(model.to(device), _loader(dataset, batch_size, False, workers), device)
    log(f"{checkpoint['model']} (epoch {checkpoint['epoch']}) on "
        f"{'the digits test set' if data is None else data}: "
        f"{result['images']} images, loss {result['loss']:.4f}, "
        f"top-1 error {100 * result['top1_error']:.2f}% "
        f"(accuracy {100 * (1 - result['top1_error']):.2f}%), "
        f"top-5 error {100 * result['top5_error']:.2f}%")
    return result
