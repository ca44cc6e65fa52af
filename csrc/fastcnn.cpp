// fastcnn._C: the CPU kernels. The kernels release the GIL while they run.
#include <torch/extension.h>

#include "common.h"
#include "cpu/ops.h"

namespace {

// How this extension was compiled, for `fastcnn info`.
pybind11::dict build_info() {
  pybind11::dict info;
  // The libtorch whose C++ ABI this build uses (only its major.minor must match at run
  // time: fastcnn.backends checks that from fastcnn/_build_info.json before loading this).
  info["torch"] = TORCH_VERSION;
#if defined(_GLIBCXX_USE_CXX11_ABI)
  info["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#endif
#if defined(_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
#if FASTCNN_HAS_TARGET_CLONES
  info["vector_targets"] = "x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA), baseline; chosen at load";
#else
  info["vector_targets"] = "compiler default";
#endif
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "gcc " __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fastcnn CPU kernels (C++, OpenMP, vectorised)";
  m.def("build_info", &build_info, "How this extension was compiled.");
  m.def("lrn_forward", &fastcnn::cpu::lrn_forward, "LRN forward into output; (N, C, S) views.",
        py::arg("input"), py::arg("output"), py::arg("size"), py::arg("alpha"), py::arg("beta"),
        py::arg("k"), py::call_guard<py::gil_scoped_release>());
  m.def("lrn_backward", &fastcnn::cpu::lrn_backward,
        "LRN gradient w.r.t. input into grad_input; (N, C, S) views.", py::arg("input"),
        py::arg("grad_output"), py::arg("grad_input"), py::arg("size"), py::arg("alpha"),
        py::arg("beta"), py::arg("k"), py::call_guard<py::gil_scoped_release>());
  m.def("max_pool2d_forward", &fastcnn::cpu::max_pool2d_forward,
        "Max-pooling into output (and the winners' window positions into positions, unless "
        "None); (N, C, H, W) tensors.",
        py::arg("input"), py::arg("output"), py::arg("positions"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::call_guard<py::gil_scoped_release>());
  m.def("max_pool2d_backward", &fastcnn::cpu::max_pool2d_backward,
        "Max-pooling gradient w.r.t. input into grad_input, gathered by window positions.",
        py::arg("grad_output"), py::arg("positions"), py::arg("grad_input"),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::call_guard<py::gil_scoped_release>());
  m.def("relu_lrn_max_pool2d_forward", &fastcnn::cpu::relu_lrn_max_pool2d_forward,
        "ReLU -> LRN -> max-pooling into output (and the winners' window positions into "
        "positions, unless None); (N, C, H, W) tensors.",
        py::arg("input"), py::arg("output"), py::arg("positions"), py::arg("size"),
        py::arg("alpha"), py::arg("beta"), py::arg("k"), py::arg("kernel_size"),
        py::arg("stride"), py::arg("padding"), py::call_guard<py::gil_scoped_release>());
  m.def("relu_lrn_max_pool2d_backward", &fastcnn::cpu::relu_lrn_max_pool2d_backward,
        "ReLU -> LRN -> max-pooling gradient w.r.t. input into grad_input, from input and "
        "the window positions.",
        py::arg("input"), py::arg("grad_output"), py::arg("positions"), py::arg("grad_input"),
        py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"),
        py::call_guard<py::gil_scoped_release>());
  m.def("global_avg_pool2d_forward", &fastcnn::cpu::global_avg_pool2d_forward,
        "Mean over S of an (N, C, S) view into an (N, C, 1) view.", py::arg("input"),
        py::arg("output"), py::call_guard<py::gil_scoped_release>());
  m.def("global_avg_pool2d", &fastcnn::cpu::global_avg_pool2d,
        "Mean over H and W of an (N, C, H, W) tensor as a new (N, C, 1, 1) tensor, "
        "channels_last or contiguous.",
        py::arg("input"), py::arg("channels_last"), py::call_guard<py::gil_scoped_release>());
  m.def("global_avg_pool2d_backward", &fastcnn::cpu::global_avg_pool2d_backward,
        "Global average pooling gradient: grad_output (N, C, 1) / S into grad_input (N, C, S).",
        py::arg("grad_output"), py::arg("grad_input"), py::call_guard<py::gil_scoped_release>());
  m.def("channel_affine_act", &fastcnn::cpu::channel_affine_act,
        "output = act(input * scale_c + shift_c (+ residual)); (N, C, S) views, output may be "
        "input.",
        py::arg("input"), py::arg("scale"), py::arg("shift"), py::arg("residual"),
        py::arg("output"), py::arg("relu"), py::call_guard<py::gil_scoped_release>());
  m.def("batch_norm_stats", &fastcnn::cpu::batch_norm_stats,
        "Per-channel mean and biased variance of input, an (N, C, S) view.", py::arg("input"),
        py::arg("mean"), py::arg("var"), py::call_guard<py::gil_scoped_release>());
  m.def("batch_norm_act_backward_reduce", &fastcnn::cpu::batch_norm_act_backward_reduce,
        "Per-channel sums of the masked gradient dz and of dz * xhat.", py::arg("grad_output"),
        py::arg("input"), py::arg("residual"), py::arg("scale"), py::arg("shift"),
        py::arg("mean"), py::arg("invstd"), py::arg("sum_dz"), py::arg("sum_dz_xhat"),
        py::arg("relu"), py::call_guard<py::gil_scoped_release>());
  m.def("batch_norm_act_backward", &fastcnn::cpu::batch_norm_act_backward,
        "Gradients of the batch-norm input and of the residual; (N, C, S) views.",
        py::arg("grad_output"), py::arg("input"), py::arg("residual"), py::arg("scale"),
        py::arg("shift"), py::arg("mean"), py::arg("invstd"), py::arg("sum_dz"),
        py::arg("sum_dz_xhat"), py::arg("grad_input"), py::arg("grad_residual"), py::arg("relu"),
        py::call_guard<py::gil_scoped_release>());
  m.def("concat_forward", &fastcnn::cpu::concat_forward,
        "Concatenation of inputs along dim into output (any strides, any dtype).",
        py::arg("inputs"), py::arg("output"), py::arg("dim"),
        py::call_guard<py::gil_scoped_release>());
}
