"""``experiments/check_model_grads.py`` on CPU: the packed batch, the gradient comparison on
known trees, and a run on the tiny config (the reference path against itself is exact)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from cli_runner import script_error

from experiments import check_model_grads as cmg
from parallax_jax.errors import UserError
from parallax_jax.model import ModelConfig


def test_packed_batch_restarts_positions_per_document():
  cfg = ModelConfig(
    vocab_size=50, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=16
  )
  b = cmg.packed_batch(cfg, 3, 256, mean_doc=20, seed=1)
  seg, pos = b["segment_ids"], b["positions"]
  assert seg.shape == pos.shape == b["inputs"].shape == b["targets"].shape == (3, 256)
  assert np.all(seg[:, 0] == 1) and np.all(np.diff(seg, axis=1) >= 0)
  assert np.all(np.diff(seg, axis=1) <= 1) and seg.max(axis=1).min() > 3  # several documents
  starts = np.concatenate([np.ones((3, 1), bool), np.diff(seg, axis=1) == 1], axis=1)
  assert np.all(pos[starts] == 0)
  assert np.all(pos[:, 1:][~starts[:, 1:]] == pos[:, :-1][~starts[:, 1:]] + 1)
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_compare_on_known_gradients():
  ref = {"a": np.array([3.0, 4.0]), "b": np.array([[1.0, 0.0]])}
  twice = {"a": 2 * ref["a"], "b": ref["b"]}  # |diff| = 5, |ref| = sqrt(26)
  out = cmg.compare(twice, ref)
  assert out["grad_rel_error"] == pytest.approx(5 / np.sqrt(26))
  assert out["worst_param"] == "['a']" and out["worst_param_rel_error"] == pytest.approx(1.0)
  flipped = cmg.compare({k: -v for k, v in ref.items()}, ref)
  assert flipped["grad_rel_error"] == pytest.approx(2.0) and flipped[
    "grad_cosine"
  ] == pytest.approx(-1.0)


def test_tiny_config_reference_against_itself_is_exact(tmp_path):
  argv = ["--config", "configs/tiny.py", "--batch", "1", "--seq-len", "64", "--mean-doc", "20"]
  argv += ["--impls", "xla", "--dtypes", "float32,bfloat16", "--out-dir", str(tmp_path)]
  result = cmg.main(argv)
  same, half = result["rows"]
  assert same["loss_diff"] == 0.0 and same["grad_rel_error"] == 0.0
  assert same["grad_cosine"] == pytest.approx(1.0)
  assert 0.0 < half["grad_rel_error"] < 0.1 and half["grad_cosine"] > 0.99  # bf16 rounding only
  assert result["documents_per_row"] > 1
  assert len(list(tmp_path.glob("check_model_grads_*.md"))) == 1
  # the arguments main parsed, not the caller's sys.argv (pytest's); the libraries' versions
  assert result["command"] == "python -m experiments.check_model_grads " + " ".join(argv)
  assert {"jax", "jaxlib", "flax"} <= set(result["versions"])


def test_sweep_point_is_chosen_by_its_variant_name():
  """``--point`` takes the variant name, as ``sweep --points`` does (the point's own name is
  ``variant=...``)."""

  def args(point):
    return argparse.Namespace(sweep="configs/sweeps/gpu_study_lm.py", point=point, override=[])

  cfg, seq_len = cmg.model_config(args("muon+softmax_s0"))
  assert cfg.attention == "softmax" and cfg.num_layers == 12 and seq_len == 2048
  with pytest.raises(UserError, match="must select one point"):
    cmg.model_config(args("muon+*_s0"))


@pytest.mark.parametrize(
  "argv, says",
  [
    (
      ["--sweep", "configs/sweeps/smoke.py", "--point", "attention=*"],
      "--point: 'attention=*' must select one point of the sweep, got attention=parallax, "
      "attention=softmax",
    ),
    (
      ["--config", "configs/tiny.py", "--point", "softmax"],
      "--point selects a point of --sweep; with --config, drop it",
    ),
  ],
  ids=["several-points", "point-without-sweep"],
)
def test_a_point_argument_mistake_is_one_line_before_anything_runs(tmp_path, capsys, argv, says):
  """A --point matching several points ended in a bare message with exit 1; a --point beside
  --config was silently ignored (the run checked --config's model)."""
  error = script_error(capsys, cmg.main, [*argv, "--out-dir", str(tmp_path / "out")])
  assert error.endswith(f": error: {says}")
  assert not (tmp_path / "out").exists()
