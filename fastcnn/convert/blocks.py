"""Swaps by class: modules whose forward fastcnn knows and replaces whole, because what
they do (torchvision's DenseNet concatenating all features before every layer) is more
than a chain of calls; and single layers with a fastcnn drop-in (max-pool, LRN, global
average pooling), whose class becomes the drop-in's."""

import torch

from fastcnn import nn as fnn
from fastcnn.convert.fused import is_relu_module
from fastcnn.convert.rewrite import install_forward
from fastcnn.functional._into import has_forward_hooks
from fastcnn.functional.conv_bn_act import _fused_batch_norm


def _global(pool):
    return pool.output_size in (1, (1, 1), [1, 1])


def _compiled_as_torch(drop_in, torch_class):
    """drop_in, whose forward under torch.compile is torch_class's own: the compiler fuses
    PyTorch's op with its neighbours (the ReLU before a max-pool), which a fastcnn op,
    opaque to it, would stop."""
    def forward(self, input):
        if torch.compiler.is_compiling():
            return torch_class.forward(self, input)
        return drop_in.forward(self, input)
    return type(drop_in.__name__, (drop_in,), {
        "forward": forward, "__module__": __name__, "__qualname__": drop_in.__name__,
        "__doc__": f"fastcnn.nn.{drop_in.__name__}, as optimize swaps it in."})


MaxPool2d = _compiled_as_torch(fnn.MaxPool2d, torch.nn.MaxPool2d)
LocalResponseNorm = _compiled_as_torch(fnn.LocalResponseNorm, torch.nn.LocalResponseNorm)
GlobalAvgPool2d = _compiled_as_torch(fnn.GlobalAvgPool2d, torch.nn.AdaptiveAvgPool2d)

# exact class -> (fastcnn drop-in subclass of it, condition, attributes it adds)
LEAVES = {
    torch.nn.MaxPool2d: (MaxPool2d, None, {}),
    torch.nn.LocalResponseNorm: (LocalResponseNorm, None, {}),
    torch.nn.AdaptiveAvgPool2d: (GlobalAvgPool2d, _global, {"flatten": False}),
}


def swap_leaf(module):
    """Makes module its fastcnn drop-in in place; returns (source, target) or, for a module
    of a known class that is left, (None, reason); None for any other module."""
    entry = LEAVES.get(type(module))
    if entry is None:
        return None
    drop_in, condition, attributes = entry
    if condition is not None and not condition(module):
        return None, f"output_size {module.output_size} is not 1 (global pooling)"
    source = type(module).__name__
    module.__dict__["fastcnn_original_class"] = type(module)
    module.__dict__["fastcnn_added"] = tuple(attributes)
    module.__dict__.update(attributes)
    module.__class__ = drop_in
    return source, f"fastcnn.nn.{drop_in.__name__}"


def _plain_dense_layer(layer):
    """Why torchvision's _DenseLayer cannot run fastcnn's DenseLayer forward, or None."""
    for name in ("norm1", "norm2"):
        if not _fused_batch_norm(getattr(layer, name)):
            return f"{name} is a {type(getattr(layer, name)).__name__}, not a BatchNorm2d"
    for name in ("relu1", "relu2"):
        if not is_relu_module(getattr(layer, name)):
            return f"{name} is not a plain ReLU"
    for name in ("conv1", "conv2"):
        conv = getattr(layer, name)
        if type(conv).forward is not torch.nn.Conv2d.forward or has_forward_hooks(conv):
            return f"{name} is not a plain Conv2d"
    if any(has_forward_hooks(getattr(layer, n)) for n in ("norm1", "norm2")):
        return "a BatchNorm has forward hooks"
    return None


def _blocks():
    """torchvision classes -> (fastcnn forward, condition, target name)."""
    try:
        from torchvision.models import densenet
    except ImportError:
        return {}
    return {
        densenet._DenseLayer: (_eager_only(fnn.DenseLayer.forward), _plain_dense_layer,
                               "fastcnn.nn.DenseLayer (bn_relu_conv twice)"),
        densenet._DenseBlock: (_eager_only(fnn.DenseBlock.forward), lambda block: None,
                               "fastcnn.nn.DenseBlock (one feature buffer, no torch.cat)"),
    }


def _eager_only(forward):
    """forward, except under torch.compile, where the class's own forward runs: the
    compiler fuses PyTorch's composition itself, and fastcnn's ops are opaque to it."""
    def either(self, *args, **kwargs):
        if torch.compiler.is_compiling():
            return self.fastcnn_original_class.forward(self, *args, **kwargs)
        return forward(self, *args, **kwargs)
    return either


def swap_block(module, blocks):
    """Gives module fastcnn's forward for its class; (source, target), (None, reason) or
    None as swap_leaf."""
    entry = blocks.get(type(module))
    if entry is None:
        return None
    forward, condition, target = entry
    why = condition(module)
    if why is not None:
        return None, why
    source = type(module).__name__
    install_forward(module, forward)
    return source, target
