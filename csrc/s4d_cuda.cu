// CUDA kernels of the S4D extension (see s4d.h for the maths and shapes). Built only where nvcc exists.
//
// Vandermonde: each thread computes z^l = exp(l * dtA) directly. dtA is formed in double and the phase
// l * Im(dtA) is reduced to [-pi, pi] in double before a float sincos, so float32 results keep the
// accuracy of the float64 reference at phases of ~1e5 rad. Accumulation is in float32 (float64 for
// double inputs). Every reduction is a fixed-order tree or loop: no atomics, deterministic results.
#include "s4d.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

namespace lambdaskip {
namespace {

constexpr int kThreads = 256;    // threads per block (a power of two: the tree reduction needs it)
constexpr int kModeTile = 256;   // modes staged in shared memory at a time
constexpr int64_t kMaxGridY = 65535;
constexpr double kTwoPi = 6.283185307179586476925286766559;

template <typename scalar_t>
struct Accumulate { using type = float; };
template <>
struct Accumulate<double> { using type = double; };

__device__ __forceinline__ void sin_cos(float a, float* s, float* c) { sincosf(a, s, c); }
__device__ __forceinline__ void sin_cos(double a, double* s, double* c) { sincos(a, s, c); }
__device__ __forceinline__ float exponential(float a) { return expf(a); }
__device__ __forceinline__ double exponential(double a) { return exp(a); }

// (re, im) = exp(l * (x + iy)), the phase range-reduced in double.
template <typename acc_t>
__device__ __forceinline__ void power(double x, double y, int64_t l, acc_t& re, acc_t& im) {
  const double dl = static_cast<double>(l);
  double phase = dl * y;
  phase -= kTwoPi * rint(phase / kTwoPi);
  const acc_t mag = exponential(static_cast<acc_t>(dl * x));
  acc_t s, c;
  sin_cos(static_cast<acc_t>(phase), &s, &c);
  re = mag * c;
  im = mag * s;
}

// grid (H, ceil(L / kThreads)); thread l of channel h sums over all modes, kModeTile at a time.
template <typename scalar_t>
__global__ void vandermonde_forward_kernel(const scalar_t* __restrict__ log_dt, const scalar_t* __restrict__ A_re,
                                           const scalar_t* __restrict__ A_im, const scalar_t* __restrict__ C_prime,
                                           scalar_t* __restrict__ K, int64_t M, int64_t L) {
  using acc_t = typename Accumulate<scalar_t>::type;
  __shared__ double xs[kModeTile], ys[kModeTile];
  __shared__ acc_t cs_re[kModeTile], cs_im[kModeTile];
  const int64_t h = blockIdx.x;
  const int64_t l = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const double dt = exp(static_cast<double>(log_dt[h]));
  acc_t sum = 0;
  for (int64_t n0 = 0; n0 < M; n0 += kModeTile) {
    const int count = static_cast<int>(M - n0 < kModeTile ? M - n0 : kModeTile);
    for (int i = threadIdx.x; i < count; i += blockDim.x) {
      const int64_t n = h * M + n0 + i;
      xs[i] = dt * static_cast<double>(A_re[n]);
      ys[i] = dt * static_cast<double>(A_im[n]);
      cs_re[i] = static_cast<acc_t>(C_prime[2 * n]);
      cs_im[i] = static_cast<acc_t>(C_prime[2 * n + 1]);
    }
    __syncthreads();
    if (l < L) {
      for (int i = 0; i < count; ++i) {
        acc_t re, im;
        power(xs[i], ys[i], l, re, im);
        sum += cs_re[i] * re - cs_im[i] * im;
      }
    }
    __syncthreads();
  }
  if (l < L) K[h * L + l] = static_cast<scalar_t>(2 * sum);
}

// grid (H * M); block (h, n) reduces S0 = sum_l G z^l and S1 = sum_l l G z^l over l.
template <typename scalar_t>
__global__ void vandermonde_backward_kernel(const scalar_t* __restrict__ grad_K, const scalar_t* __restrict__ log_dt,
                                            const scalar_t* __restrict__ A_re, const scalar_t* __restrict__ A_im,
                                            const scalar_t* __restrict__ C_prime, scalar_t* __restrict__ grad_C_prime,
                                            scalar_t* __restrict__ grad_dtA, int64_t M, int64_t L) {
  using acc_t = typename Accumulate<scalar_t>::type;
  __shared__ acc_t partial[4][kThreads];
  const int64_t mode = blockIdx.x;  // h * M + n
  const int64_t h = mode / M;
  const double dt = exp(static_cast<double>(log_dt[h]));
  const double x = dt * static_cast<double>(A_re[mode]);
  const double y = dt * static_cast<double>(A_im[mode]);
  acc_t s0_re = 0, s0_im = 0, s1_re = 0, s1_im = 0;
  for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
    const acc_t g = static_cast<acc_t>(grad_K[h * L + l]);
    const acc_t gl = g * static_cast<acc_t>(l);
    acc_t re, im;
    power(x, y, l, re, im);
    s0_re += g * re;
    s0_im += g * im;
    s1_re += gl * re;
    s1_im += gl * im;
  }
  const int t = threadIdx.x;
  partial[0][t] = s0_re;
  partial[1][t] = s0_im;
  partial[2][t] = s1_re;
  partial[3][t] = s1_im;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (t < stride) {
      for (int k = 0; k < 4; ++k) partial[k][t] += partial[k][t + stride];
    }
    __syncthreads();
  }
  if (t == 0) {
    const acc_t c_re = static_cast<acc_t>(C_prime[2 * mode]);
    const acc_t c_im = static_cast<acc_t>(C_prime[2 * mode + 1]);
    grad_C_prime[2 * mode] = static_cast<scalar_t>(2 * partial[0][0]);
    grad_C_prime[2 * mode + 1] = static_cast<scalar_t>(-2 * partial[1][0]);
    grad_dtA[2 * mode] = static_cast<scalar_t>(2 * (c_re * partial[2][0] - c_im * partial[3][0]));
    grad_dtA[2 * mode + 1] = static_cast<scalar_t>(-2 * (c_re * partial[3][0] + c_im * partial[2][0]));
  }
}

