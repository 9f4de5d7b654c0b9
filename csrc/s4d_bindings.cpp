// The one binding file: declares the lambdaskip_ext operators and registers their CPU (and, when
// built with CUDA, CUDA) kernels with the dispatcher, so torch.compile and opcheck see them.
// Fake (meta) implementations and autograd are registered in Python (lambdaskip/ops/s4d.py).
#include "s4d.h"

#include <Python.h>
#include <torch/library.h>

namespace lambdaskip {
namespace {

bool cuda_built() {
#ifdef LAMBDASKIP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace lambdaskip

TORCH_LIBRARY(lambdaskip_ext, m) {
  m.def("vandermonde(Tensor log_dt, Tensor A_re, Tensor A_im, Tensor C_prime, int L) -> Tensor");
  m.def("vandermonde_backward(Tensor grad_K, Tensor log_dt, Tensor A_re, Tensor A_im, Tensor C_prime)"
        " -> (Tensor, Tensor)");
  m.def("causal_conv(Tensor u, Tensor K) -> Tensor");
  m.def("causal_conv_backward(Tensor grad_y, Tensor u, Tensor K) -> (Tensor, Tensor)");
  m.def("cuda_built() -> bool", &lambdaskip::cuda_built);
}

TORCH_LIBRARY_IMPL(lambdaskip_ext, CPU, m) {
  m.impl("vandermonde", &lambdaskip::vandermonde_cpu);
  m.impl("vandermonde_backward", &lambdaskip::vandermonde_backward_cpu);
  m.impl("causal_conv", &lambdaskip::causal_conv_cpu);
  m.impl("causal_conv_backward", &lambdaskip::causal_conv_backward_cpu);
}

#ifdef LAMBDASKIP_WITH_CUDA
TORCH_LIBRARY_IMPL(lambdaskip_ext, CUDA, m) {
  m.impl("vandermonde", &lambdaskip::vandermonde_cuda);
  m.impl("vandermonde_backward", &lambdaskip::vandermonde_backward_cuda);
  m.impl("causal_conv", &lambdaskip::causal_conv_cuda);
  m.impl("causal_conv_backward", &lambdaskip::causal_conv_backward_cuda);
}
#endif

// An empty Python module, so an ahead-of-time build (setup.py) is importable; the operators above are
// registered when the shared library loads, whichever way it is loaded.
#ifdef TORCH_EXTENSION_NAME
#define LAMBDASKIP_CONCAT_(a, b) a##b
#define LAMBDASKIP_CONCAT(a, b) LAMBDASKIP_CONCAT_(a, b)
PyMODINIT_FUNC LAMBDASKIP_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "lambdaskip_ext", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
