// CPU kernels of the S4D extension (see s4d.h for the maths and shapes).
//
// Vandermonde: powers z^l are advanced by one complex multiplication per step, in double, and
// re-anchored exactly (exp/cos/sin of l * dtA) every kSteps steps, so float32 inputs give results as
// accurate as the float64 reference even where the phase l * Im(dtA) is ~1e5 rad. Work is split over
// (channel, block of kSteps) for the forward and over channels for the backward (reductions over l).
#include "s4d.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lambdaskip {
namespace {

constexpr int64_t kSteps = 256;   // steps between exact re-anchorings of z^l (error ~ kSteps * 1e-16)
constexpr double kTiny = 1e-280;  // |w| below this is flushed to 0 (keeps clear of slow denormals)

// One channel's modes in double: dtA = x + iy, z = exp(dtA), C' = c, and the running w = (C' or 1) z^l.
struct ChannelModes {
  int64_t M;
  std::vector<double> x, y, z_re, z_im, c_re, c_im, w_re, w_im;

  explicit ChannelModes(int64_t modes)
      : M(modes), x(modes), y(modes), z_re(modes), z_im(modes), c_re(modes), c_im(modes), w_re(modes),
        w_im(modes) {}

  template <typename scalar_t>
  void load(int64_t h, const scalar_t* log_dt, const scalar_t* A_re, const scalar_t* A_im,
            const scalar_t* C_prime) {
    const double dt = std::exp(static_cast<double>(log_dt[h]));
    for (int64_t n = 0; n < M; ++n) {
      x[n] = dt * static_cast<double>(A_re[h * M + n]);
      y[n] = dt * static_cast<double>(A_im[h * M + n]);
      const double mag = std::exp(x[n]);
      z_re[n] = mag * std::cos(y[n]);
      z_im[n] = mag * std::sin(y[n]);
      c_re[n] = static_cast<double>(C_prime[2 * (h * M + n)]);
      c_im[n] = static_cast<double>(C_prime[2 * (h * M + n) + 1]);
    }
  }

  // w = C' z^l (with_c) or z^l, computed directly from l * dtA.
  void anchor(int64_t l, bool with_c) {
    const double dl = static_cast<double>(l);
    for (int64_t n = 0; n < M; ++n) {
      const double mag = std::exp(dl * x[n]);
      const double re = mag * std::cos(dl * y[n]);
      const double im = mag * std::sin(dl * y[n]);
      w_re[n] = with_c ? c_re[n] * re - c_im[n] * im : re;
      w_im[n] = with_c ? c_re[n] * im + c_im[n] * re : im;
    }
  }

  // w <- w z; returns sum_n Re(w) before the step.
  double advance() {
    double* __restrict__ wr = w_re.data();
    double* __restrict__ wi = w_im.data();
    const double* __restrict__ zr = z_re.data();
    const double* __restrict__ zi = z_im.data();
    double sum = 0.0;
    for (int64_t n = 0; n < M; ++n) {
      sum += wr[n];
      const double re = wr[n] * zr[n] - wi[n] * zi[n];
      const double im = wr[n] * zi[n] + wi[n] * zr[n];
      const bool tiny = std::abs(re) + std::abs(im) < kTiny;
      wr[n] = tiny ? 0.0 : re;
      wi[n] = tiny ? 0.0 : im;
    }
    return sum;
  }
};

template <typename scalar_t>
void vandermonde_forward(const scalar_t* log_dt, const scalar_t* A_re, const scalar_t* A_im,
                         const scalar_t* C_prime, scalar_t* K, int64_t H, int64_t M, int64_t L) {
  const int64_t blocks = (L + kSteps - 1) / kSteps;
  const int64_t grain = std::max<int64_t>(1, 32768 / (M * kSteps));
  at::parallel_for(0, H * blocks, grain, [&](int64_t begin, int64_t end) {
    ChannelModes modes(M);
    int64_t loaded = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / blocks;
      const int64_t l0 = (task % blocks) * kSteps;
      const int64_t l1 = std::min(L, l0 + kSteps);
      if (h != loaded) {
        modes.load(h, log_dt, A_re, A_im, C_prime);
        loaded = h;
      }
      modes.anchor(l0, /*with_c=*/true);
      for (int64_t l = l0; l < l1; ++l) K[h * L + l] = static_cast<scalar_t>(2.0 * modes.advance());
    }
  });
}

