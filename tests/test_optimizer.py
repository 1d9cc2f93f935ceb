"""Optimizer groups, masks and schedules on the real parameter tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optax.contrib import MuonDimensionNumbers as MDN

from parallax_jax.model import ModelConfig, Transformer
from parallax_jax.train.optimizer import (
  OptimizerConfig,
  decay_mask,
  make_optimizer,
  make_schedule,
  muon_dimension_numbers,
)

CFG = ModelConfig(
  vocab_size=128,
  d_model=64,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=16,
  mlp_dim=96,
  tie_embeddings=False,
)
PARAMS = nnx.to_pure_dict(nnx.state(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param))


def _flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(
    tree, is_leaf=lambda x: x is None or isinstance(x, MDN)
  )[0]
  return {jax.tree_util.keystr(p): v for p, v in leaves}


def test_muon_groups_by_path():
  dims = _flat(muon_dimension_numbers(PARAMS))
  attn = "['blocks'][0]['attn']"
  for proj in ("q_proj", "r_proj", "k_proj", "v_proj"):
    assert dims[f"{attn}['{proj}']['kernel']"] == MDN((0,), (1, 2))
  assert dims[f"{attn}['o_proj']['kernel']"] == MDN((0, 1), (2,))
  assert dims["['blocks'][1]['mlp']['down']['kernel']"] == MDN((0,), (1,))
  for adam in ("['embed']", "['head']", f"{attn}['q_norm']['scale']", "['final_norm']['scale']"):
    assert dims[adam] is None, adam


def test_weight_decay_mask():
  mask = _flat(decay_mask(OptimizerConfig())(PARAMS))
  assert mask["['blocks'][0]['attn']['r_proj']['kernel']"]
  assert not mask["['embed']"] and not mask["['final_norm']['scale']"]
  assert _flat(decay_mask(OptimizerConfig(decay_embeddings=True))(PARAMS))["['embed']"]


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_schedules(schedule):
  cfg = OptimizerConfig(
    schedule=schedule, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1, decay_fraction=0.2
  )
  lr = make_schedule(1.0, cfg, 100)
  assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1.0) < 1e-6
  if schedule == "wsd":
    assert float(lr(79)) == pytest.approx(1.0) and float(lr(100)) == pytest.approx(0.1)
  if schedule == "cosine":  # cosine from step 10 to 100: 0.1 + 0.9 (1 + cos(pi (t - 10) / 90)) / 2
    for t in (25, 55, 85, 100):
      want = 0.1 + 0.45 * (1 + np.cos(np.pi * (t - 10) / 90))
      assert float(lr(t)) == pytest.approx(want, rel=1e-5), t


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
@pytest.mark.parametrize("warmup", [10, 90, 99])
def test_the_decay_reaches_the_end_lr_at_the_last_step(schedule, warmup):
  """Whatever the warmup leaves of the 100 steps, the LR ends at min_lr_ratio x peak at step 100
  (wsd's 20% decay once ran past the end when warmup + decay > steps, stopping mid-way)."""
  cfg = OptimizerConfig(
    schedule=schedule, warmup_steps=warmup, min_lr_ratio=0.1, decay_fraction=0.2
  )
  lr = make_schedule(1.0, cfg, 100)
  assert float(lr(warmup)) == pytest.approx(1.0) and float(lr(100)) == pytest.approx(0.1)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_no_warmup_starts_at_the_peak(schedule):
  """warmup_steps=0: the peak from step 0 (optax's warmup_constant_schedule gave 0 forever)."""
  lr = make_schedule(1.0, OptimizerConfig(schedule=schedule, warmup_steps=0), 100)
  assert float(lr(0)) == pytest.approx(1.0) and float(lr(1)) > 0.9


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimizer_step_reduces_a_quadratic(name):
  tx, schedules = make_optimizer(
    OptimizerConfig(
      name=name, learning_rate=0.01, adam_learning_rate=0.02, warmup_steps=0, weight_decay=0.0
    ),
    50,
  )
  params = jax.tree.map(lambda x: x.astype(jnp.float32), PARAMS)
  loss = lambda p: sum(jnp.sum(x * x) for x in jax.tree.leaves(p))
  state = tx.init(params)
  before = loss(params)

  @jax.jit  # one compile instead of one per eager op of every leaf's update
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  assert loss(params) < before and np.isfinite(float(loss(params)))
  # Warmup 0, cosine over 50 steps from the peak down to min_lr_ratio (0.1) of it; under Muon
  # the AdamW group follows its own peak.
  peaks = {"lr": 0.01} if name == "adamw" else {"lr": 0.01, "adam_lr": 0.02}
  assert set(schedules) == set(peaks)
  for key, peak in peaks.items():
    for t in (0, 10, 25, 50):
      want = peak * (0.1 + 0.45 * (1 + np.cos(np.pi * t / 50)))
      assert float(schedules[key](t)) == pytest.approx(want, rel=1e-5), (key, t)


def test_muon_adam_learning_rate_none_is_learning_rate_and_a_given_one_is_used():
  cfg = OptimizerConfig(name="muon", learning_rate=0.02, warmup_steps=2, schedule="constant")
  _, schedules = make_optimizer(cfg, 10)
  assert float(schedules["adam_lr"](5)) == pytest.approx(0.02)
  _, schedules = make_optimizer(OptimizerConfig(**{**cfg.__dict__, "adam_learning_rate": 3e-3}), 10)
  assert float(schedules["adam_lr"](5)) == pytest.approx(3e-3)


@pytest.mark.parametrize(
  "field,value",
  [
    ("adam_learning_rate", 0.0),  # was replaced by learning_rate silently
    ("adam_learning_rate", -1.0),
    ("adam_learning_rate", "abc"),
    ("learning_rate", float("nan")),
    ("learning_rate", float("inf")),
    ("b1", 1.0),
    ("b2", -0.1),
    ("muon_beta", 1.0),
    ("eps", 0.0),
    ("min_lr_ratio", 1.5),
    ("decay_fraction", float("nan")),
    ("weight_decay", -0.1),
    ("muon_ns_steps", 0),
    ("muon_ns_steps", 2.5),
    ("warmup_steps", None),
    ("clip_norm", float("inf")),
    ("decay_embeddings", "no"),
  ],
)
def test_bad_optimizer_values_name_the_key(field, value):
  from parallax_jax.errors import UserError

  with pytest.raises(UserError, match=f"optimizer.{field} must be"):
    OptimizerConfig(name="muon", **{field: value})


@pytest.mark.parametrize("warmup", [5, 9, 10, 50])
def test_a_warmup_longer_than_the_run_is_shortened_and_said(warmup, caplog):
  """A 10-step run of a config with a longer warmup still reaches its peak (at step 9) and the
  log says the warmup it runs; a warmup that fits is run as given, nothing said."""
  tx, schedules = make_optimizer(OptimizerConfig(warmup_steps=warmup, learning_rate=1.0), 10)
  runs = min(warmup, 9)
  assert float(schedules["lr"](runs)) == pytest.approx(1.0)
  assert float(schedules["lr"](runs - 1)) < 1.0
  said = f"optimizer.warmup_steps={warmup} does not end before train.steps=10" in caplog.text
  assert said == (warmup >= 10) and (f"runs {runs} steps instead" in caplog.text) == said


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_an_adam_learning_rate_adamw_ignores_is_said(name, caplog):
  """Muon's AdamW-group LR means nothing to 'adamw' (e.g. lm_0p6b switched to adamw): a warning,
  not silence; under Muon it is used, nothing said."""
  make_optimizer(OptimizerConfig(name=name, learning_rate=0.02, adam_learning_rate=3e-3), 10)
  said = "optimizer.adam_learning_rate=0.003 is Muon's" in caplog.text
  assert said == (name == "adamw"), caplog.text


@pytest.mark.parametrize("muon_adam_decay", ["matrices", "all"])
def test_a_muon_adam_decay_adamw_ignores_is_said(muon_adam_decay, caplog):
  """muon_adam_decay='all' asks for norms to be decayed; 'adamw' never does: a warning, not
  silence (the default 'matrices' is what adamw does: nothing said)."""
  make_optimizer(OptimizerConfig(name="adamw", muon_adam_decay=muon_adam_decay), 10)
  said = "optimizer.muon_adam_decay='all' is Muon's" in caplog.text
  assert said == (muon_adam_decay == "all"), caplog.text


@pytest.mark.parametrize(
  "muon_adam_decay, decay_embeddings", [("matrices", False), ("matrices", True), ("all", False)]
)
def test_what_muons_adamw_group_decays(muon_adam_decay, decay_embeddings):
  """With a zero gradient an update is the decay alone: -lr * wd * p on exactly the leaves the
  mode decays. 'matrices' (the default) decays as 'adamw' does (norms never, embeddings and head
  with decay_embeddings); 'all' is optax's muon (every AdamW-group leaf, as runs before
  2026-12-05 trained). The Muon matrices decay at the Muon LR either way."""
  lr, adam_lr, wd = 0.02, 0.003, 0.1
  cfg = OptimizerConfig(
    name="muon",
    learning_rate=lr,
    adam_learning_rate=adam_lr,
    schedule="constant",
    warmup_steps=0,
    weight_decay=wd,
    decay_embeddings=decay_embeddings,
    clip_norm=None,
    muon_adam_decay=muon_adam_decay,
  )
  tx, _ = make_optimizer(cfg, 10)
  params = jax.tree.map(lambda x: x.astype(jnp.float32) + 1.0, PARAMS)  # no zero leaf
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  for name, u in _flat(updates).items():
    p = _flat(params)[name]
    embedding = name.startswith("['embed']") or name.startswith("['head']")
    if "kernel" in name and not embedding:
      want = -lr * wd * p  # Muon's group
    elif muon_adam_decay == "all" or (embedding and decay_embeddings):
      want = -adam_lr * wd * p
    else:
      want = np.zeros_like(p)  # norm scales; embeddings without decay_embeddings
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-5, atol=1e-9, err_msg=name)