// grid (B * H, ceil(L / kThreads)): y[t] = sum_{k <= t} K[k] u[t - k].
template <typename scalar_t>
__global__ void causal_conv_forward_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ K,
                                           scalar_t* __restrict__ y, int64_t H, int64_t L) {
  using acc_t = typename Accumulate<scalar_t>::type;
  const int64_t row = blockIdx.x;
  const int64_t t = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (t >= L) return;
  const scalar_t* u_row = u + row * L;
  const scalar_t* k_row = K + (row % H) * L;
  acc_t acc = 0;
  for (int64_t k = 0; k <= t; ++k) acc += static_cast<acc_t>(k_row[k]) * static_cast<acc_t>(u_row[t - k]);
  y[row * L + t] = static_cast<scalar_t>(acc);
}

// grid (B * H, ceil(L / kThreads)): grad_u[s] = sum_j K[j] G[s + j].
template <typename scalar_t>
__global__ void causal_conv_grad_u_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ K,
                                          scalar_t* __restrict__ grad_u, int64_t H, int64_t L) {
  using acc_t = typename Accumulate<scalar_t>::type;
  const int64_t row = blockIdx.x;
  const int64_t s = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (s >= L) return;
  const scalar_t* g_row = grad_y + row * L;
  const scalar_t* k_row = K + (row % H) * L;
  acc_t acc = 0;
  for (int64_t j = 0; j < L - s; ++j) acc += static_cast<acc_t>(k_row[j]) * static_cast<acc_t>(g_row[s + j]);
  grad_u[row * L + s] = static_cast<scalar_t>(acc);
}

// grid (H, ceil(L / kThreads)): grad_K[k] = sum_b sum_j u[b, j] G[b, k + j].
template <typename scalar_t>
__global__ void causal_conv_grad_K_kernel(const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ u,
                                          scalar_t* __restrict__ grad_K, int64_t batch, int64_t H, int64_t L) {
  using acc_t = typename Accumulate<scalar_t>::type;
  const int64_t h = blockIdx.x;
  const int64_t k = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (k >= L) return;
  acc_t acc = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const scalar_t* g_row = grad_y + (b * H + h) * L;
    const scalar_t* u_row = u + (b * H + h) * L;
    for (int64_t j = 0; j < L - k; ++j) acc += static_cast<acc_t>(u_row[j]) * static_cast<acc_t>(g_row[k + j]);
  }
  grad_K[h * L + k] = static_cast<scalar_t>(acc);
}

dim3 rows_by_tiles(int64_t rows, int64_t L) {
  const int64_t tiles = (L + kThreads - 1) / kThreads;
  TORCH_CHECK(tiles <= kMaxGridY, "sequence length too long for the CUDA kernels: L = ", L);
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "too many rows for the CUDA kernels: ", rows);
  return dim3(static_cast<unsigned>(rows), static_cast<unsigned>(tiles));
}

}  // namespace

