"""What the forward saves for the backward (shared by the XLA path and the kernels)."""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Array, Float


class Residuals(NamedTuple):
  """Forward residuals of Parallax attention.

  Together with the inputs (q, r, k, v, segment_ids) they let the backward recompute every
  score tile: ``p = exp(scale q.k - lse)`` and ``t = r.k``.

  Attributes:
    o: ``[B, Tq, Hq, D]`` output, input dtype (for ``dO . o``).
    barv: ``[B, Tq, Hq, D]`` softmax output ``sum_j p_j v_j``, input dtype (for ``dO . barv``).
    lse: ``[B, Hq, Tq]`` float32 (float64 for float64 inputs) natural log-sum-exp of the
      scaled scores; ``-inf`` on rows that see no key.
    bart: ``[B, Hq, Tq]`` float32 (likewise) ``tbar = sum_j p_j r.k_j``.
  """

  o: Float[Array, "B Tq Hq D"]
  barv: Float[Array, "B Tq Hq D"]
  lse: Float[Array, "B Hq Tq"]
  bart: Float[Array, "B Hq Tq"]
