"""A direct 2-d convolution with the inference epilogue of conv_bn_relu fused, as one Triton
kernel (an implicit GEMM: the input patches are never written out):

    out[n, co, oh, ow] = act(sum_{c, kh, kw} x[n, c, ih, iw] * w[co, c, kh, kw] + bias[co]
                             (+ residual[n, co, oh, ow]))
    ih = oh * stride_h - pad_h + kh * dil_h,  iw = ow * stride_w - pad_w + kw * dil_w

As a matrix product: M = N * H_out * W_out output positions, C_out columns, and
K = C_in * KH * KW terms each. A program owns a BLOCK_M x BLOCK_N tile of the output; for
every tap (kh, kw) of the filter it walks the input channels BLOCK_K at a time,
loading a BLOCK_M x BLOCK_K tile of shifted input (zero outside the image: the padding)
and a BLOCK_K x BLOCK_N tile of the weight, and accumulates their product in float32
(tl.dot; float32 inputs in IEEE precision, no TF32). The epilogue adds the bias and the
residual and applies the ReLU on the accumulator before the one store. Strides are
arguments: NCHW and channels_last input, weight, residual and output all run as they are.

One group only (ResNeXt's and depthwise convolutions stay with the vendor's). Whether this
kernel or the vendor's convolution followed by the epilogue kernel runs is measured per
shape (fastcnn.functional.conv_bn_relu's cached choice).
"""

import torch
import triton
import triton.language as tl

from fastcnn.kernels.triton._common import on_device_of

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried per shape; BLOCK_N is capped at
# the output channels rounded up to a power of two (and at least 16, tl.dot's minimum).
CONFIGS = (
    (128, 64, 32, 4, 3),
    (64, 128, 32, 4, 3),
    (128, 128, 32, 8, 3),
    (64, 64, 32, 4, 4),
)


@triton.jit
def _conv2d_bias_act_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,  # (C_out,) float32
    r_ptr,  # residual, read when HAS_RESIDUAL
    out_ptr,
    # shapes
    C_in,
    H,
    W,
    C_out,
    H_out,
    W_out,
    M,  # N * H_out * W_out
    # convolution
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    # strides, in elements
    x_stride_n,
    x_stride_c,
    x_stride_h,
    x_stride_w,
    w_stride_o,
    w_stride_c,
    w_stride_h,
    w_stride_w,
    r_stride_n,
    r_stride_c,
    r_stride_h,
    r_stride_w,
    out_stride_n,
    out_stride_c,
    out_stride_h,
    out_stride_w,
    # compile-time options
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr,
    IEEE: tl.constexpr,  # float32 inputs: full-precision products (no TF32)
    # Triton's interpreter (CPU tensors) multiplies bfloat16 tiles wrongly (its tl.dot reads
    # them as other bits): there they are widened to float32 first, which gives the same
    # products (a product of two bfloat16 values is exact in float32).
    WIDEN: tl.constexpr,
    # tiling
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    positions = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    channels = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = positions < M
    n_mask = channels < C_out
    per_image = H_out * W_out
    image = (positions // per_image).to(tl.int64)
    oh = (positions % per_image) // W_out
    ow = positions % W_out
    k_range = tl.arange(0, BLOCK_K)
    co64 = channels.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # the taps in a loop, not unrolled: a 7x7 filter would make the kernel 49 times larger
    # (and its compilation minutes long)
    for tap in range(KH * KW):
        kh = tap // KW
        kw = tap % KW
        ih = oh * stride_h - pad_h + kh * dil_h
        iw = ow * stride_w - pad_w + kw * dil_w
        inside = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_rows = (x_ptr + image * x_stride_n + ih.to(tl.int64) * x_stride_h +
                  iw.to(tl.int64) * x_stride_w)
        w_cols = w_ptr + co64 * w_stride_o + kh * w_stride_h + kw * w_stride_w
        for c0 in range(0, C_in, BLOCK_K):
            c = c0 + k_range
            c_mask = c < C_in
            c64 = c.to(tl.int64)
            a = tl.load(x_rows[:, None] + c64[None, :] * x_stride_c,
                        mask=inside[:, None] & c_mask[None, :], other=0.0)
            b = tl.load(w_cols[None, :] + c64[:, None] * w_stride_c,
                        mask=c_mask[:, None] & n_mask[None, :], other=0.0)
            if WIDEN:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE or WIDEN:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
    acc += tl.load(bias_ptr + channels, mask=n_mask, other=0.0)[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    oh64 = oh.to(tl.int64)[:, None]
    ow64 = ow.to(tl.int64)[:, None]
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + image[:, None] * r_stride_n + co64[None, :] * r_stride_c +
                    oh64 * r_stride_h + ow64 * r_stride_w, mask=mask, other=0.0)
        acc += r.to(tl.float32)
    if RELU:
        acc = tl.where(acc <= 0, 0.0, acc)  # NaN stays NaN, as torch.relu
    out_ptrs = (out_ptr + image[:, None] * out_stride_n + co64[None, :] * out_stride_c +
                oh64 * out_stride_h + ow64 * out_stride_w)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def block_sizes(config, c_out):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of a CONFIGS entry for C_out
    output channels."""
    block_m, block_n, block_k, warps, stages = config
    return block_m, min(block_n, max(16, triton.next_power_of_2(c_out))), block_k, warps, stages


def conv2d_bias_act(x, weight, bias, residual, output, stride, padding, dilation, relu,
                    config=CONFIGS[0]):
    """output = act(conv2d(x, weight) + bias (+ residual)) for (N, C, H, W) tensors of one
    dtype (float16, bfloat16 or float32) and one group; bias (C_out,) float32."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    _, _, h_out, w_out = output.shape
    block_m, block_n, block_k, warps, stages = block_sizes(config, c_out)
    m = n * h_out * w_out
    if m == 0:
        return
    r = residual if residual is not None else output
    grid = (triton.cdiv(m, block_m), triton.cdiv(c_out, block_n))
    with on_device_of(x):
        _conv2d_bias_act_kernel[grid](
            x, weight, bias, r, output,
            c_in, h, w, c_out, h_out, w_out, m,
            *stride, *padding, *dilation,
            *x.stride(), *weight.stride(), *r.stride(), *output.stride(),
            KH=kh, KW=kw, HAS_RESIDUAL=residual is not None, RELU=relu,
            IEEE=x.dtype == torch.float32,
            WIDEN=x.dtype == torch.bfloat16 and not x.is_cuda,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=warps, num_stages=stages,
        )
