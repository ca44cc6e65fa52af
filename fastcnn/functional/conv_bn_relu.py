"""conv_bn_relu: Conv2d -> BatchNorm2d (+ residual) -> ReLU with the numbers of the three
PyTorch modules, in fewer passes over memory.

Inference (the BatchNorm in eval mode): BatchNorm is folded into the convolution, whose
weight becomes W * gamma / sqrt(running_var + eps) and whose bias
beta + (b - running_mean) * gamma / sqrt(running_var + eps). The folded weights are cached
per (conv, bn) pair and refolded when any parameter or buffer changes. The convolution runs
without bias and one pass over its output adds the bias (and the residual) and applies the
ReLU in place (or, where an NCHW float32 CPU convolution runs in channels_last, writes
the NCHW result from the channels_last output). Float32 CPU calls without an NCHW residual,
and bfloat16 channels_last ones without a residual, run one oneDNN convolution whose
post-ops do that epilogue as it writes its output instead (_onednn_fusable); for NCHW
inputs the faster of that and the channels_last route is chosen per shape by measurement
(_cpu_inference). On the Triton backend a Triton
convolution with the epilogue fused may run instead, where it measured faster for the
shape (_inference_convolution_choice).

Training (the BatchNorm in training mode, or without running statistics): the convolution,
one pass for the batch statistics, one pass for normalisation + affine (+ residual)
(+ ReLU); backward one pass for the per-channel sums, one for the gradient of the
convolution's output (and of the residual), then the convolution's backward. On CPU,
NCHW convolutions run on a channels_last copy where one is open, and pointwise ones
choose per shape by measurement between that, GEMMs and oneDNN in NCHW (_training_way).
"""

import contextlib
import functools
import statistics
import time
import warnings
import weakref

import torch
import torch.nn.functional as F

from fastcnn import backends, ops
from fastcnn.functional._checks import check_feature_map
from fastcnn.kernels import reference
from fastcnn.ops.conv_bn_relu import stat_dtype


def _is_pointwise_gemm(x, weight, conv_args):
    """Whether conv(x) can run as a batched matrix product in a training step (the first of
    the ways _training_way measures): a 1x1 convolution with stride 1, no padding and one
    group, on a contiguous (NCHW) float32/float64 CPU tensor. There it is one GEMM per
    image over x's own memory, W (C_out, C_in) @ x[n] (C_in, H*W), which allocates nothing
    but its output, while oneDNN's NCHW convolution allocates buffers for reordered
    operands in every call: for (16, 256, 56, 56) 256->64 on a 2-core EPYC it faulted in 77
    MB of fresh pages per call under glibc's default malloc (which maps blocks over 32 MB
    anew each time) and took 26 ms against the GEMMs' 9-12 ms; where the allocator kept
    freed memory (MALLOC_MMAP_THRESHOLD_ raised) it took 7.8 ms against 9.5.

    In interleaved runs of training steps of ResNet-50's layer1 1x1 layers (256->64, and
    64->256 with the residual), the GEMMs reached 2.2x and 1.9x eager's speed under glibc's
    defaults against 1.0x and 1.5x with ATen's convolution, and 0.96x and 1.1x where memory
    was kept against 1.08x and 1.25x. Their inference was 0.7-0.9x eager's for 256->64 in
    the benchmark runs under either allocator (eager's convolution did not fault there), so
    inference keeps ATen's convolution and the in-place epilogue, never slower than
    eager's. Which way wins a training step depends on the allocator, so training steps
    measure them (_training_way): a probe of the allocator instead (the page faults of
    writing a freed 64 MB block again) was tried and dropped, as with freed memory kept the
    block was faulted in anew in some runs and not in others on these virtual machines.
    Channels_last and CUDA tensors keep ATen's convolution."""
    stride, padding, _, groups = conv_args
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and weight.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
            and groups == 1 and x.is_contiguous())


def _convolution(x, weight, conv_args, gemm=True):
    """conv2d(x, weight) without bias: ATen's convolution, or (with gemm) a GEMM for
    pointwise ones."""
    if gemm and _is_pointwise_gemm(x, weight, conv_args):
        # bmm, not matmul: matmul computes this product transposed and returns it in that
        # (channels_last-like) layout
        n, c_in, h, w = x.shape
        c_out = weight.shape[0]
        y = torch.bmm(weight.view(c_out, c_in).expand(n, c_out, c_in), x.view(n, c_in, h * w))
        return y.view(n, c_out, h, w)
    stride, padding, dilation, groups = conv_args
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)


# Set by force_conv_layout: True (channels_last), False (as given) or None (the rule, or
# the measurement).
_forced_layout = None


@contextlib.contextmanager
def force_conv_layout(channels_last):
    """Within the block, run the convolution of every eligible conv_bn_relu call (a
    training step, or inference without autograd) in channels_last (True) or in its
    input's layout (False) instead of by _training_way's or _cpu_inference's measurement
    (None): for tests, for timing either side, and for pinning one."""
    global _forced_layout
    previous, _forced_layout = _forced_layout, channels_last
    try:
        yield
    finally:
        _forced_layout = previous


def _copy_eligible(x):
    """Whether the convolution of x may run on a channels_last copy of it: an NCHW float32
    CPU input, outside what torch.compile traces."""
    return (x.device.type == "cpu" and x.dtype == torch.float32
            and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
            and not torch.compiler.is_compiling())