# Float64 NumPy references written from the published update rules (optax's documented forms):
# AdamW (decoupled decay, bias correction, eps outside the square root), optax.contrib.muon's
# AdamW group (the same with Nesterov: NAdam's bias-corrected mix of momentum and gradient),
# and Muon (EMA momentum with that Nesterov mix, 5 quintic Newton-Schulz steps on the
# Frobenius-normalised [fan_in, fan_out] matrix, scaled by sqrt(max(1, fan_out / fan_in))).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _lr_reference(peak, cfg, total, t):
  """Linear warmup from 0 (shortened to total - 1), then cosine to min_lr_ratio x peak."""
  warmup = min(cfg.warmup_steps, total - 1)
  if t < warmup:
    return peak * t / warmup
  end = peak * cfg.min_lr_ratio
  return end + (peak - end) * 0.5 * (1 + np.cos(np.pi * min(t - warmup, total) / (total - warmup)))


def _orthogonalised(m, reduce, out, eps):
  perm = (*reduce, *out)
  x = np.transpose(m, perm).reshape(np.prod([m.shape[a] for a in reduce]), -1)
  rows, cols = x.shape
  x = x.T if rows > cols else x
  x = x / (np.linalg.norm(x) + eps)
  a, b, c = NS_COEFFS
  for _ in range(5):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  x = x.T if rows > cols else x
  y = x.reshape([m.shape[i] for i in perm]).transpose(np.argsort(perm))
  return y * np.sqrt(max(1.0, cols / rows))


