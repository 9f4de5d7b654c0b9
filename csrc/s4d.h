// S4D extension: the ZOH Vandermonde kernel and the direct causal convolution, CPU and CUDA.
//
// Shapes (H channels, M = N/2 complex modes, L kernel/sequence length, B batch):
//   vandermonde(log_dt (H), A_re (H, M), A_im (H, M), C_prime (H, M, 2), L) -> K (H, L)
//       K[h, l] = 2 Re sum_n C'[h, n] z[h, n]^l,  z = exp(dtA),  dtA = exp(log_dt[h]) (A_re + i A_im)
//       C_prime holds (real, imag) in its last dimension. dtA and the phase l * Im(dtA) are computed
//       in double whatever the input dtype: the phase reaches ~1e5 rad (S4D-Inv, L = 1024).
//   vandermonde_backward(grad_K (H, L), log_dt, A_re, A_im, C_prime) -> (grad_C_prime (H, M, 2),
//       grad_dtA (H, M, 2)): with S0 = sum_l G[l] z^l and S1 = sum_l l G[l] z^l,
//       grad_C' = 2 conj(S0) and grad_dtA = 2 conj(C' S1) as (d/d Re, d/d Im) pairs.
//   causal_conv(u (B, H, L), K (H, L)) -> y (B, H, L),  y[t] = sum_{s <= t} K[t - s] u[s]
//   causal_conv_backward(grad_y, u, K) -> (grad_u (B, H, L), grad_K (H, L))
// All tensors contiguous, one floating dtype (float32 or float64), one device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <tuple>

namespace lambdaskip {

inline void check_vandermonde_args(const at::Tensor& log_dt, const at::Tensor& A_re, const at::Tensor& A_im,
                                   const at::Tensor& C_prime) {
  TORCH_CHECK(log_dt.dim() == 1, "log_dt must be (H,)");
  const auto H = log_dt.size(0);
  TORCH_CHECK(A_re.dim() == 2 && A_re.size(0) == H, "A_re must be (H, M)");
  const auto M = A_re.size(1);
  TORCH_CHECK(A_im.sizes() == A_re.sizes(), "A_im must be (H, M)");
  TORCH_CHECK(C_prime.dim() == 3 && C_prime.size(0) == H && C_prime.size(1) == M && C_prime.size(2) == 2,
              "C_prime must be (H, M, 2)");
  for (const at::Tensor* t : {&log_dt, &A_re, &A_im, &C_prime}) {
    TORCH_CHECK(t->scalar_type() == log_dt.scalar_type(), "all inputs must share one dtype");
    TORCH_CHECK(t->device() == log_dt.device(), "all inputs must be on one device");
    TORCH_CHECK(t->is_contiguous(), "inputs must be contiguous");
  }
}

inline void check_conv_args(const at::Tensor& u, const at::Tensor& K) {
  TORCH_CHECK(u.dim() == 3, "u must be (B, H, L)");
  TORCH_CHECK(K.dim() == 2 && K.size(0) == u.size(1) && K.size(1) == u.size(2), "K must be (H, L)");
  TORCH_CHECK(K.scalar_type() == u.scalar_type(), "u and K must share one dtype");
  TORCH_CHECK(K.device() == u.device(), "u and K must be on one device");
  TORCH_CHECK(u.is_contiguous() && K.is_contiguous(), "u and K must be contiguous");
}

at::Tensor vandermonde_cpu(const at::Tensor& log_dt, const at::Tensor& A_re, const at::Tensor& A_im,
                           const at::Tensor& C_prime, int64_t L);
std::tuple<at::Tensor, at::Tensor> vandermonde_backward_cpu(const at::Tensor& grad_K, const at::Tensor& log_dt,
                                                            const at::Tensor& A_re, const at::Tensor& A_im,
                                                            const at::Tensor& C_prime);
at::Tensor causal_conv_cpu(const at::Tensor& u, const at::Tensor& K);
std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cpu(const at::Tensor& grad_y, const at::Tensor& u,
                                                            const at::Tensor& K);

#ifdef LAMBDASKIP_WITH_CUDA
at::Tensor vandermonde_cuda(const at::Tensor& log_dt, const at::Tensor& A_re, const at::Tensor& A_im,
                            const at::Tensor& C_prime, int64_t L);
std::tuple<at::Tensor, at::Tensor> vandermonde_backward_cuda(const at::Tensor& grad_K, const at::Tensor& log_dt,
                                                             const at::Tensor& A_re, const at::Tensor& A_im,
                                                             const at::Tensor& C_prime);
at::Tensor causal_conv_cuda(const at::Tensor& u, const at::Tensor& K);
std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cuda(const at::Tensor& grad_y, const at::Tensor& u,
                                                             const at::Tensor& K);
#endif

}  // namespace lambdaskip
