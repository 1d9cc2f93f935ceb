"""Properties of Parallax attention that hold for every implementation (no oracle needed)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_cases import IMPLEMENTATIONS, assert_close

from parallax_jax import parallax_attention

IMPL_PARAMS = [pytest.param(i, id=str(i)) for i in IMPLEMENTATIONS]


def _normal(seed, shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


def _qrkv(b=2, tq=48, tk=None, hq=4, hkv=2, d=32, seed=0):
  tk = tk or tq
  return (
    _normal(seed, (b, tq, hq, d)),
    _normal(seed + 1, (b, tq, hq, d)),
    _normal(seed + 2, (b, tk, hkv, d)),
    _normal(seed + 3, (b, tk, hkv, d)),
  )


@functools.cache
def _jitted(impl, static: frozenset):
  """One jitted op per (implementation, static options): a call with new shapes compiles
  once instead of dispatching (and compiling) every primitive eagerly."""

  def op(q, r, k, v, segment_ids=None):
    return parallax_attention(
      q,
      r,
      k,
      v,
      segment_ids=segment_ids,
      implementation=impl.name,
      interpret=impl.interpret,
      **dict(static),
    )

  def grads(q, r, k, v, g, segment_ids=None):
    return jax.vjp(lambda *x: op(*x, segment_ids=segment_ids), q, r, k, v)[1](g)

  return jax.jit(op), jax.jit(grads)


def _op(impl, *args, segment_ids=None, **kw):
  return _jitted(impl, frozenset(kw.items()))[0](*args, segment_ids=segment_ids)


def _grads(impl, q, r, k, v, g, segment_ids=None, **kw):
  return _jitted(impl, frozenset(kw.items()))[1](q, r, k, v, g, segment_ids=segment_ids)


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("window", [None, 13])
def test_r_zero_is_softmax_attention(impl, window):
  q, r, k, v = _qrkv()
  o = _op(impl, q, jnp.zeros_like(r), k, v, window_size=window)
  expected = jax.nn.dot_product_attention(
    q,
    k,
    v,
    is_causal=True,
    local_window_size=None if window is None else (window - 1, 0),
    implementation="xla",
  )
  assert_close("o", o, np.asarray(expected, np.float64), "float32")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_effective_weights_sum_to_one(impl):
  # o = sum_j a_ij v_j, so v = 1 gives sum_j a_ij on every row, whatever r is.
  q, r, k, v = _qrkv(tq=40, tk=70)
  o = _op(impl, q, 3.0 * r, k, jnp.ones_like(v))
  np.testing.assert_allclose(np.asarray(o), 1.0, atol=1e-5)


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_translation_equivariance_in_v(impl):
  q, r, k, v = _qrkv()
  shift = _normal(9, (1, 1, v.shape[2], v.shape[3]))
  o = _op(impl, q, r, k, v, window_size=20)
  o_shift = _op(impl, q, r, k, v + shift, window_size=20)
  shift_q = jnp.repeat(shift, q.shape[2] // v.shape[2], axis=2)
  np.testing.assert_allclose(np.asarray(o_shift), np.asarray(o + shift_q), atol=2e-5)


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_gqa_equals_repeated_kv(impl):
  q, r, k, v = _qrkv(hq=6, hkv=2)
  g = _normal(7, q.shape)
  o = _op(impl, q, r, k, v, window_size=30)
  grads = _grads(impl, q, r, k, v, g, window_size=30)
  k_rep, v_rep = jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2)
  o_rep = _op(impl, q, r, k_rep, v_rep, window_size=30)
  dq, dr, dk_rep, dv_rep = _grads(impl, q, r, k_rep, v_rep, g, window_size=30)

  def fold(x):  # per-query-head kv grads summed over each group
    return x.reshape(*x.shape[:2], 2, 3, x.shape[-1]).sum(3)

  for name, got, want in [
    ("o", o, o_rep),
    ("dq", grads[0], dq),
    ("dr", grads[1], dr),
    ("dk", grads[2], fold(dk_rep)),
    ("dv", grads[3], fold(dv_rep)),
  ]:
    assert_close(name, got, np.asarray(want, np.float64), "float32")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_packed_equals_separate_sequences(impl):
  lengths = (5, 30, 29)
  q, r, k, v = _qrkv(b=1, tq=sum(lengths), hq=2, hkv=1)
  g = _normal(5, q.shape)
  seg = jnp.asarray(np.repeat(np.arange(3), lengths)[None], jnp.int32)
  o = _op(impl, q, r, k, v, segment_ids=seg, window_size=12)
  grads = _grads(impl, q, r, k, v, g, segment_ids=seg, window_size=12)
  start = 0
  for n in lengths:
    sl = slice(start, start + n)
    part = [x[:, sl] for x in (q, r, k, v)]
    o_part = _op(impl, *part, window_size=12)
    g_part = _grads(impl, *part, g[:, sl], window_size=12)
    assert_close("o", o[:, sl], np.asarray(o_part, np.float64), "float32")
    for name, got, want in zip(("dq", "dr", "dk", "dv"), grads, g_part, strict=True):
      assert_close(name, got[:, sl], np.asarray(want, np.float64), "float32")
    start += n


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("window", [None, 17])
def test_last_row_equals_single_query_call(impl, window):
  q, r, k, v = _qrkv(tq=57)
  full = _op(impl, q, r, k, v, window_size=window)
  last = _op(impl, q[:, -1:], r[:, -1:], k, v, window_size=window)
  assert_close("o", full[:, -1:], np.asarray(last, np.float64), "float32")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("tq,tk,window", [(40, 40, None), (24, 40, None), (40, 40, 9)])
def test_causality_gradients_exactly_zero(impl, tq, tk, window):
  q, r, k, v = _qrkv(b=1, tq=tq, tk=tk)
  for t in (0, tq // 2, tq - 1):
    g = jnp.zeros(q.shape).at[:, t].set(1.0)
    dq, dr, dk, dv = _grads(impl, q, r, k, v, g, window_size=window)
    pos = t + tk - tq
    assert not np.any(np.asarray(dq[:, t + 1 :])) and not np.any(np.asarray(dr[:, t + 1 :]))
    assert not np.any(np.asarray(dk[:, pos + 1 :])) and not np.any(np.asarray(dv[:, pos + 1 :]))
    if window is not None:
      first = pos - window + 1
      assert not np.any(np.asarray(dk[:, : max(first, 0)]))
      assert not np.any(np.asarray(dv[:, : max(first, 0)]))
    assert np.any(np.asarray(dv[:, pos]))


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_rows_without_keys_are_zero_not_nan(impl):
  # Tq > Tk with the end-aligned causal mask: the first Tq - Tk rows see nothing.
  q, r, k, v = _qrkv(tq=30, tk=20)
  g = _normal(3, q.shape)
  o = _op(impl, q, r, k, v)
  grads = _grads(impl, q, r, k, v, g)
  assert np.all(np.asarray(o[:, :10]) == 0) and np.all(np.isfinite(np.asarray(o)))
  for x in grads:
    assert np.all(np.isfinite(np.asarray(x)))
  assert not np.any(np.asarray(grads[0][:, :10]))


@pytest.mark.parametrize("impl", [p for p in IMPL_PARAMS if p.values[0].name != "reference"])
def test_rows_without_keys_keep_the_residual_contract(impl):
  """The forward's residuals on rows that see no key: ``lse = -inf``, ``bart = 0``, ``o = barv
  = 0`` (docs/design.md §4), whatever the backward makes of them ("reference" has none: JAX
  differentiates it)."""
  from parallax_jax.attention import implementations
  from parallax_jax.attention.validation import validate

  path = implementations.get(impl.name)
  q, r, k, v = _qrkv(tq=30, tk=20)  # end-aligned causal: rows 0-9 see nothing
  flags = dict(causal=True, window_size=None, segment_ids=None, block_sizes=None)
  spec = validate(q, r, k, v, scale=None, interpret=impl.interpret, **flags)
  _, res = jax.jit(lambda *x: path.fwd(*x, None, spec))(q, r, k, v)
  lse, bart = np.asarray(res.lse), np.asarray(res.bart)  # [B, H, T]
  assert np.all(np.isneginf(lse[..., :10])) and np.all(np.isfinite(lse[..., 10:]))
  assert np.all(bart[..., :10] == 0)
  assert not np.any(np.asarray(res.o)[:, :10]) and not np.any(np.asarray(res.barv)[:, :10])


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_batch_rows_are_independent(impl):
  """Permuting the batch (with per-row segment ids) permutes outputs and gradients, and one
  row alone gives that row of the batched call: no row reads another row's data or mask."""
  q, r, k, v = _qrkv(b=3, tq=32, hq=2, hkv=1)
  g = _normal(4, q.shape)
  seg = jnp.asarray(np.repeat([[0, 1, 2], [0, 0, 1], [0, 1, 1]], [7, 9, 16], axis=1), jnp.int32)

  @jax.jit
  def run(q, r, k, v, g, seg):
    o, vjp = jax.vjp(lambda *x: _op(impl, *x, window_size=21, segment_ids=seg), q, r, k, v)
    return (o, *vjp(g))

  whole = run(q, r, k, v, g, seg)
  perm = np.array([2, 0, 1])
  permuted = run(q[perm], r[perm], k[perm], v[perm], g[perm], seg[perm])
  alone = run(*(x[1:2] for x in (q, r, k, v, g, seg)))
  for name, w, p, a in zip(("o", "dq", "dr", "dk", "dv"), whole, permuted, alone, strict=True):
    assert_close(name, p, np.asarray(w[perm], np.float64), "float32")
    assert_close(name + " row 1 alone", a, np.asarray(w[1:2], np.float64), "float32")
