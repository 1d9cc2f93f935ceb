"""``experiments/bench_fwd_math.py`` and ``bench_bwd_math.py`` (one runner) on CPU: every variant
runs in the Mosaic GPU interpreter (device times need a GPU; the forward variants' values are
checked against the oracle in test_mosaic_gpu_forward.py, the backward's bits in
test_mosaic_gpu_backward.py), and the table's ratios are read the right way round."""

from __future__ import annotations

import functools
import json

import jax
import pytest

from experiments import bench_bwd_math, bench_fwd_math, bench_kernels
from pallas_kernels.mosaic_gpu import common, forward
from parallax_jax.attention.masking import MaskSpec

BENCHES = [
  pytest.param(bench_fwd_math, "bench_fwd_math", id="fwd"),
  pytest.param(bench_bwd_math, "bench_bwd_math", id="bwd"),
]


@pytest.mark.slow  # ~5-10 s each: the interpreter compiles each variant
@pytest.mark.parametrize("bench,name", BENCHES)
def test_runs_every_variant(tmp_path, bench, name):
  argv = ["--interpret", "--shapes", "1x128", "--heads", "2", "--head-dim", "64", "--iters", "1"]
  with common.interpret_compile_cache():
    result = bench.main(argv + ["--out-dir", str(tmp_path)])
  rows = result["rows"]
  assert [r["variant"] for r in rows] == list(bench.VARIANTS)
  # The fused kernel's two row chunks are wgmma's M: D = 128 only, so at D = 64 they are one
  # recorded error each and the run goes on.
  chunked = [r for r in rows if "chunks2" in r["variant"]]
  assert all("fused_chunks must be 1 or 2" in r["error"] for r in chunked), chunked
  rest = [r for r in rows if r not in chunked]
  assert all("error" not in r and r["wall_ms"] > 0 for r in rest), rest
  (written,) = tmp_path.glob(f"{name}_*.json")
  assert json.loads(written.read_text())["rows"] == json.loads(json.dumps(rows))
  (md,) = tmp_path.glob(f"{name}_*.md")
  assert md.read_text().startswith(f"# {name} ")


@pytest.mark.parametrize("bench,name", BENCHES)
def test_unknown_variant_is_one_line(capsys, bench, name):
  with pytest.raises(SystemExit):
    bench.main(["--variants", f"{next(iter(bench.VARIANTS))},nope"])
  assert "--variants: unknown ['nope']" in capsys.readouterr().err


def test_table_ratio_is_variant_over_the_first():
  rows = [
    {"B": 2, "L": 8192, "variant": "v1", "device_us": 2000.0, "device_all_us": 2100.0},
    {"B": 2, "L": 8192, "variant": "fma", "device_us": 1800.0, "device_all_us": 2200.0},
    {"B": 2, "L": 8192, "variant": "fma_first", "device_us": None},
  ]
  meta = {"date": "d", "device": "x", "versions": {}, "command": "c", "config": {}}
  variants = {k: bench_fwd_math.VARIANTS[k] for k in ("v1", "fma", "fma_first")}
  md = bench_fwd_math.to_markdown({**meta, "variants": variants, "rows": rows})
  parallax, everything = md.split("All kernels' device time")
  assert "| 2 | 8192 | 2000.0 | 1800.0 | - | 0.900 | - |" in parallax
  assert "| 2 | 8192 | 2100.0 | 2200.0 | - | 1.048 | - |" in everything


@pytest.mark.parametrize(
  "bench,build,variant,base,slots",
  [
    pytest.param(
      bench_fwd_math,
      bench_fwd_math.forward_call,
      "fma_first_producer24_s3",
      "fma_first_producer24_s2",
      3,
      id="fwd-s3",
    ),
    pytest.param(  # the default tile's ring at D = 128: 4 slots since session 25
      bench_fwd_math,
      bench_fwd_math.forward_call,
      "fma_first_producer24",
      "fma_first_producer24_s2",
      4,
      id="fwd-default",
    ),
    pytest.param(
      bench_bwd_math,
      bench_bwd_math.backward_call,
      "packed_producer24_stack_qr_s3",
      "packed_producer24_stack_qr",
      3,
      id="bwd-s3",
    ),
  ],
)
def test_ring_depth_variants_reach_the_kernel(bench, build, variant, base, slots):
  """A ring-depth variant traces its kernels with ``slots`` ring slots (that many barriers per
  ring) where its base does not, at a length whose key range does not clip the ring, and is
  otherwise the base variant."""
  length, d = 512, 128
  inputs = bench_kernels.make_inputs(1, length, 2, d, "bfloat16")
  if bench is bench_bwd_math:  # abstract residuals: tracing needs only their shapes
    mask = MaskSpec(length, length, True, None)
    fwd = functools.partial(forward.parallax_fwd, scale=d**-0.5, mask=mask, interpret=True)
    inputs = (*inputs, jax.eval_shape(lambda *a: fwd(*a, None)[1], *inputs[:4]))

  def without_depth(name):
    return {k: v for k, v in bench.VARIANTS[name].items() if k not in ("num_stages", "stages")}

  assert without_depth(variant) == without_depth(base)

  def traced(name):
    fn, args = build(d, length, None, True, name, inputs)
    return str(jax.make_jaxpr(fn)(*args))

  marker = f"barrier[{slots}]"
  assert marker in traced(variant) and marker not in traced(base)