template <typename scalar_t>
void vandermonde_backward(const scalar_t* grad_K, const scalar_t* log_dt, const scalar_t* A_re,
                          const scalar_t* A_im, const scalar_t* C_prime, scalar_t* grad_C_prime,
                          scalar_t* grad_dtA, int64_t H, int64_t M, int64_t L) {
  at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
    ChannelModes modes(M);
    std::vector<double> s0_re(M), s0_im(M), s1_re(M), s1_im(M);
    for (int64_t h = begin; h < end; ++h) {
      modes.load(h, log_dt, A_re, A_im, C_prime);
      std::fill(s0_re.begin(), s0_re.end(), 0.0);
      std::fill(s0_im.begin(), s0_im.end(), 0.0);
      std::fill(s1_re.begin(), s1_re.end(), 0.0);
      std::fill(s1_im.begin(), s1_im.end(), 0.0);
      for (int64_t l = 0; l < L; ++l) {
        if (l % kSteps == 0) modes.anchor(l, /*with_c=*/false);
        const double g = static_cast<double>(grad_K[h * L + l]);
        const double gl = g * static_cast<double>(l);
        for (int64_t n = 0; n < M; ++n) {
          s0_re[n] += g * modes.w_re[n];
          s0_im[n] += g * modes.w_im[n];
          s1_re[n] += gl * modes.w_re[n];
          s1_im[n] += gl * modes.w_im[n];
        }
        modes.advance();
      }
      for (int64_t n = 0; n < M; ++n) {
        const int64_t i = 2 * (h * M + n);
        grad_C_prime[i] = static_cast<scalar_t>(2.0 * s0_re[n]);
        grad_C_prime[i + 1] = static_cast<scalar_t>(-2.0 * s0_im[n]);
        const double p_re = modes.c_re[n] * s1_re[n] - modes.c_im[n] * s1_im[n];
        const double p_im = modes.c_re[n] * s1_im[n] + modes.c_im[n] * s1_re[n];
        grad_dtA[i] = static_cast<scalar_t>(2.0 * p_re);
        grad_dtA[i + 1] = static_cast<scalar_t>(-2.0 * p_im);
      }
    }
  });
}

// y[t] = sum_{s <= t} K[t - s] u[s], one row (b, h) per task, as axpys over contiguous memory.
template <typename scalar_t>
void causal_conv_forward(const scalar_t* u, const scalar_t* K, scalar_t* y, int64_t rows, int64_t H, int64_t L) {
  const int64_t grain = std::max<int64_t>(1, 65536 / (L * L));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* __restrict__ u_row = u + row * L;
      const scalar_t* __restrict__ k_row = K + (row % H) * L;
      scalar_t* __restrict__ y_row = y + row * L;
      std::fill(y_row, y_row + L, scalar_t(0));
      for (int64_t s = 0; s < L; ++s) {
        const scalar_t us = u_row[s];
        scalar_t* __restrict__ out = y_row + s;
        for (int64_t k = 0; k < L - s; ++k) out[k] += us * k_row[k];
      }
    }
  });
}

// grad_u[s] = sum_j K[j] G[s + j];  grad_K[k] = sum_b sum_s u[b, s] G[b, s + k]. One channel per task.
template <typename scalar_t>
void causal_conv_backward(const scalar_t* grad_y, const scalar_t* u, const scalar_t* K, scalar_t* grad_u,
                          scalar_t* grad_K, int64_t batch, int64_t H, int64_t L) {
  at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      const scalar_t* __restrict__ k_row = K + h * L;
      scalar_t* __restrict__ gk = grad_K + h * L;
      std::fill(gk, gk + L, scalar_t(0));
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t row = b * H + h;
        const scalar_t* __restrict__ g = grad_y + row * L;
        const scalar_t* __restrict__ u_row = u + row * L;
        scalar_t* __restrict__ gu = grad_u + row * L;
        std::fill(gu, gu + L, scalar_t(0));
        for (int64_t j = 0; j < L; ++j) {
          const scalar_t kj = k_row[j];
          const scalar_t* __restrict__ g_j = g + j;
          for (int64_t s = 0; s < L - j; ++s) gu[s] += kj * g_j[s];
        }
        for (int64_t s = 0; s < L; ++s) {
          const scalar_t us = u_row[s];
          const scalar_t* __restrict__ g_s = g + s;
          for (int64_t k = 0; k < L - s; ++k) gk[k] += us * g_s[k];
        }
      }
    }
  });
}

}  // namespace