def _route_eligible(x, weight, conv_args):
    """Whether the convolution of an inference call may run on a channels_last copy of x
    (see _cpu_inference): _copy_eligible, and no pointwise convolution (whose NCHW oneDNN
    post-ops measured faster)."""
    return _copy_eligible(x) and not _is_pointwise_gemm(x, weight, conv_args)


def _training_ways(x, weight, conv_args, residual):
    """The ways the convolution of a training step can run, the default one first:
    "gemm" (a pointwise NCHW convolution as GEMMs, _is_pointwise_gemm), "route" (on a
    channels_last copy of an NCHW float32 input, _copy_eligible, without a residual:
    backward would read an NCHW residual beside channels_last tensors) and "direct"
    (ATen's convolution in x's layout)."""
    ways = ["gemm"] if _is_pointwise_gemm(x, weight, conv_args) else []
    if residual is None and _copy_eligible(x):
        ways.append("route")
    return (*ways, "direct")


def _training_way(x, weight, conv_args, residual, relu, measure):
    """How the convolution of this training step runs (_training_ways), and the
    _StepSample to time the step in while the ways are measured (else None).

    Unless force_conv_layout says (True: the route; False: x's layout, the GEMMs for a
    pointwise one), a pointwise convolution's step where gradients will flow (`measure`)
    takes the open ways in turn over its key's first steps (a _Trial of whole steps,
    forward and backward: _TRAINING_TRIAL), and the key keeps the fastest; other steps
    take the first way. The ways differ in rounding only.

    Which way wins a pointwise step depends on the allocator, by up to 2x (float32, batch
    16, interleaved medians of training steps against eager's, on a 2-core EPYC). For the
    1x1 256->64 on (16, 256, 56, 56) the GEMMs ran at 1.85-2.05x under glibc's default
    malloc (where oneDNN's NCHW convolution faults in fresh pages for its reorder buffers
    in every call), the route at 1.28x and ATen's NCHW convolution at 1.0x; with freed
    memory kept, the GEMMs ran at 0.85-0.98x, ATen's at 1.03-1.11x and the route at 1.18x.
    For the 1x1 64->256 with the identity, the GEMMs ran at 2.07x against ATen's 1.43x
    under the defaults, and 1.09x against 1.21x with memory kept. Other convolutions keep
    the route where it is open: oneDNN's NCHW convolution reorders its operands to and from
    a blocked layout in every call and runs a slower kernel on them, and the route was the
    faster for every 3x3 convolution we timed on both hosts (on the Xeon, 3x3 64->64
    backward took 34-44 ms against 59-79; on the EPYC 1.05-1.25x eager at 56 to 7 pixels
    against NCHW's 0.97-1.24x), by too little for five samples a way to tell apart on
    these hosts: measured, NCHW won the 3x3 64->64 in two of four benchmark runs, then
    ran at 0.90-0.96x eager. The route costs a copy of the input in forward (which
    backward keeps instead of x: in a chain of layers that holds as many activations as
    eager), the epilogue writing NCHW from channels_last, and in backward copies of the
    incoming gradient and of the input's gradient, all transposed by blocks in registers
    (about 1.2-1.7x the time of a plain copy of the tensor)."""
    ways = _training_ways(x, weight, conv_args, residual)
    if _forced_layout is not None:
        in_layout = "direct" if ways[0] == "route" else ways[0]
        return ("route" if _forced_layout and "route" in ways else in_layout), None
    if not measure or ways[0] != "gemm" or torch.compiler.is_compiling():
        return ways[0], None
    key = (*_convolution_key(x, weight, residual, conv_args, relu), x.requires_grad,
           weight.requires_grad, torch.get_num_threads())
    trial = _training_choices.get(key)
    if isinstance(trial, str):
        return trial, None
    if trial is None:
        trial = _training_choices[key] = _Trial(ways, **_TRAINING_TRIAL)
    way, timed = trial.next()
    if not timed:
        return way, None
    # parts: the forward, the training Function's backward, and on the route with x's
    # gradient wanted, the copy of that gradient back to NCHW
    parts = 3 if way == "route" and x.requires_grad else 2
    return way, _StepSample(key, trial, way, parts)


# The schedule of a training step's _Trial: 20 steps for two ways, 30 for three, each
# timed step after one of its own way. (Taken one step each in turn, oneDNN's NCHW
# convolution after the other ways' steps took 51-85 ms against 75-85 ms after its own,
# and won over the GEMMs, about 45 ms, in some benchmark runs under glibc's defaults.)
_TRAINING_TRIAL = dict(warmup=0, rounds=5, block=2)
# Pointwise NCHW CPU training steps (_training_way): per key, the way measured fastest,
# or the _Trial measuring them.
_training_choices = {}


class _StepSample:
    """The time of one measured training step, taken in parts (its forward, then its
    backward pieces), recorded in its _Trial as the last part ends; the key keeps the
    trial's winner once it has one. A step whose backward never runs records nothing."""

    def __init__(self, key, trial, way, parts):
        self.key, self.trial, self.way, self.parts = key, trial, way, parts
        self.seconds = 0.0

    def add(self, seconds):
        self.seconds += seconds
        self.parts -= 1
        if self.parts == 0:
            self.trial.record(self.way, self.seconds)
            winner = self.trial.fastest()
            if winner is not None and _training_choices.get(self.key) is self.trial:
                _training_choices[self.key] = winner


