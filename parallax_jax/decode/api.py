"""``parallax_decode``: Parallax attention of a few new queries over a KV cache."""

from __future__ import annotations

from jaxtyping import Array, Float, Int

from parallax_jax.attention.implementations import Registry
from parallax_jax.decode.validation import DecodeTuning, validate_decode

DECODE = Registry(
  "parallax_decode",
  {
    "xla": "parallax_jax.decode.xla:IMPLEMENTATION",
    "pallas_gpu": "pallas_kernels.gpu.decode:IMPLEMENTATION",
    "pallas_tpu": "pallas_kernels.tpu.decode:IMPLEMENTATION",
  },
  {"gpu": ("pallas_gpu", "xla"), "tpu": ("pallas_tpu", "xla")},
)


def parallax_decode(
  q: Float[Array, "B Tq Hq D"],
  r: Float[Array, "B Tq Hq D"],
  k_cache: Float[Array, "B S Hkv D"],
  v_cache: Float[Array, "B S Hkv D"],
  *,
  lengths: Int[Array, " B"],
  scale: float | None = None,
  window_size: int | None = None,
  implementation: str | None = None,
  interpret: bool = False,
  tuning: DecodeTuning | None = None,
) -> Float[Array, "B Tq Hq D"]:
  """Parallax attention of the last ``Tq`` positions of each row over its KV cache.

  Row ``b`` of the cache holds ``lengths[b]`` valid keys in slots ``0 .. lengths[b] - 1``
  (right-padded); its ``Tq`` queries sit at positions ``lengths[b] - Tq .. lengths[b] - 1``
  (end-aligned per row, the training op's convention) and see the causal (and windowed) keys
  before them (docs/design.md §13.1). Slots at or past ``lengths[b]`` may hold anything, NaN
  included, and never reach the output; a query that sees no key returns zeros.

  Args:
    q, r: ``[B, Tq, Hq, D]``, small ``Tq`` (1 to decode; a few to verify speculated tokens or
      prefill in chunks).
    k_cache, v_cache: ``[B, S, Hkv, D]``; any ``Hq / Hkv`` ratio (query head h reads kv head
      ``h // (Hq // Hkv)``). One dtype for all four: float32, bfloat16 or float16.
    lengths: ``[B]`` integer (int32) valid keys per row, ``0 <= lengths <= S`` (checked when
      concrete).
    scale: multiplies ``q.k`` only (``t = r.k`` is never scaled); default ``1 / sqrt(D)``.
    window_size: keep the ``W`` most recent keys of each query, its own included; None: all.
    implementation: None (best for the backend, logged once), "xla", "pallas_gpu" or
      "pallas_tpu"; an explicit path that cannot serve the call raises NotImplementedError.
    interpret: run the Pallas kernels in interpret mode (any backend).
    tuning: ``DecodeTuning`` (split count, key block, launch parameters) for the kernels;
      None: the split heuristic and the path's defaults.

  Returns:
    ``[B, Tq, Hq, D]`` in q's dtype (accumulation in float32). Forward only: decode has no VJP.
  """
  spec = validate_decode(
    q,
    r,
    k_cache,
    v_cache,
    lengths=lengths,
    scale=scale,
    window_size=window_size,
    interpret=interpret,
    tuning=tuning,
  )
  impl = DECODE.select(implementation, spec)
  return impl.fwd(q, r, k_cache, v_cache, lengths, spec)
