"""fastcnn.optimize(model): the fastcnn layers swapped into a model that exists already
(torchvision's, timm's, a user's), with the same outputs, state_dict keys and parameters.

Three kinds of swap, none of which adds, removes or renames a parameter or buffer:
- a layer with a fastcnn drop-in (nn.MaxPool2d, nn.LocalResponseNorm,
  nn.AdaptiveAvgPool2d(1)) gets the drop-in's class, a subclass of its own;
- a module whose forward fastcnn knows whole (torchvision's DenseNet blocks) gets
  fastcnn's forward;
- any other module whose forward calls Conv -> BatchNorm -> (+ residual and/or ReLU),
  BatchNorm -> ReLU (-> Conv), or torch.cat of its submodules' outputs gets that forward
  rewritten with torch.fx, each chain one fastcnn op (fastcnn.convert.rewrite).
Only the given model changes: classes are swapped per instance, nothing is patched
globally, and fastcnn.restore(model) puts every original class back.
"""

import copy

import torch

from fastcnn.convert import blocks as _blocks
from fastcnn.convert.report import Left, OptimizeReport, Swap
from fastcnn.convert.rewrite import rewrite

__all__ = ["OptimizeReport", "optimize", "restore"]


def _ours(module):
    return type(module).__module__.split(".")[0] == "fastcnn"


def _modes(training):
    if training is None:
        return (True, False)
    if not isinstance(training, bool):
        raise TypeError(f"training must be None (both modes), True or False, got {training!r}")
    return (training,)


def _has_batch_norm_child(module):
    return any(isinstance(c, torch.nn.modules.batchnorm._BatchNorm) for c in module.children())


def _may_concatenate(module):
    """Whether module's own forward may join its submodules' outputs (an Inception
    module's torch.cat): a forward of its own over submodules, other than Sequential's."""
    forward = type(module).forward
    return (next(module.children(), None) is not None and not isinstance(
        module, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict,
                 torch.nn.modules.batchnorm._BatchNorm))
        and forward is not torch.nn.Module.forward)


def optimize(model, inplace=False, training=None, example_input=None):
    """model with fastcnn's layers and fused ops swapped in: the same outputs (within
    float rounding), state_dict keys and shapes, in training and eval mode.

    inplace=False converts a deep copy and leaves model alone; inplace=True converts model
    itself (its parameters stay the same tensors) and fastcnn.restore(model) undoes it.
    training=True or False rewrites forwards for that mode only (the other runs the
    original code); None, both. With example_input, the model runs on it in eval mode
    before and after conversion, and a difference beyond float rounding raises (and
    leaves model as it was). The returned model's `fastcnn_report` lists every swap and
    every chain left, with the reason.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    modes = _modes(training)
    if not inplace:
        model = copy.deepcopy(model)
    expected = None if example_input is None else _run_eval(model, example_input)
    report = OptimizeReport()
    known = _blocks._blocks()
    skip = set()
    for path, module in model.named_modules(remove_duplicate=True):
        if any(path == p or path.startswith(p + ".") for p in skip):
            continue
        if _ours(module) or hasattr(module, "fastcnn_original_class"):
            skip.add(path)  # fastcnn's own layers, or converted already
            continue
        done = _blocks.swap_block(module, known) or _blocks.swap_leaf(module)
        if done is not None:
            source, target = done
            if source is None:
                report.left.append(Left(path, type(module).__name__, target))
            else:
                report.swapped.append(Swap(path, source, target))
                if type(module).__name__ != "_DenseBlock":
                    skip.add(path)
            continue
        chains = _has_batch_norm_child(module)
        if chains or _may_concatenate(module):
            swaps, left = rewrite(module, modes)
            report.swapped += [Swap(path, s, t) for s, t in swaps]
            # a module fx cannot trace is worth a line when it holds a chain
            report.left += [Left(_join(path, sub), what, why) for sub, what, why in left
                            if sub or chains]
    model.fastcnn_report = report
    if expected is not None:
        _check(model, example_input, expected)
    return model


def _join(path, name):
    return f"{path}.{name}" if path and name else path or name


def restore(model):
    """Undoes fastcnn.optimize on model in place (every swapped module gets its class back);
    returns model."""
    for module in model.modules():
        original = getattr(module, "fastcnn_original_class", None)
        if original is None:
            continue
        for name in module.__dict__.pop("fastcnn_added", ()):
            module.__dict__.pop(name, None)
        module.__dict__.pop("fastcnn_original_class", None)
        module.__class__ = original
    model.__dict__.pop("fastcnn_report", None)
    return model


def _tensors(output):
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for o in output for t in _tensors(o)]
    return []


def _run_eval(model, example_input):
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            return [t.detach().clone() for t in _tensors(model(*args))]
    finally:
        for m, mode in modes.items():
            m.training = mode


def _check(model, example_input, expected):
    got = _run_eval(model, example_input)
    for i, (a, b) in enumerate(zip(got, expected)):
        tolerance = 1e-2 if b.dtype in (torch.float16, torch.bfloat16) else 1e-3
        if b.is_floating_point():
            scale = b.abs().max().item() if b.numel() else 0.0
            worst = (a - b).abs().max().item() if b.numel() else 0.0
            ok = a.shape == b.shape and worst <= tolerance * scale + 1e-5
        else:
            ok = torch.equal(a, b)
        if not ok:
            restore(model)
            raise RuntimeError(
                f"fastcnn.optimize: output {i} of the converted model differs from the "
                f"original's on example_input (largest difference "
                f"{(a - b).abs().max().item() if a.shape == b.shape else 'shape'}); the "
                f"model was left unconverted. Please report it with the model's code.")