at::Tensor vandermonde_cpu(const at::Tensor& log_dt, const at::Tensor& A_re, const at::Tensor& A_im,
                           const at::Tensor& C_prime, int64_t L) {
  check_vandermonde_args(log_dt, A_re, A_im, C_prime);
  TORCH_CHECK(L > 0, "L must be > 0");
  const int64_t H = A_re.size(0), M = A_re.size(1);
  at::Tensor K = at::empty({H, L}, log_dt.options());
  AT_DISPATCH_FLOATING_TYPES(log_dt.scalar_type(), "s4d_vandermonde_cpu", [&] {
    vandermonde_forward<scalar_t>(log_dt.data_ptr<scalar_t>(), A_re.data_ptr<scalar_t>(),
                                  A_im.data_ptr<scalar_t>(), C_prime.data_ptr<scalar_t>(),
                                  K.data_ptr<scalar_t>(), H, M, L);
  });
  return K;
}

std::tuple<at::Tensor, at::Tensor> vandermonde_backward_cpu(const at::Tensor& grad_K, const at::Tensor& log_dt,
                                                            const at::Tensor& A_re, const at::Tensor& A_im,
                                                            const at::Tensor& C_prime) {
  check_vandermonde_args(log_dt, A_re, A_im, C_prime);
  TORCH_CHECK(grad_K.dim() == 2 && grad_K.size(0) == log_dt.size(0) && grad_K.is_contiguous() &&
                  grad_K.scalar_type() == log_dt.scalar_type(),
              "grad_K must be a contiguous (H, L) tensor of the inputs' dtype");
  const int64_t H = A_re.size(0), M = A_re.size(1), L = grad_K.size(1);
  at::Tensor grad_C_prime = at::empty_like(C_prime);
  at::Tensor grad_dtA = at::empty_like(C_prime);
  AT_DISPATCH_FLOATING_TYPES(log_dt.scalar_type(), "s4d_vandermonde_backward_cpu", [&] {
    vandermonde_backward<scalar_t>(grad_K.data_ptr<scalar_t>(), log_dt.data_ptr<scalar_t>(),
                                   A_re.data_ptr<scalar_t>(), A_im.data_ptr<scalar_t>(),
                                   C_prime.data_ptr<scalar_t>(), grad_C_prime.data_ptr<scalar_t>(),
                                   grad_dtA.data_ptr<scalar_t>(), H, M, L);
  });
  return {grad_C_prime, grad_dtA};
}

at::Tensor causal_conv_cpu(const at::Tensor& u, const at::Tensor& K) {
  check_conv_args(u, K);
  at::Tensor y = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "s4d_causal_conv_cpu", [&] {
    causal_conv_forward<scalar_t>(u.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                  u.size(0) * u.size(1), u.size(1), u.size(2));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_cpu(const at::Tensor& grad_y, const at::Tensor& u,
                                                            const at::Tensor& K) {
  check_conv_args(u, K);
  TORCH_CHECK(grad_y.sizes() == u.sizes() && grad_y.scalar_type() == u.scalar_type() && grad_y.is_contiguous(),
              "grad_y must be contiguous with u's shape and dtype");
  at::Tensor grad_u = at::empty_like(u);
  at::Tensor grad_K = at::empty_like(K);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "s4d_causal_conv_backward_cpu", [&] {
    causal_conv_backward<scalar_t>(grad_y.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), K.data_ptr<scalar_t>(),
                                   grad_u.data_ptr<scalar_t>(), grad_K.data_ptr<scalar_t>(), u.size(0),
                                   u.size(1), u.size(2));
  });
  return {grad_u, grad_K};
}

}  // namespace lambdaskip
