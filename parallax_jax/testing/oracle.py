"""Float64 NumPy oracle for Parallax attention, written independently of the JAX code.

The mask rules are spelled out again here (not imported), and the gradients come from explicit
per-row Jacobians (softmax Jacobian ``diag(p) - p p^T`` and the Jacobians of the effective
weights ``a_j = p_j (1 + tbar - t_j)``), not from the closed form the kernels use. Its own
gradients are checked against finite differences in ``tests/test_oracle.py``.

Layout as the op: q, r ``[B, Tq, Hq, D]``; k, v ``[B, Tk, Hkv, D]``.
"""

from __future__ import annotations

import numpy as np


def visible_mask(q_len, kv_len, *, causal, window_size, segment_ids=None):
  """Boolean ``[B or 1, Tq, Tk]``: query i at position i + Tk - Tq sees key j?"""
  batch = 1 if segment_ids is None else segment_ids.shape[0]
  out = np.zeros((batch, q_len, kv_len), bool)
  for b in range(batch):
    for i in range(q_len):
      pos = i + kv_len - q_len
      for j in range(kv_len):
        ok = True
        if causal and j > pos:
          ok = False
        if window_size is not None and j < pos - window_size + 1:
          ok = False
        if segment_ids is not None and segment_ids[b, i] != segment_ids[b, j]:
          ok = False
        out[b, i, j] = ok
  return out


def decode_mask(lengths, q_len, cache_len, *, window_size):
  """Boolean ``[B, Tq, S]`` of decode over a right-padded cache: row b holds ``lengths[b]``
  valid keys and query i sits at position ``lengths[b] - Tq + i`` (it may be negative)."""
  out = np.zeros((len(lengths), q_len, cache_len), bool)
  for b, n in enumerate(lengths):
    for i in range(q_len):
      pos = int(n) - q_len + i  # Python ints: no int32 wrap-around against a huge window
      for j in range(cache_len):
        if j < n and j <= pos and (window_size is None or j > pos - window_size):
          out[b, i, j] = True
  return out


def _row(q_i, r_i, k, scale, vis):
  """Probabilities and t of one row over its visible keys."""
  s = scale * (k[vis] @ q_i)
  t = k[vis] @ r_i
  p = np.exp(s - s.max())
  p /= p.sum()
  return p, t


def forward(q, r, k, v, *, scale, mask):
  """Output ``[B, Tq, Hq, D]`` and effective weights ``a [B, Hq, Tq, Tk]`` (float64)."""
  q, r, k, v = (np.asarray(x, np.float64) for x in (q, r, k, v))
  batch, q_len, hq, _ = q.shape
  kv_len, hkv = k.shape[1], k.shape[2]
  group = hq // hkv
  o = np.zeros(q.shape)
  a = np.zeros((batch, hq, q_len, kv_len))
  for b in range(batch):
    mb = mask[min(b, mask.shape[0] - 1)]
    for h in range(hq):
      kh, vh = k[b, :, h // group], v[b, :, h // group]
      for i in range(q_len):
        vis = mb[i]
        if not vis.any():
          continue
        p, t = _row(q[b, i, h], r[b, i, h], kh, scale, vis)
        a_row = p * (1.0 + p @ t - t)
        a[b, h, i, vis] = a_row
        o[b, i, h] = a_row @ vh[vis]
  return o, a


def grads(q, r, k, v, g, *, scale, mask):
  """``(dq, dr, dk, dv)`` of ``sum(o * g)`` by explicit Jacobians (float64)."""
  q, r, k, v, g = (np.asarray(x, np.float64) for x in (q, r, k, v, g))
  batch, q_len, hq, _ = q.shape
  hkv = k.shape[2]
  group = hq // hkv
  dq, dr = np.zeros(q.shape), np.zeros(r.shape)
  dk, dv = np.zeros(k.shape), np.zeros(v.shape)
  for b in range(batch):
    mb = mask[min(b, mask.shape[0] - 1)]
    for h in range(hq):
      hk = h // group
      kh, vh = k[b, :, hk], v[b, :, hk]
      for i in range(q_len):
        vis = mb[i]
        if not vis.any():
          continue
        p, t = _row(q[b, i, h], r[b, i, h], kh, scale, vis)
        tbar = p @ t
        a_row = p * (1.0 + tbar - t)
        da = vh[vis] @ g[b, i, h]  # dL/da_j = g . v_j
        # a_j = p_j (1 + sum_l p_l t_l - t_j)
        jac_a_t = np.outer(p, p) - np.diag(p)  # [j, l] = d a_j / d t_l
        jac_a_p = np.diag(1.0 + tbar - t) + np.outer(p, t)  # [j, l] = d a_j / d p_l
        jac_p_s = np.diag(p) - np.outer(p, p)  # [l, m] = d p_l / d s_m
        dt = jac_a_t.T @ da
        ds = jac_p_s.T @ (jac_a_p.T @ da)
        kv = kh[vis]
        dq[b, i, h] += scale * ds @ kv
        dr[b, i, h] += dt @ kv
        dk[b, vis, hk] += scale * np.outer(ds, q[b, i, h]) + np.outer(dt, r[b, i, h])
        dv[b, vis, hk] += np.outer(a_row, g[b, i, h])
  return dq, dr, dk, dv