def _convolution_backward(grad_y, x, weight, conv_args, need_x, need_weight, gemm=True):
    """(dL/dx, dL/dweight) of _convolution (with the same gemm), each None where not
    needed."""
    if gemm and _is_pointwise_gemm(x, weight, conv_args):
        n, c_in, h, w = x.shape
        c_out = weight.shape[0]
        g3 = grad_y.reshape(n, c_out, h * w)
        x3 = x.view(n, c_in, h * w)
        grad_x = grad_weight = None
        if need_x:  # W^T @ g[n]
            grad_x = torch.bmm(weight.view(c_out, c_in).t().expand(n, c_in, c_out), g3)
            grad_x = grad_x.view_as(x)
        if need_weight:  # sum over n of g[n] @ x[n]^T
            grad_weight = torch.bmm(g3, x3.transpose(1, 2)).sum(0).view_as(weight)
        return grad_x, grad_weight
    stride, padding, dilation, groups = conv_args
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_y, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
        [need_x, need_weight, False])
    return grad_x, grad_weight


def _engine_will_run(node):
    """Whether the running backward pass will call the autograd node `node` (True where
    this PyTorch cannot tell)."""
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    return will_run is None or bool(will_run(node))


class ToChannelsLastFunction(torch.autograd.Function):
    """A channels_last copy of an NCHW x, whose gradient goes back NCHW (x's layout) rather
    than channels_last. The copies are the backend's convert_layout (the C++ one transposes
    by blocks in registers); differentiable twice over: with create_graph, backward copies
    with ATen, which autograd sees through. A measured step's copy back (sample, a
    _StepSample) is the last part of its time."""

    @staticmethod
    def forward(ctx, x, backend, sample):
        ctx.backend, ctx.sample = backend, sample
        return ops.convert_layout(x, True, backend)

    @staticmethod
    def backward(ctx, grad):
        begin = None if ctx.sample is None else time.perf_counter()
        if torch.is_grad_enabled():
            grad = grad.contiguous()
        elif not grad.is_contiguous():
            grad = ops.convert_layout(grad, False, ctx.backend)
        if begin is not None:
            ctx.sample.add(time.perf_counter() - begin)
        return grad, None, None