at::Tensor vandermonde_cuda(const at::Tensor& log_dt, const at::Tensor& A_re, const at::Tensor& A_im,
                            const at::Tensor& C_prime, int64_t L) {
  check_vandermonde_args(log_dt, A_re, A_im, C_prime);
  TORCH_CHECK(L > 0, "L must be > 0");
  const c10::cuda::CUDAGuard guard(log_dt.device());
  const int64_t H = A_re.size(0), M = A_re.size(1);
  at::Tensor K = at::empty({H, L}, log_dt.options());
  const dim3 grid = rows_by_tiles(H, L);
  AT_DISPATCH_FLOATING_TYPES(log_dt.scalar_type(), "s4d_vandermonde_cuda", [&] {
    vandermonde_forward_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        log_dt.data_ptr<scalar_t>(), A_re.data_ptr<scalar_t>(), A_im.data_ptr<scalar_t>(),
        C_prime.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), M, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return K;
}

std::tuple<at::Tensor, at::Tensor> vandermonde_backward_cuda(const at::Tensor& grad_K, const at::Tensor& log_dt,
                                                             const at::Tensor& A_re, const at::Tensor& A_im,
                                                             const at::Tensor& C_prime) {
  check_vandermonde_args(log_dt, A_re, A_im, C_prime);
  TORCH_CHECK(grad_K.dim() == 2 && grad_K.size(0) == log_dt.size(0) && grad_K.is_contiguous() &&
                  grad_K.scalar_type() == log_dt.scalar_type() && grad_K.device() == log_dt.device(),
              "grad_K must be a contiguous (H, L) tensor of the inputs' dtype and device");
  const c10::cuda::CUDAGuard guard(log_dt.device());
  const int64_t H = A_re.size(0), M = A_re.size(1), L = grad_K.size(1);
  TORCH_CHECK(H * M <= std::numeric_limits<int32_t>::max(), "too many modes for the CUDA kernels");
  at::Tensor grad_C_prime = at::empty_like(C_prime);
  at::Tensor grad_dtA = at::empty_like(C_prime);
  AT_DISPATCH_FLOATING_TYPES(log_dt.scalar_type(), "s4d_vandermonde_backward_cuda", [&] {
    vandermonde_backward_kernel<scalar_t><<<static_cast<unsigned>(H * M), kThreads, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
        grad_K.data_ptr<scalar_t>(), log_dt.data_ptr<scalar_t>(), A_re.data_ptr<scalar_t>(),
        A_im.data_ptr<scalar_t>(), C_prime.data_ptr<scalar_t>(), grad_C_prime.data_ptr<scalar_t>(),
        grad_dtA.data_ptr<scalar_t>(), M, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_C_prime, grad_dtA};
}

at::Tensor causal_conv_cuda(const at::Tensor& u, const at::Tensor& K) {
  check_conv_args(u, K);
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t H = u.size(1), L = u.size(2);
  at::Tensor y = at::empty_like(u);
  const dim3 grid = rows_by_tiles(u.size(0) * H, L);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "s4d_causal_conv_cuda", [&] {
    causal_conv_forward_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        u.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), H, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cuda(const at::Tensor& grad_y, const at::Tensor& u,
                                                             const at::Tensor& K) {
  check_conv_args(u, K);
  TORCH_CHECK(grad_y.sizes() == u.sizes() && grad_y.scalar_type() == u.scalar_type() && grad_y.is_contiguous() &&
                  grad_y.device() == u.device(),
              "grad_y must be contiguous with u's shape, dtype and device");
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t batch = u.size(0), H = u.size(1), L = u.size(2);
  at::Tensor grad_u = at::empty_like(u);
  at::Tensor grad_K = at::empty_like(K);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "s4d_causal_conv_backward_cuda", [&] {
    causal_conv_grad_u_kernel<scalar_t><<<rows_by_tiles(batch * H, L), kThreads, 0, stream>>>(
        grad_y.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), grad_u.data_ptr<scalar_t>(), H, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    causal_conv_grad_K_kernel<scalar_t><<<rows_by_tiles(H, L), kThreads, 0, stream>>>(
        grad_y.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), grad_K.data_ptr<scalar_t>(), batch, H, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_u, grad_K};
}

}  // namespace lambdaskip
