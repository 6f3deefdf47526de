"""The paper's two parameter-free layers, each with its gradient written out.

`local_response_norm` (section 3.3) and `max_pool` (section 3.4, overlapping
pooling) are `jax.custom_vjp` functions: their hand-written backward passes run
faster than JAX's autodiff of the forward (benchmarks/README.md), and the
max-pool gradient needs no select_and_scatter, which XLA refuses under
deterministic GPU ops (docs/reliability.md). `alexnet.AlexNet` applies them;
they take the values it was checked with and check nothing of their own beyond
what no config field carries.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

POOL_WINDOW, POOL_STRIDE = 3, 2  # overlapping pooling (section 3.4)


def local_response_norm(x: Array, *, size: int = 5, k: float = 2.0,
                        alpha: float = 1e-4, beta: float = 0.75) -> Array:
  """The paper's local response normalisation over the last (channel) axis.

  b_c = a_c / (k + alpha * sum_{j=max(0, c-size//2)}^{min(N-1, c+size//2)} a_j^2) ** beta

  alpha is not divided by `size` (unlike Caffe and PyTorch). The window is
  clipped at the first and last channel, which zero padding gives exactly.
  The gradient is written out (`_lrn_backward`); like `max_pool`, this makes the
  model differentiable in reverse mode only (jax.grad, jax.vjp; not jax.jvp or
  jacfwd): a custom_jvp form of both ran ~10% slower (benchmarks/README.md).
  """
  if size < 1 or size % 2 == 0:
    raise ValueError(f'LRN size must be a positive odd number, got {size}')
  return _lrn(x, size, float(k), float(alpha), float(beta))


def _channel_window_sum(t: Array, size: int) -> Array:
  """sum_{j=c-size//2}^{c+size//2} t_j for every channel c, zeros beyond the edges.

  A sum of shifted slices beats reduce_window and a banded matmul on XLA:CPU and
  fuses on GPU (benchmarks/README.md).
  """
  half = size // 2
  padded = jnp.pad(t, [(0, 0)] * (t.ndim - 1) + [(half, half)])
  channels = t.shape[-1]
  return sum(padded[..., i:i + channels] for i in range(size))


def _inverse_power(denom: Array, beta: float) -> Array:
  if beta == 0.75:
    # t ** -0.75 = rsqrt(t) * rsqrt(sqrt(t)): cheaper than pow (exp + log).
    return jax.lax.rsqrt(denom) * jax.lax.rsqrt(jnp.sqrt(denom))
  return denom ** -beta


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn(x: Array, size: int, k: float, alpha: float, beta: float) -> Array:
  return _lrn_forward(x, size, k, alpha, beta)[0]


def _lrn_forward(x, size, k, alpha, beta):
  # Squares and their windowed sum in float32 even under bf16 compute: the
  # denominator is a sum of up to `size` squares raised to a fractional power.
  x32 = x.astype(jnp.float32)
  denom = k + alpha * _channel_window_sum(jnp.square(x32), size)
  return (x32 * _inverse_power(denom, beta)).astype(x.dtype), (x, denom)


def _lrn_backward(size, k, alpha, beta, residuals, g):
  """The analytic gradient: one more windowed sum (autodiff of the forward is slower).

  With d_c the denominator and s_c = d_c ** -beta, b_c = a_c s_c and
  db_c/da_j = [c == j] s_c - 2 alpha beta a_c a_j s_c / d_c for j in c's window, so
  dL/da_j = g_j s_j - 2 alpha beta a_j sum_{c in window(j)} g_c a_c s_c / d_c.
  """
  del k
  x, denom = residuals
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  scale = _inverse_power(denom, beta)
  through = _channel_window_sum(g32 * x32 * scale / denom, size)
  return ((g32 * scale - 2.0 * alpha * beta * x32 * through).astype(x.dtype),)


_lrn.defvjp(_lrn_forward, _lrn_backward)


def max_pool(x: Array, window: int = POOL_WINDOW, stride: int = POOL_STRIDE) -> Array:
  """window x window max-pooling with `stride`, no padding, NHWC.

  The paper's overlapping pooling (section 3.4) is window 3, stride 2; window 2,
  stride 2 is the non-overlapping scheme it was compared with.

  The gradient goes to the first maximum of each window in row-major order, as
  XLA's select_and_scatter (the autodiff of reduce_window max) routes it; written
  out here because XLA:CPU lowers select_and_scatter to index tensors and a
  scatter, 3-10% slower for the whole train step (benchmarks/README.md).
  window and stride are config.model.pool_size and pool_stride, which
  alexnet.check_fields checks.
  """
  return _max_pool(x, int(window), int(stride))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: Array, window: int, stride: int) -> Array:
  return nn.max_pool(x, (window, window), (stride, stride))


def _max_pool_forward(x, window, stride):
  y = _max_pool(x, window, stride)
  return y, (x, y)


def _max_pool_backward(window, stride, residuals, g):
  x, y = residuals
  (_, h, w, _), (_, oh, ow, _) = x.shape, y.shape
  span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
  routed = jnp.zeros(y.shape, bool)
  dx = jnp.zeros_like(x)
  for i in range(window):
    for j in range(window):
      # Window element (i, j) of every window, and where it is the first maximum.
      hit = (x[:, i:i + span_h:stride, j:j + span_w:stride] == y) & ~routed
      routed = routed | hit
      # Back to input positions: the transpose of the strided slice is an interior pad.
      dx = dx + jax.lax.pad(jnp.where(hit, g, 0).astype(x.dtype), jnp.zeros((), x.dtype),
                            [(0, 0, 0), (i, h - i - span_h, stride - 1),
                             (j, w - j - span_w, stride - 1), (0, 0, 0)])
  return (dx,)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)