def _layout_of(t):
    """The memory format t is in (contiguous first, where t is both), or None."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def _scale_and_shift(mean, invstd, bn_weight, bn_bias):
    """The per-channel affine map of training-mode BatchNorm: gamma * (y - mean) * invstd +
    beta = y * scale + shift."""
    dtype = invstd.dtype
    scale = invstd if bn_weight is None else invstd * bn_weight.to(dtype)
    shift = -mean * scale if bn_bias is None else bn_bias.to(dtype) - mean * scale
    return scale, shift


class ConvBatchNormTrainingFunction(torch.autograd.Function):
    """Conv2d -> BatchNorm2d on the batch's statistics (+ residual) (-> ReLU).

    Outputs the activation and the batch's per-channel mean and biased variance (for the
    running statistics, which the caller updates)."""

    @staticmethod
    def forward(ctx, x, weight, conv_bias, bn_weight, bn_bias, residual, conv_args, eps, relu,
                way, sample, backend):
        # way (_training_way): on the "route", x is the channels_last copy of the caller's
        # NCHW input, and z is NCHW as that input was. sample: a measured step's time.
        nchw_output = way == "route"
        y = _convolution(x, weight, conv_args, gemm=way == "gemm")
        # A conv bias shifts y and its batch mean alike, so it cancels in the normalised
        # value: the convolution runs without it (the caller adds it to the running mean).
        mean, var = ops.batch_norm_stats(y, backend)
        invstd = torch.rsqrt(var + eps)
        scale, shift = _scale_and_shift(mean, invstd, bn_weight, bn_bias)
        z = ops.channel_affine_act(y, scale, shift, residual, relu, nchw_output, backend)
        # Saved: x and the weight (the convolution's backward needs them, as in eager), the
        # convolution output y, and per-channel vectors. Not saved: the normalised value and
        # the ReLU's output, which eager keeps; backward recomputes xhat and the ReLU mask
        # from y (and the residual, which the mask depends on: in a ResNet block it is the
        # block's input, saved by the block's first convolution anyway). scale and shift
        # are recomputed, bit for bit, from the vectors eager keeps too.
        ctx.save_for_backward(x, weight, y, residual if relu else None, mean, invstd,
                              bn_weight, bn_bias, conv_bias)
        ctx.conv_args, ctx.eps, ctx.relu, ctx.backend = conv_args, eps, relu, backend
        ctx.way, ctx.sample = way, sample
        ctx.mark_non_differentiable(mean, var)
        return z, mean, var

    @staticmethod
    def backward(ctx, grad_z, _grad_mean, _grad_var):
        if ctx.sample is None:  # (torch.compile traces no clock)
            return ConvBatchNormTrainingFunction._gradients(ctx, grad_z)
        begin = time.perf_counter()
        grads = ConvBatchNormTrainingFunction._gradients(ctx, grad_z)
        copy_back = ctx.saved_tensors[0].grad_fn if ctx.way == "route" else None
        if copy_back is not None and not _engine_will_run(copy_back):
            # x's gradient is not wanted in this backward (autograd.grad for the weights
            # only): no copy of it back to NCHW will end the step's time, so this part does
            ctx.sample.parts -= 1
        ctx.sample.add(time.perf_counter() - begin)
        return grads

    @staticmethod
    def _gradients(ctx, grad_z):
        x, weight, y, residual, mean, invstd, bn_weight, bn_bias, conv_bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = [None] * 12
        if need[2]:
            # The conv bias cancels in the normalised value: its gradient is exactly zero.
            grads[2] = torch.zeros_like(conv_bias)
        if need[5] and not ctx.relu:
            grads[5] = grad_z  # the residual is added last
        if torch.is_grad_enabled():
            # create_graph=True: second derivatives need a backward that autograd can see
            # through, so the forward is rebuilt from PyTorch ops and differentiated.
            inputs = {0: x, 1: weight, 3: bn_weight, 4: bn_bias, 5: residual}
            wanted = [i for i, t in inputs.items() if t is not None and need[i]]
            with torch.enable_grad():
                z = reference.conv_bn_relu_training(x, weight, bn_weight, bn_bias, residual,
                                                    ctx.conv_args, ctx.eps, ctx.relu)
                found = torch.autograd.grad(z, [inputs[i] for i in wanted], grad_z,
                                            create_graph=True, allow_unused=True)
            for i, g in zip(wanted, found):
                grads[i] = g
            return tuple(grads)
        if ctx.way == "route" and not grad_z.is_contiguous(memory_format=torch.channels_last):
            # the passes below read grad_z alongside y, channels_last
            grad_z = ops.convert_layout(grad_z, True, ctx.backend)
        scale, shift = _scale_and_shift(mean, invstd, bn_weight, bn_bias)
        sum_dz, sum_dz_xhat = ops.batch_norm_act_backward_reduce(
            grad_z, y, residual, scale, shift, mean, invstd, ctx.relu, ctx.backend)
        grad_residual_from_kernel = ctx.relu and need[5]
        grad_y, *grad_residual = ops.batch_norm_act_backward(
            grad_z, y, residual, scale, shift, mean, invstd, sum_dz, sum_dz_xhat, ctx.relu,
            grad_residual_from_kernel, ctx.backend)
        if grad_residual_from_kernel:
            grads[5] = grad_residual[0]
        grads[0], grads[1] = _convolution_backward(grad_y, x, weight, ctx.conv_args, need[0],
                                                   need[1], gemm=ctx.way == "gemm")
        if ctx.way == "route" and grads[1] is not None and _layout_of(weight) is not None:
            # the weight's gradient in the weight's layout (the convolution ran with x's)
            grads[1] = grads[1].contiguous(memory_format=_layout_of(weight))
        if need[3]:
            grads[3] = sum_dz_xhat.to(bn_weight.dtype)  # d/dgamma = sum dz * xhat
        if need[4]:
            grads[4] = sum_dz.to(bn_bias.dtype)  # d/dbeta = sum dz
        return tuple(grads)


class BiasActFunction(torch.autograd.Function):
    """act(y + bias_c (+ residual)) for the folded inference path when gradients are
    wanted (a BatchNorm frozen in eval mode while the rest trains)."""

    @staticmethod
    def forward(ctx, y, bias, residual, relu, backend):
        z = ops.channel_affine_act(y, None, bias, residual, relu, False, backend)
        # The output alone gives the ReLU mask (z > 0).
        ctx.save_for_backward(z if relu else None)
        ctx.relu = relu
        return z

    @staticmethod
    def backward(ctx, grad_z):
        (z,) = ctx.saved_tensors
        dz = torch.ops.aten.threshold_backward(grad_z, z, 0) if ctx.relu else grad_z
        need = ctx.needs_input_grad
        grad_bias = dz.sum(dim=(0, 2, 3), dtype=stat_dtype(dz.dtype)) if need[1] else None
        return dz, grad_bias, dz if need[2] else None, None, None


# Folded (weight, bias) per (conv, bn), with the key of the tensors they were folded from.
_folded_cache = weakref.WeakKeyDictionary()


def _fold(conv, bn):
    """The convolution weight and (float32/float64) bias with the BatchNorm (eval mode)
    folded in."""
    weight = conv.weight
    dtype = stat_dtype(weight.dtype)
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    bias = -bn.running_mean.to(dtype)
    if conv.bias is not None:
        bias = bias + conv.bias.to(dtype)
    bias = bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias.to(dtype)
    weight = (weight.to(dtype) * scale.view(-1, 1, 1, 1)).to(weight.dtype)
    return weight, bias


def _fold_key(conv, bn):
    """What the folded weights depend on: each tensor's identity, storage and version
    counter (bumped by every in-place change: optimizer steps, load_state_dict, ...), and
    eps; None when a tensor cannot be tracked (an inference tensor)."""
    key = [bn.eps]
    for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is None:
            key.append(None)
            continue
        if t.is_inference():
            return None
        key.append((id(t), t.data_ptr(), t._version, t.dtype, t.device))
    return tuple(key)


def _folded(conv, bn):
    """(weight, bias, packed): the folded weights, cached while nothing they were folded
    from changes, and the cache's dict for oneDNN-packed copies of that weight (see
    _packed_weight; None where the weights cannot be cached)."""
    if torch.compiler.is_compiling():
        # traced into the graph (torch.compile may constant-fold it)
        return (*_fold(conv, bn), None)
    key = _fold_key(conv, bn)
    cached = _folded_cache.get(conv)
    if key is not None and cached is not None and cached[0] == key and cached[1] is bn:
        return cached[2], cached[3], cached[4]
    with torch.no_grad():
        weight, bias = _fold(conv, bn)
    if key is None:
        return weight, bias, None
    packed = {}
    _folded_cache[conv] = (key, bn, weight, bias, packed)
    return weight, bias, packed


def _conv_args(conv):
    padding = conv.padding
    if padding == "valid":
        padding = (0, 0)
    return tuple(conv.stride), tuple(padding), tuple(conv.dilation), conv.groups


def _check_arguments(x, conv, bn, relu, residual):
    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a torch.nn.BatchNorm2d, got {type(bn).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv.padding_mode must be 'zeros', got {conv.padding_mode!r}")
    if conv.padding == "same":
        raise ValueError("conv.padding='same' is not supported; give the padding as numbers")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"bn.num_features ({bn.num_features}) must equal conv.out_channels "
                         f"({conv.out_channels})")
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__} {relu!r}")
    check_feature_map("x", x, min_dim=4)
    if x.dim() != 4:
        raise ValueError(f"x must have 4 dimensions (N, C, H, W), got a {x.dim()}-d tensor "
                         f"of shape {tuple(x.shape)}")
    if x.shape[1] != conv.in_channels:
        raise ValueError(f"x must have conv.in_channels = {conv.in_channels} channels, got "
                         f"{x.shape[1]} (shape {tuple(x.shape)})")
    if x.dtype != conv.weight.dtype:
        raise TypeError(f"x must have the dtype of conv.weight ({conv.weight.dtype}), got "
                        f"{x.dtype}")
    if residual is not None:
        check_feature_map("residual", residual, min_dim=4)
        expected = _output_shape(x, conv)
        if tuple(residual.shape) != expected:
            raise ValueError(f"residual must have the shape of the convolution's output "
                             f"{expected}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype or residual.device != x.device:
            raise TypeError(f"residual must have the dtype and device of x ({x.dtype}, "
                            f"{x.device}), got {residual.dtype} on {residual.device}")


def _output_shape(x, conv):
    """(N, C_out, H_out, W_out) of conv(x)."""
    return _convolution_output_shape(x, conv.weight.shape, _conv_args(conv))


def _convolution_output_shape(x, weight_shape, conv_args):
    """(N, C_out, H_out, W_out) of conv2d(x, weight of weight_shape, *conv_args)."""
    stride, padding, dilation, _ = conv_args
    spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in
               zip(x.shape[2:], weight_shape[2:], stride, padding, dilation)]
    return (x.shape[0], weight_shape[0], *spatial)


def _update_running_stats(bn, mean, var, count):
    """As nn.BatchNorm2d in training: the unbiased variance, and a momentum of
    1 / num_batches_tracked (a cumulative average) when bn.momentum is None."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            # a tensor, not float(...): no host sync, and torch.compile traces it
            factor = 1.0 / bn.num_batches_tracked.to(bn.running_mean.dtype)
        else:
            factor = bn.momentum
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype) * factor)
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype) * factor)


