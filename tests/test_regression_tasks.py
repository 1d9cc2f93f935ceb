"""In-context linear regression tasks ("linreg", "drift_linreg"): rows, drift statistics,
baselines against NumPy least squares and a Kalman filter, the regression head and its MSE loss,
config errors, sweep metric, and a short end-to-end train logging eval_mse."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from parallax_jax.data.config import DataConfig
from parallax_jax.data.regression import sample_points
from parallax_jax.data.synthetic import check_task, describe_task, make_task_dataset
from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.train.step import eval_metrics, logical_axes, loss_fn, make_eval_step

ROOT = Path(__file__).resolve().parents[1]
D = 4
LIN = DataConfig(source="linreg", regression_dim=D)
DRIFT = DataConfig(source="drift_linreg", regression_dim=D, regression_drift=0.2)
MODEL = ModelConfig(
  input_dim=D + 1,
  output_dim=1,
  d_model=32,
  num_layers=2,
  num_heads=2,
  num_kv_heads=1,
  head_dim=16,
  mlp_dim=64,
  compute_dtype="float32",
)


def _batch(cfg, *, seq_len=20, batch_size=4, split="train", seed=0):
  ds = make_task_dataset(cfg, seq_len=seq_len, batch_size=batch_size, split=split, seed=seed)
  return next(iter(ds))


def _pairs(batch):
  """(x [B, n, d], y [B, n]) decoded from the interleaved tokens."""
  inputs = batch["inputs"]
  return inputs[:, 0::2, :-1], inputs[:, 1::2, -1]


def test_rows_interleave_x_and_y_tokens():
  batch = _batch(LIN, seq_len=20, batch_size=4)
  assert batch["inputs"].shape == (4, 20, D + 1) and batch["inputs"].dtype == np.float32
  for key in ("targets", "loss_mask"):
    assert batch[key].shape == (4, 20) and batch[key].dtype == np.float32
  for key in ("segment_ids", "positions"):
    assert batch[key].shape == (4, 20) and batch[key].dtype == np.int32
  inputs = batch["inputs"]
  np.testing.assert_array_equal(inputs[:, 0::2, -1], 0)  # x-tokens: [x_i, 0]
  np.testing.assert_array_equal(inputs[:, 1::2, :-1], 0)  # y-tokens: [0, y_i]
  x, y = _pairs(batch)
  np.testing.assert_array_equal(batch["targets"][:, 0::2], y)  # y_i predicted at x_i's token
  np.testing.assert_array_equal(batch["targets"][:, 1::2], 0)
  np.testing.assert_array_equal(batch["loss_mask"], np.tile([1.0, 0.0], (4, 10)))
  np.testing.assert_array_equal(batch["segment_ids"], 1)
  np.testing.assert_array_equal(batch["positions"], np.tile(np.arange(20), (4, 1)))
  for row in range(4):  # noise-free and stationary: one w fits every pair of a row exactly
    w, *_ = np.linalg.lstsq(x[row].astype(np.float64), y[row], rcond=None)
    np.testing.assert_allclose(x[row] @ w, y[row], atol=1e-5)


def test_stationary_weights_and_inputs_have_the_stated_scale():
  batch = _batch(LIN, seq_len=40, batch_size=512)
  x, y = _pairs(batch)
  assert abs(x.std() - 1.0) < 0.02 and abs(x.mean()) < 0.02
  assert abs(np.mean(y**2) - 1.0) < 0.1  # E[y^2] = E|w|^2 = d * (1/d)
  noisy = DataConfig(source="linreg", regression_dim=D, regression_noise=0.5)
  _, y_noisy = _pairs(_batch(noisy, seq_len=40, batch_size=512))
  assert abs(np.mean(y_noisy**2) - 1.25) < 0.12


def test_drift_increments_have_std_drift():
  rng = np.random.default_rng(0)
  draws = [sample_points(rng, 50, D, noise=0.0, drift=0.2) for _ in range(200)]
  x = np.stack([d[0] for d in draws])
  y = np.stack([d[1] for d in draws])
  w = np.stack([d[2] for d in draws])
  np.testing.assert_allclose(y, np.einsum("rnd,rnd->rn", w, x), atol=1e-12)
  steps = np.diff(w, axis=1)
  assert abs(steps.std() - 0.2) < 0.005 and abs(steps.mean()) < 0.005
  assert abs(w[:, 0].std() - D**-0.5) < 0.03
  # Increments are independent of each other and of the start.
  assert abs(np.corrcoef(steps[:, :-1].ravel(), steps[:, 1:].ravel())[0, 1]) < 0.03


def test_drift_shows_in_the_rows_as_growing_y_variance():
  """E[y_i^2] = 1 + d drift^2 (i - 1): read off the generated batches alone."""
  _, y = _pairs(_batch(DRIFT, seq_len=64, batch_size=2048))
  slope, intercept = np.polyfit(np.arange(32), np.mean(y**2, axis=0), 1)
  assert abs(slope / (D * 0.2**2) - 1) < 0.1 and abs(intercept - 1) < 0.15
  assert describe_task(DRIFT, 64)["zero_baseline_mse"] == pytest.approx(1 + D * 0.04 * 15.5)


def test_rows_are_deterministic_seeded_and_resumable():
  a = _batch(DRIFT, seed=1)
  b = _batch(DRIFT, seed=1)
  c = _batch(DRIFT, seed=2)
  e1, e2 = _batch(DRIFT, split="eval", seed=1), _batch(DRIFT, split="eval", seed=9)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(a["inputs"], c["inputs"])
  np.testing.assert_array_equal(e1["inputs"], e2["inputs"])  # eval ignores the seed
  assert not np.array_equal(a["inputs"], e1["inputs"])
  it = iter(make_task_dataset(DRIFT, seq_len=20, batch_size=2, split="train", seed=0))
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  resumed = iter(make_task_dataset(DRIFT, seq_len=20, batch_size=2, split="train", seed=0))
  resumed.set_state(state)
  for w, g in zip(want, [next(resumed) for _ in range(2)], strict=True):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])


def _least_squares(x, y, ridge):
  """Prediction of y_i from pairs < i: min-norm least squares (ridge = 0) or ridge."""
  out = np.zeros(len(y))
  for i in range(1, len(y)):
    xs, ys = x[:i].astype(np.float64), y[:i].astype(np.float64)
    if ridge:
      w = np.linalg.solve(xs.T @ xs + ridge * np.eye(xs.shape[1]), xs.T @ ys)
    else:
      w = np.linalg.lstsq(xs, ys, rcond=None)[0]
    out[i] = x[i] @ w
  return out


def _kalman(x, y, *, d, noise, drift):
  """One-step-ahead Kalman prediction of y_i for the random walk w_{i+1} = w_i + drift eps_i."""
  mean, cov = np.zeros(d), np.eye(d) / d
  out = np.zeros(len(y))
  for i in range(len(y)):
    xi = x[i].astype(np.float64)
    out[i] = xi @ mean
    gain = cov @ xi / (xi @ cov @ xi + noise**2)
    mean = mean + gain * (y[i] - out[i])
    cov = cov - np.outer(gain, xi @ cov) + drift**2 * np.eye(d)
  return out


def test_eval_baselines_match_least_squares_and_a_kalman_filter():
  lin = _batch(LIN, seq_len=24, batch_size=4, split="eval")
  x, y = _pairs(lin)
  for row in range(4):
    want = _least_squares(x[row], y[row], ridge=0.0)
    np.testing.assert_allclose(lin["baseline_ols"][row, 0::2], want, atol=2e-4)
    np.testing.assert_allclose(lin["baseline_bayes"][row, 0::2], want, atol=2e-4)
    np.testing.assert_array_equal(lin["baseline_ols"][row, 1::2], 0)
  assert "baseline_ols" not in _batch(LIN, split="train")

  cfg = dataclasses.replace(DRIFT, regression_noise=0.3)
  drift = _batch(cfg, seq_len=24, batch_size=4, split="eval")
  x, y = _pairs(drift)
  for row in range(4):
    ridge = _least_squares(x[row], y[row], ridge=D * 0.3**2)  # stationary prior, noise 0.3
    np.testing.assert_allclose(drift["baseline_ols"][row, 0::2], ridge, atol=2e-4)
    kalman = _kalman(x[row], y[row], d=D, noise=0.3, drift=0.2)
    np.testing.assert_allclose(drift["baseline_bayes"][row, 0::2], kalman, atol=2e-4)


def _params(cfg, seed=0):
  return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def _graphdef(cfg):
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[0]


def test_regression_model_shapes_axes_causality_and_grads():
  params = _params(MODEL)
  assert "embed" not in params and "head" not in params
  assert sum(v.size for v in jax.tree.leaves(params)) == MODEL.num_params()
  axes = logical_axes(MODEL)
  flat = dict(nnx.to_flat_state(nnx.state(Transformer(MODEL, rngs=nnx.Rngs(0)), nnx.Param)))
  assert set(axes) == set(flat)
  for path, names in axes.items():
    assert len(names) == flat[path].get_value().ndim, path
  assert axes[("input_proj", "kernel")] == (None, "embed")
  assert axes[("output_head", "kernel")] == ("embed", None)

  batch = jax.tree.map(jnp.asarray, _batch(LIN, seq_len=20, batch_size=2))
  graphdef = _graphdef(MODEL)
  predict = jax.jit(lambda p, inputs: nnx.merge(graphdef, p)(inputs))
  pred = predict(params, batch["inputs"])
  assert pred.shape == (2, 20, 1) and pred.dtype == jnp.float32
  pred2 = predict(params, batch["inputs"].at[:, 12:].set(7.0))
  np.testing.assert_array_equal(pred[:, :12], pred2[:, :12])
  assert not np.allclose(pred[:, 12:], pred2[:, 12:])

  grads = jax.jit(jax.grad(lambda p: loss_fn(p, graphdef, batch)[0]))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
  for name in ("input_proj", "output_head"):
    assert np.abs(grads[name]["kernel"]).max() > 0, name
  assert np.abs(grads["input_bias"]).max() > 0
  assert np.abs(grads["blocks"][0]["attn"]["r_proj"]["kernel"]).max() > 0


def test_mse_loss_and_eval_metrics_match_numpy():
  params = _params(MODEL)
  graphdef = _graphdef(MODEL)
  batch = _batch(DRIFT, seq_len=20, batch_size=4, split="eval")
  batch["loss_mask"][:, :4] = 0.0  # an arbitrary mask: the loss must follow it
  device = jax.tree.map(jnp.asarray, batch)
  predict = jax.jit(lambda p, inputs: nnx.merge(graphdef, p)(inputs)[..., 0])
  pred = np.asarray(predict(params, device["inputs"]), np.float64)
  y, m = batch["targets"].astype(np.float64), batch["loss_mask"].astype(np.float64)

  loss, count = jax.jit(loss_fn, static_argnums=1)(params, graphdef, device)
  assert count == m.sum()
  np.testing.assert_allclose(loss, np.sum(m * (pred - y) ** 2) / m.sum(), rtol=1e-5)

  sums = jax.device_get(jax.jit(make_eval_step(graphdef))(params, device))
  metrics = eval_metrics({k: float(v) for k, v in sums.items()})
  want = {
    "eval_mse": np.sum(m * (pred - y) ** 2) / m.sum(),
    "eval_mse_baseline_zero": np.sum(m * y**2) / m.sum(),
    "eval_mse_baseline_ols": np.sum(m * (batch["baseline_ols"] - y) ** 2) / m.sum(),
    "eval_mse_baseline_bayes": np.sum(m * (batch["baseline_bayes"] - y) ** 2) / m.sum(),
  }
  assert set(metrics) == {"eval_loss", "eval_tokens", *want}
  for key, value in want.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-5, err_msg=key)
  assert metrics["eval_loss"] == metrics["eval_mse"]
  assert metrics["eval_tokens"] == int(m.sum())  # the positions the means are over


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(source="linreg", regression_dim=0), "regression_dim"),
    (dict(source="linreg", regression_noise=-0.1), "regression_noise"),
    (dict(source="linreg", regression_noise=float("nan")), "regression_noise"),
    (dict(source="linreg", regression_drift=0.1), "regression_drift.*drift_linreg"),
    (dict(source="drift_linreg"), "regression_drift.*> 0"),
  ],
)
def test_bad_data_config_names_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    DataConfig(**kwargs)


def test_bad_task_and_model_combinations_name_the_field():
  with pytest.raises(ValueError, match="regression_dimm"):
    DataConfig.from_dict({"source": "linreg", "regression_dimm": 3})
  with pytest.raises(ValueError, match="seq_len"):
    check_task(LIN, 21)
  with pytest.raises(ValueError, match="model.input_dim=5"):
    check_task(LIN, 20, dataclasses.replace(MODEL, input_dim=4))
  with pytest.raises(ValueError, match="model.output_dim=1"):
    check_task(LIN, 20, dataclasses.replace(MODEL, output_dim=0, tie_embeddings=False))
  with pytest.raises(ValueError, match="model.input_dim=0"):
    check_task(DataConfig(source="mqar"), 32, MODEL)
  check_task(LIN, 20, MODEL)
  with pytest.raises(ValueError, match="model.input_dim"):
    dataclasses.replace(MODEL, input_dim=-1)
  with pytest.raises(ValueError, match="model.output_dim"):
    dataclasses.replace(MODEL, output_dim=True)
  with pytest.raises(ValueError, match="model.logits_chunk"):
    dataclasses.replace(MODEL, logits_chunk=8)
  with pytest.raises(ValueError, match="model.tie_embeddings"):
    dataclasses.replace(MODEL, output_dim=0)


def test_input_and_output_layers_are_trained_like_embeddings():
  from parallax_jax.train.optimizer import OptimizerConfig, decay_mask, muon_dimension_numbers

  params = _params(MODEL)
  muon = muon_dimension_numbers(params)
  assert muon["input_proj"]["kernel"] is None and muon["output_head"]["kernel"] is None
  assert muon["blocks"][0]["mlp"]["up"]["kernel"] is not None
  mask = decay_mask(OptimizerConfig())(params)
  assert not mask["input_proj"]["kernel"] and not mask["output_head"]["kernel"]


def test_sweep_ranks_regression_points_by_eval_mse(tmp_path):
  from parallax_jax.sweeps.config import build_sweep
  from parallax_jax.sweeps.report import metric_name, write_tables

  sweep = build_sweep(
    {"base": str(ROOT / "configs" / "linreg_tiny.py"), "axes": {"model.attention": ["softmax"]}}
  )
  point_dir = tmp_path / "points" / sweep.points[0].name
  point_dir.mkdir(parents=True)
  record = {"step": 5, "loss": 0.5, "eval_mse": 0.4, "eval_mse_baseline_zero": 1.0}
  (point_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
  (row,) = write_tables(sweep, tmp_path)
  assert row["eval_mse"] == 0.4 and row["eval_mse_baseline_zero"] == 1.0
  assert metric_name(sweep, [row]) == "eval_mse"
  assert "metric: `eval_mse` (lower is better)" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("config", ["linreg_tiny.py", "drift_linreg_tiny.py"])
def test_trainer_logs_eval_mse_and_baselines(tmp_path, config):
  from parallax_jax.train.config import load_config
  from parallax_jax.train.loop import train
  from parallax_jax.train.metrics import read_metrics

  cfg = load_config(
    ROOT / "configs" / config,
    [
      "model.d_model=32",
      "model.num_layers=1",
      "model.head_dim=8",
      "model.mlp_dim=64",
      "train.batch_size=8",
      "train.seq_len=16",
      "train.steps=4",
      "train.log_every=2",
      "train.eval_every=4",
      "train.eval_batches=1",
      "train.progress_bar=false",
    ],
  )
  summary = train(cfg, tmp_path)
  records = read_metrics(tmp_path)
  assert summary["final_step"] == 4 and all("perplexity" not in r for r in records)
  last = records[-1]
  assert last["eval_mse"] > 0 and last["eval_loss"] == last["eval_mse"]
  assert last["eval_mse_baseline_bayes"] <= last["eval_mse_baseline_ols"] + 1e-6
  assert last["eval_mse_baseline_ols"] < last["eval_mse_baseline_zero"]
  config_json = json.loads((tmp_path / "config.json").read_text())
  assert config_json["data"]["source"]["task"] == cfg.data.source
  assert config_json["data"]["source"]["num_points"] == 8
