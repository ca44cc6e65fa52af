"""What the forwards rewritten by fastcnn.optimize call in place of a chain of modules.

Each function takes the chain's modules themselves, looked up on the model at every call,
so a module replaced after optimize (a BatchNorm made a SyncBatchNorm by
convert_sync_batchnorm, a ReLU swapped for another activation) runs as it is: the
fastcnn.functional ops run their own forward for a BatchNorm they do not stand in for, and
an activation that is no longer a ReLU runs after them. `act` is a module, "relu" (a
functional ReLU in the original forward) or None.

Under torch.compile each function is the original composition of PyTorch modules, which
the compiler fuses itself (into the convolution's epilogue, for one): a fastcnn op is
opaque to it and would stop that fusion.
"""

import torch

from fastcnn.functional import bn_relu, bn_relu_conv, conv_bn_relu
from fastcnn.functional._checks import kernels_take
from fastcnn.functional._into import has_forward_hooks
from fastcnn.functional.conv_bn_act import _batch_norm, _fused_batch_norm, batch_norm_act
from fastcnn.nn.concat import PendingOutput, begin_forward, write_concatenated


def is_relu_module(module):
    """Whether module is a torch.nn.ReLU that runs ReLU's own forward and no hooks."""
    return (isinstance(module, torch.nn.ReLU) and type(module).forward is torch.nn.ReLU.forward
            and not has_forward_hooks(module))


def _relu(act):
    return act == "relu" or is_relu_module(act)


def is_batch_norm_act(module):
    """Whether module is timm's BatchNormAct2d (BatchNorm2d's computation, then its `drop`
    and `act` submodules) with no dropout and no hooks: BatchNorm and its activation."""
    cls = type(module)
    return (cls.__name__ == "BatchNormAct2d" and cls.__module__ == "timm.layers.norm_act"
            and isinstance(module, torch.nn.BatchNorm2d)
            and isinstance(getattr(module, "drop", None), torch.nn.Identity)
            and isinstance(getattr(module, "act", None), torch.nn.Module)
            and not has_forward_hooks(module))


def _apply(act, y):
    return y if act is None else torch.relu(y) if act == "relu" else act(y)


def conv_bn_act(x, conv, bn, act=None, residual=None):
    """act(bn(conv(x)) + residual), residual optional: one fastcnn conv_bn_relu. For a
    timm BatchNormAct2d, bn's own activation follows BatchNorm (act and residual None)."""
    if torch.compiler.is_compiling():
        y = bn(conv(x))
        return _apply(act, y if residual is None else y + residual)
    if residual is None and act is None and is_batch_norm_act(bn):
        return _conv_batch_norm_act(x, conv, bn)
    if act is None or _relu(act):
        return conv_bn_relu(x, conv, bn, act is not None, residual)
    return act(conv_bn_relu(x, conv, bn, False, residual))


def _conv_batch_norm_act(x, conv, bn):
    """bn(conv(x)) for timm's BatchNormAct2d: BatchNorm2d's computation on the fastcnn
    kernels (the ReLU in the same pass), then any other activation."""
    y = conv(x)
    if not kernels_take(y) or y.numel() == 0:
        return bn(y)
    relu = _relu(bn.act)
    z = _batch_norm(y, bn, relu, None, None, True)
    return z if relu or isinstance(bn.act, torch.nn.Identity) else bn.act(z)


def bn_act(x, bn, act):
    """act(bn(x)): one fastcnn bn_relu."""
    if torch.compiler.is_compiling() or not _relu(act):
        return _apply(act, bn(x))
    return bn_relu(x, bn)


def bn_act_conv(x, bn, act, conv):
    """conv(act(bn(x))), DenseNet's and pre-activation ResNets' order: one fastcnn
    bn_relu_conv, which keeps only x for backward."""
    if torch.compiler.is_compiling() or not _relu(act):
        return conv(_apply(act, bn(x)))
    return bn_relu_conv(x, bn, conv)


def begin_conv_bn_act(x, conv, bn, act):
    """conv_bn_act(x, conv, bn, act) up to its last write, as a PendingOutput
    (InceptionConcat's protocol, fastcnn.nn.concat): the convolution now, BatchNorm and the
    ReLU when the output is written into its slice of a concatenation."""
    if (act is not None and not _relu(act)) or not _fused_batch_norm(bn):
        return PendingOutput.of(conv_bn_act(x, conv, bn, act))
    y = conv(x)
    return PendingOutput.like(
        y, lambda into: batch_norm_act(y, bn, act is not None, None, into, fresh=True))


def concat(dim, *parts):
    """torch.cat(outputs, dim) where each part is a tensor or a (module, input) pair whose
    output module(input) is written straight into its slice (fastcnn.nn.concat)."""
    if torch.compiler.is_compiling():  # the compiler plans the buffer itself
        return torch.cat([p[0](p[1]) if isinstance(p, tuple) else p for p in parts], dim)
    return write_concatenated([begin_forward(*p) if isinstance(p, tuple) else
                               PendingOutput.of(p) for p in parts], dim)