def _wants_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def conv_bn_relu(x, conv, bn, relu=True, residual=None):
    """relu(bn(conv(x)) + residual) for existing torch.nn.Conv2d and torch.nn.BatchNorm2d
    modules, with their numbers: batch statistics (and running-statistics updates) when bn
    is in training mode, the running statistics (folded into the convolution) in eval mode.

    relu=False leaves out the ReLU; residual (the convolution output's shape) is added
    before it. Any stride, padding, dilation and groups; a conv bias or not.
    """
    _check_arguments(x, conv, bn, relu, residual)
    backend = backends.select("conv_bn_relu", x)
    conv_args = _conv_args(conv)
    use_batch_stats = bn.training or bn.running_mean is None or bn.running_var is None
    if use_batch_stats:
        n, _, h, w = _output_shape(x, conv)
        count = n * h * w
        if count <= 1 and bn.training:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"convolution output of shape {_output_shape(x, conv)}")
        z, mean, var = _training(x, conv, bn, relu, residual, conv_args, backend)
        if bn.training and bn.track_running_stats:
            if conv.bias is not None:
                mean = mean + conv.bias.detach().to(mean.dtype)
            _update_running_stats(bn, mean, var, count)
        return z
    if _wants_grad(x, conv.weight, conv.bias, bn.weight, bn.bias, residual):
        weight, bias = _fold(conv, bn)
        y = _convolution(x, weight, conv_args)
        return BiasActFunction.apply(y, bias, residual, relu, backend)
    weight, bias, packed = _folded(conv, bn)
    if _triton_convolution_eligible(x, weight, conv_args, backend):
        choice = _inference_convolution_choice(x, weight, bias, residual, conv_args, relu)
        if choice != "vendor":
            return _triton_convolution(x, weight, bias, residual, conv_args, relu, choice)
    return _cpu_inference(x, weight, bias, residual, conv_args, relu, packed, backend)


def _epilogue_inference(x, weight, bias, residual, conv_args, relu, packed, backend):
    """ATen's convolution, then the epilogue in place over its output."""
    y = _convolution(x, weight, conv_args, gemm=False)
    ops.channel_affine_act_(y, None, bias, residual, relu, backend)
    return y


def _route_inference(x, weight, bias, residual, conv_args, relu, packed, backend):
    """The convolution on a channels_last copy of NCHW x; the epilogue writes the NCHW
    output from the channels_last one, reading the residual as it is."""
    y = _convolution(ops.convert_layout(x, True, backend), weight, conv_args)
    return ops.channel_affine_act(y, None, bias, residual, relu, True, backend)


def _direct_inference(x, residual, backend):
    """The implementation of an inference call in x's own layout."""
    if _onednn_fusable(x, residual, backend):
        return _onednn_convolution
    return _epilogue_inference


# NCHW float32 CPU inference whose convolution may run on a channels_last copy
# (_route_eligible): per key of _cpu_inference_key, "route" or "direct" (the call in x's
# layout), whichever measured faster, or the _Trial measuring them.
_cpu_inference_choices = {}