def _reference_steps(cfg, total, params, grads_seq, groups):
  """Params after each step; ``groups[name]``: ("muon", reduce, out) or ("adam", decayed)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  adam_peak = cfg.adam_learning_rate or cfg.learning_rate
  out = []
  for t, g in enumerate(grads_seq):
    g = {k: np.asarray(x, np.float64) for k, x in g.items()}
    norm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
    if cfg.clip_norm is not None and norm >= cfg.clip_norm:
      g = {k: x * cfg.clip_norm / norm for k, x in g.items()}
    n = t + 1
    for k, group in groups.items():
      if group[0] == "muon":
        beta = cfg.muon_beta
        m[k] = beta * m[k] + (1 - beta) * g[k]
        mix = beta * m[k] / (1 - beta ** (n + 1)) + (1 - beta) * g[k] / (1 - beta**n)
        u = _orthogonalised(mix, group[1], group[2], cfg.eps) + cfg.weight_decay * p[k]
        lr = _lr_reference(cfg.learning_rate, cfg, total, t)
      else:
        m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * g[k]
        v[k] = cfg.b2 * v[k] + (1 - cfg.b2) * g[k] ** 2
        if cfg.name == "muon":  # optax's adamw(nesterov=True)
          mix = cfg.b1 * m[k] / (1 - cfg.b1 ** (n + 1)) + (1 - cfg.b1) * g[k] / (1 - cfg.b1**n)
        else:
          mix = m[k] / (1 - cfg.b1**n)
        u = mix / (np.sqrt(v[k] / (1 - cfg.b2**n)) + cfg.eps)
        u = u + (cfg.weight_decay * p[k] if group[1] else 0.0)
        lr = _lr_reference(adam_peak if cfg.name == "muon" else cfg.learning_rate, cfg, total, t)
      p[k] = p[k] - lr * u
    out.append(dict(p))
  return out


@pytest.mark.parametrize(
  "name,muon_adam_decay,decay_embeddings",
  [("adamw", "matrices", False), ("adamw", "matrices", True), ("muon", "matrices", True)]
  + [("muon", "all", False), ("muon", "matrices", False)],
)
def test_steps_match_a_float64_reference(name, muon_adam_decay, decay_embeddings):
  """Five steps (warmup, cosine, active clipping, weight decay) of the real optimizer on a tree
  with the model's paths and shapes ([D, H, Dh] q/r projections, [H, Dh, D] o_proj, MLP
  matrices, norms, embedding and untied head) against the float64 references above."""
  rng = np.random.default_rng(0)
  shapes = {
    "blocks/0/attn/q_proj/kernel": (8, 2, 4),
    "blocks/0/attn/r_proj/kernel": (8, 2, 4),
    "blocks/0/attn/o_proj/kernel": (2, 4, 8),
    "blocks/0/attn/q_norm/scale": (4,),
    "blocks/0/mlp/up/kernel": (8, 12),
    "blocks/0/mlp/down/kernel": (12, 8),
    "embed": (16, 8),
    "head": (8, 16),
    "final_norm/scale": (8,),
  }
  matrix = {"q_proj": ((0,), (1, 2)), "r_proj": ((0,), (1, 2)), "o_proj": ((0, 1), (2,))}
  groups = {}
  for k, shape in shapes.items():
    embedding, is_matrix = k in ("embed", "head"), len(shape) >= 2
    if name == "muon" and is_matrix and not embedding:
      groups[k] = ("muon", *matrix.get(k.split("/")[-2], ((0,), (1,))))
    else:
      decayed = is_matrix and (decay_embeddings or not embedding)
      groups[k] = ("adam", decayed or (name == "muon" and muon_adam_decay == "all"))
  cfg = OptimizerConfig(
    name=name,
    learning_rate=0.05,
    adam_learning_rate=0.02 if name == "muon" else None,
    warmup_steps=2,
    weight_decay=0.3,
    decay_embeddings=decay_embeddings,
    b2=0.99,
    clip_norm=1.0,
    muon_adam_decay=muon_adam_decay,
  )
  total = 8

  def nest(flat):  # "a/b/c" keys -> the nested dict the optimizer's path rules read
    tree = {}
    for k, x in flat.items():
      *parents, leaf = k.split("/")
      node = tree
      for part in parents:
        node = node.setdefault(part, {})
      node[leaf] = jnp.asarray(x, jnp.float32)
    return tree

  params = {
    k: rng.normal(size=s).astype(np.float32) + (k.endswith("scale")) for k, s in shapes.items()
  }
  grads_seq = [{k: 0.3 * rng.normal(size=s) for k, s in shapes.items()} for _ in range(5)]
  assert np.sqrt(sum(np.sum(g**2) for g in grads_seq[0].values())) > 3  # the clip acts
  tx, _ = make_optimizer(cfg, total)
  tree, state = nest(params), None
  state = tx.init(tree)

  @jax.jit
  def step(tree, state, grads):
    updates, state = tx.update(grads, state, tree)
    return optax.apply_updates(tree, updates), state

  want = _reference_steps(cfg, total, params, grads_seq, groups)
  for t, grads in enumerate(grads_seq):
    tree, state = step(tree, state, nest(grads))
    got = {jax.tree_util.keystr(p, simple=True, separator="/"): x for p, x in _leaves(tree)}
    for k in shapes:
      moved = max(np.max(np.abs(w[k] - params[k])) for w in want)  # the leaf's largest move
      err = np.max(np.abs(np.asarray(got[k], np.float64) - want[t][k]))
      assert err <= 2e-5 * moved, (t, k, err, moved)


def _leaves(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_train_step_metrics(name):
  """The step logs the LR its update used (lr(0) = 0 at the first step of a warmup; under Muon
  adam_lr too), the gradient's global norm before clipping and the updated params' norm."""
  from parallax_jax.benchmarking.synthetic_batch import synthetic_batch
  from parallax_jax.train.step import (
    init_state,
    make_loss_and_grads,
    make_train_step,
    model_graphdef,
  )

  cfg = OptimizerConfig(
    name=name, learning_rate=0.01, adam_learning_rate=0.004, warmup_steps=2, clip_norm=0.1
  )
  total = 6
  tx, schedules = make_optimizer(cfg, total)
  graphdef, _ = model_graphdef(CFG)
  state = init_state(CFG, tx, 0)
  train_step = jax.jit(make_train_step(graphdef, tx, schedules))
  loss_and_grads = jax.jit(make_loss_and_grads(graphdef))
  for t in range(3):
    batch = synthetic_batch(CFG, 2, 16, seed=t)
    _, grads = loss_and_grads(state.params, batch)
    state, metrics = train_step(state, batch)
    norm = lambda tree: np.sqrt(
      sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree))
    )
    assert float(metrics["grad_norm"]) == pytest.approx(norm(grads), rel=1e-5)
    assert float(metrics["grad_norm"]) > cfg.clip_norm  # logged before the clip
    assert float(metrics["param_norm"]) == pytest.approx(norm(state.params), rel=1e-5)
    assert float(metrics["lr"]) == pytest.approx(_lr_reference(0.01, cfg, total, t), abs=1e-9)
    if name == "muon":
      assert float(metrics["adam_lr"]) == pytest.approx(
        _lr_reference(0.004, cfg, total, t), abs=1e-9
      )
    else:
      assert "adam_lr" not in metrics
  assert int(state.step) == 3