class _Trial:
    """Measures implementations on the calls they serve: in each round, each of `names`
    in turn gets `block` calls in a row, the order reversed every other round so that a
    drifting machine and the allocator's state after the previous call weigh on all alike;
    the first `warmup` rounds are untimed (oneDNN creates its primitives there, and the
    allocator settles), and in the next `rounds` the last call of each block is timed
    (after block - 1 calls that leave the allocator as the name's own calls do, which is
    what it will find once chosen). Then the lowest median wins. (Single timings on these
    shared hosts move by 10-20%, interleaved medians by a few percent; timings in the first
    call of a process, before the allocator settled, ranked the two in reverse of their
    later order in some runs, hence the warm-up and the real calls.)"""

    def __init__(self, names, warmup=2, rounds=5, block=1):
        self.names, self.warmup, self.rounds, self.block = tuple(names), warmup, rounds, block
        self.calls = 0
        self.samples = {name: [] for name in self.names}

    def next(self):
        """The name to run on this call, and whether to time it."""
        round_, position = divmod(self.calls, len(self.names) * self.block)
        self.calls += 1
        names = self.names if round_ % 2 == 0 else self.names[::-1]
        index, call = divmod(position, self.block)
        return names[index], round_ >= self.warmup and call == self.block - 1

    def record(self, name, seconds):
        self.samples[name].append(seconds)

    def fastest(self):
        """The winner once every name has its rounds' samples, else None (a training step's
        sample comes in with its backward, after later calls may have begun)."""
        if any(len(samples) < self.rounds for samples in self.samples.values()):
            return None
        return min(self.names, key=lambda name: statistics.median(self.samples[name]))


def _cpu_inference_key(x, weight, residual, conv_args, relu, direct):
    return (*_convolution_key(x, weight, residual, conv_args, relu), direct.__name__,
            torch.get_num_threads())


def _cpu_inference(x, weight, bias, residual, conv_args, relu, packed, backend):
    """A CPU inference call (no autograd): for NCHW float32 inputs whose convolution may
    run on a channels_last copy (_route_eligible), the faster of that route and the call
    in x's layout (oneDNN's post-ops, or without them ATen's convolution and the epilogue)
    as measured on the first calls of each shape (_Trial: 14 calls) on the C++ backend,
    unless force_conv_layout says which; every other call in its own layout.

    Which is faster depends on the host and the shape, by a few percent to tens of
    percent either way, so no fixed rule held on both hosts we timed (float32, batch 16,
    medians of interleaved calls). On the 2-core Xeon (AVX-512) of the benchmarks the
    oneDNN post-ops on NCHW were 1.10-1.19x eager for 3x3 64->64 at 56 pixels against the
    route's 1.11-1.21x under glibc's default malloc and 1.14-1.15x against 1.03-1.05x with
    freed memory kept, while the route led at 28 pixels (128 channels, 1.07-1.10x against
    1.03-1.06x) and lost at 7 (512 channels, 0.83x against 1.00x). On a 2-core EPYC
    (Zen 5) the route ran at 1.04-1.23x at 56 pixels, and the NCHW post-ops at 0.7-1.24x
    under glibc's default malloc, where oneDNN's NCHW reorder buffers are at times fresh
    pages. The outputs of the two differ by rounding only: while a shape is measured,
    repeated calls may differ in the last bits; after, a process keeps its choice."""
    direct = _direct_inference(x, residual, backend)
    args = (x, weight, bias, residual, conv_args, relu, packed, backend)
    route = _forced_layout if _route_eligible(x, weight, conv_args) else False
    if route is None and backend != "cpp":
        route = False  # Triton's interpreter or the reference: nothing to measure
    if route is not None:
        return (_route_inference if route else direct)(*args)
    key = _cpu_inference_key(x, weight, residual, conv_args, relu, direct)
    trial = _cpu_inference_choices.get(key)
    if isinstance(trial, str):
        return (_route_inference if trial == "route" else direct)(*args)
    if trial is None:
        trial = _cpu_inference_choices[key] = _Trial(("route", "direct"))
    name, timed = trial.next()
    begin = time.perf_counter()
    z = (_route_inference if name == "route" else direct)(*args)
    if timed:
        trial.record(name, time.perf_counter() - begin)
        winner = trial.fastest()
        if winner is not None:
            _cpu_inference_choices[key] = winner
    return z


def _is_channels_last(t):
    """Whether t is channels_last and not NCHW-contiguous as well."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _onednn_fusable(x, residual, backend):
    """Whether this CPU inference call (no autograd), unless it takes the channels_last
    route (_cpu_inference), runs as one oneDNN convolution with the bias, the
    residual and the ReLU applied by its post-ops as it writes its output, instead of the
    convolution followed by the C++ epilogue's pass over the output: a float32 input in
    NCHW or channels_last with no residual or one as channels_last as x, or a bfloat16
    channels_last input with no residual where oneDNN runs bfloat16 (_onednn_bf16), while
    oneDNN is available and enabled (as eager's convolution would use it).

    In interleaved runs on a 2-core EPYC (batch 16; glibc's default malloc, and freed
    memory kept), the post-ops were as fast as or faster than the C++ epilogue on every
    float32 channels_last shape of ResNet-50 we timed: 1.06-1.11x eager for 3x3 64->64 at
    56 pixels against 1.04-1.09x, 1.03-1.06x against 1.00-1.02x for 3x3 convolutions at 28
    to 7 pixels, 1.13-1.45x against 1.05-1.36x for the 1x1 256->64. For NCHW inputs they
    beat the epilogue after oneDNN's NCHW convolution (1x1 256->64: 1.07-1.12x against
    1.04-1.08x), and beat the channels_last route under freed memory kept (3x3 64->64:
    1.08-1.12x against 1.03-1.06x), but under glibc's defaults, where oneDNN's NCHW
    reorder buffers are at times fresh pages, they ran at 0.7-1.24x eager in the benchmark
    harness against the route's 1.04-1.23x (_cpu_inference measures which). With a residual
    (the "add" post-op) they were level with the epilogue in channels_last (1.08-1.17x
    against 1.07-1.08x at 7 pixels, where the packed weight of _packed_weight counts
    most), but NCHW 3x3 64->64 ran at 0.83x eager in two of four runs under glibc's
    defaults, against the epilogue's 1.03-1.09x: NCHW residuals keep the epilogue.

    bfloat16 channels_last on the 2-core Xeon (AMX; batch 16, interleaved medians): the
    post-ops ran at 3.0x eager for 3x3 64->64 at 56 pixels against the epilogue's 1.7x,
    2.1x against 1.4x for the 1x1 256->64, 1.4-1.5x against 1.0-1.2x for 3x3 convolutions at
    28 and 7 pixels; their bias stays float32 until the output is rounded. A bfloat16
    residual keeps the epilogue: the "add" post-op takes a bfloat16 bias only, and for
    grouped convolutions ATen's fallback behind it failed an internal assert (add_relu
    lacks bfloat16). NCHW bfloat16 keeps it too (oneDNN's NCHW bfloat16 path failed an
    internal assert on an earlier host), as do float16 (oneDNN's float16 convolution ran
    at a tenth of bfloat16's speed here) and float64 (oneDNN lacks it)."""
    return (not torch.compiler.is_compiling()  # first: torch.compile traces no further
            and backend == "cpp" and x.device.type == "cpu"
            and (x.dtype == torch.float32
                 or (x.dtype == torch.bfloat16 and _is_channels_last(x) and residual is None
                     and _onednn_bf16()))
            and x.numel() > 0 and _layout_of(x) is not None
            and (residual is None or (_is_channels_last(x) and _is_channels_last(residual)))
            and _onednn_post_ops is not None and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


# The oneDNN convolutions with post-ops of ATen's mkldnn library (None where absent).
_onednn_post_ops = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


@functools.cache
def _onednn_bf16():
    """Whether oneDNN runs bfloat16 convolutions on this CPU (as ATen's own check says)."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    return check is not None and bool(check())


# Packed copies kept per folded weight, one per input shape.
_MAX_PACKED_SHAPES = 8


def _packed_weight(weight, x, conv_args, packed):
    """The folded weight for oneDNN: for a channels_last input, a copy in the blocked
    layout oneDNN chose for x's shape, made once per shape (`packed`, the fold cache's
    dict) instead of being reordered in every call. In the runs of _onednn_fusable it
    was level with the plain weight at 56 to 14 pixels and 1.13-1.33x faster at 7 (512
    and 2048 channels), but 0.91-0.99x for NCHW 1x1 convolutions, which take the plain
    weight."""
    if packed is None or not _is_channels_last(x):
        return weight
    stride, padding, dilation, groups = conv_args
    key = (tuple(x.shape), conv_args)
    found = packed.get(key)
    if found is None:
        if len(packed) >= _MAX_PACKED_SHAPES:
            packed.clear()
        found = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.contiguous().to_mkldnn(), list(padding), list(stride), list(dilation),
            groups, list(x.shape))
        packed[key] = found
    return found


def _onednn_convolution(x, weight, bias, residual, conv_args, relu, packed, backend=None):
    """act(conv2d(x, weight) + bias (+ residual)) by one oneDNN convolution with post-ops,
    in the layout eager's convolution would give (backend, unused, as the other inference
    implementations take it)."""
    stride, padding, dilation, groups = conv_args
    args = (list(padding), list(stride), list(dilation), groups)
    weight = _packed_weight(weight, x, conv_args, packed)
    if residual is None:  # a float32 bias, added before the output is rounded to x's dtype
        return _onednn_post_ops(x, weight, bias, *args, "relu" if relu else "none", [], None)
    return _onednn_post_ops.binary(x, residual, weight, bias, *args, "add", 1.0,
                                   "relu" if relu else None, [], None)


# The inference convolution on the Triton backend (CUDA): per key of _convolution_key, the
# implementation measured fastest for it: "vendor" (ATen's convolution, then the epilogue
# kernel over its output) or the index of a configuration of the Triton convolution with
# the epilogue fused (fastcnn.kernels.triton.conv.CONFIGS).
_convolution_choices = {}
# Set by force_inference_convolution: "vendor", a CONFIGS index, or None (measure).
_forced_convolution = None


@contextlib.contextmanager
def force_inference_convolution(choice):
    """Within the block, eligible inference calls on the Triton backend run `choice` (see
    _convolution_choices) instead of the measured choice: for tests, and for timing."""
    global _forced_convolution
    previous, _forced_convolution = _forced_convolution, choice
    try:
        yield
    finally:
        _forced_convolution = previous


def _triton_convolution_eligible(x, weight, conv_args, backend):
    """Whether the Triton convolution can run this inference call: the Triton backend, a
    dtype that tl.dot takes, one group; not while torch.compile traces (the graph keeps
    ATen's convolution there). On a CPU tensor (Triton's interpreter) only when forced."""
    return (backend == "triton" and conv_args[3] == 1
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and (x.is_cuda or _forced_convolution is not None)
            and not torch.compiler.is_compiling())


def _convolution_key(x, weight, residual, conv_args, relu):
    return (x.device, x.dtype, tuple(x.shape), x.stride(), tuple(weight.shape), weight.stride(),
            conv_args, None if residual is None else residual.stride(), relu)


def _inference_convolution_choice(x, weight, bias, residual, conv_args, relu):
    if _forced_convolution is not None:
        return _forced_convolution
    key = _convolution_key(x, weight, residual, conv_args, relu)
    choice = _convolution_choices.get(key)
    if choice is None:
        choice = _measure_inference_convolutions(x, weight, bias, residual, conv_args, relu)
        _convolution_choices[key] = choice
    return choice


def _measure_inference_convolutions(x, weight, bias, residual, conv_args, relu):
    """The fastest of the vendor's convolution + epilogue and each Triton configuration on
    these very tensors (each timed after a first, compiling, call).

    A configuration is left out where it cannot run on this GPU (OutOfResources: too big
    for its shared memory), and, with a warning, where it fails otherwise (compiling or
    launching) or its output differs from the vendor's by more than rounding
    (_INFERENCE_CHECK_TOLERANCE): the Triton convolution is tested through the interpreter
    and compiled for sm_80 and sm_90, but has not run on a GPU yet, and a fault there must
    cost the shape its speed-up, not its result."""
    from triton.runtime.errors import OutOfResources

    from fastcnn.kernels.triton import conv as triton_conv

    def vendor():
        y = _convolution(x, weight, conv_args)
        ops.channel_affine_act_(y, None, bias, residual, relu, "triton")
        return y

    expected = vendor()
    times = {"vendor": _time_ms(vendor, x.device)}
    for index in range(len(triton_conv.CONFIGS)):
        def run(index=index):
            return _triton_convolution(x, weight, bias, residual, conv_args, relu, index)

        try:
            found = run()
        except OutOfResources:  # a configuration too big for this GPU: not chosen
            continue
        except Exception as error:  # any fault: the vendor's path and the others remain
            _warn_configuration_left_out(index, f"it failed: {type(error).__name__}: {error}")
            continue
        if not _agrees(found, expected):
            _warn_configuration_left_out(index, "its output differed from the vendor "
                                         "convolution's beyond rounding")
            continue
        times[index] = _time_ms(run, x.device)
    return min(times, key=times.get)


# Largest difference between the Triton convolution's output and the vendor's accepted by
# the check of _measure_inference_convolutions, in units of the largest |output|: above
# bfloat16's rounding and TF32's (cuDNN's default for float32), far below a wrong index.
_INFERENCE_CHECK_TOLERANCE = 2e-2


def _agrees(found, expected):
    """Whether found and expected agree to _INFERENCE_CHECK_TOLERANCE (NaN where both are)."""
    scale = expected.float().abs().nan_to_num(posinf=0.0).amax() if expected.numel() else 0.0
    return torch.allclose(found.float(), expected.float(), rtol=0.0,
                          atol=_INFERENCE_CHECK_TOLERANCE * float(scale), equal_nan=True)


def _warn_configuration_left_out(index, why):
    from fastcnn.kernels.triton.conv import CONFIGS

    warnings.warn(f"fastcnn: conv_bn_relu inference leaves out the Triton convolution's "
                  f"configuration {index} {CONFIGS[index]} for this shape: {why}; the others "
                  f"and the vendor's convolution remain", RuntimeWarning, stacklevel=2)


def _time_ms(run, device, repeats=5):
    """Milliseconds per call of run() on a CUDA device, after one call not timed."""
    run()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def _triton_convolution(x, weight, bias, residual, conv_args, relu, config_index):
    """act(conv2d(x, weight) + bias (+ residual)) by the Triton kernel, in x's layout."""
    from fastcnn.kernels.triton import conv as triton_conv

    stride, padding, dilation, _ = conv_args
    output = torch.empty(_convolution_output_shape(x, weight.shape, conv_args), dtype=x.dtype,
                         device=x.device, memory_format=_layout_of(x) or torch.contiguous_format)
    triton_conv.conv2d_bias_act(x, weight, bias, residual, output, stride, padding, dilation,
                                relu, triton_conv.CONFIGS[config_index])
    return output


def _training(x, conv, bn, relu, residual, conv_args, backend):
    if residual is x:
        # torch.compile cannot trace one tensor given twice to an autograd.Function
        residual = residual.view_as(residual)
    measure = backend == "cpp" and _wants_grad(x, conv.weight, conv.bias, bn.weight, bn.bias,
                                               residual)
    way, sample = _training_way(x, conv.weight, conv_args, residual, relu, measure)
    begin = None if sample is None else time.perf_counter()
    if way == "route":
        # The copy is an autograd step of its own: the training Function saves it as its
        # input (so backward keeps the copy, not x, and second derivatives flow through
        # it to x), and x's gradient comes back NCHW.
        x = ToChannelsLastFunction.apply(x, backend, sample)
    outputs = ConvBatchNormTrainingFunction.apply(
        x, conv.weight, conv.bias, bn.weight, bn.bias, residual, conv_args, bn.eps, relu, way,
        sample, backend)
    if sample is not None:
        sample.add(time.perf_counter() - begin)
    return outputs
