"""Parameter and optimizer-state shardings on 8 fake CPU devices (fsdp over all 8).

The expected placements are written out from the fsdp rule ("embed" over ``fsdp``) per
parameter name, and each optimizer leaf is paired with its parameter by its path here, not by
the structure-based derivation under test. Unmatched non-scalar leaves must raise.
"""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh

from parallax_jax import sharding
from parallax_jax.train.config import load_config, resolve
from parallax_jax.train.program import Program

ROOT = Path(__file__).resolve().parents[2]
N = 8
D, MLP, H, HKV, DH, V = 64, 128, 4, 2, 16, 384

# Parameter name -> which dimension the fsdp rule splits (None: replicated).
FSDP_DIM = {
  "embed": 1,  # [V, D]
  "head": 1,  # [V, D] when untied
  "q_proj": 0,  # [D, H, Dh]
  "r_proj": 0,
  "k_proj": 0,
  "v_proj": 0,
  "o_proj": 2,  # [H, Dh, D]
  "gate": 0,  # [D, MLP]
  "up": 0,
  "down": 1,  # [MLP, D]
  "scale": None,  # norms
}


def _exp(optimizer: str):
  cfg = load_config(
    ROOT / "configs" / "tiny.py",
    [
      f"model.d_model={D}",
      "model.num_layers=2",
      f"model.mlp_dim={MLP}",
      f"model.head_dim={DH}",
      f"model.num_heads={H}",
      f"model.num_kv_heads={HKV}",
      "train.batch_size=8",
      "train.seq_len=32",
      "train.progress_bar=false",
      f"optimizer.name={optimizer}",
      "sharding.strategy=fsdp",
      "mesh.data=1",
      f"mesh.fsdp={N}",
    ],
  )
  return resolve(cfg, N)


@functools.cache
def _program(optimizer: str) -> Program:
  return Program(_exp(optimizer), devices=jax.devices()[:N])


@pytest.fixture(params=["adamw", "muon"])
def program(request):
  """Built lazily inside the test (which may run in a child process with the 8 devices)."""
  return lambda: _program(request.param)


def _names(path) -> list[str]:
  return [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]


def _fsdp_dim(param_names: list[str]):
  for name in reversed(param_names):
    if name in FSDP_DIM:
      return FSDP_DIM[name]
  raise AssertionError(f"no expected placement written for parameter {param_names}")


def _check_fsdp(x, dim, what):
  """``x`` is split 8 ways along ``dim`` (and only there), or fully replicated if dim is None."""
  local = x.addressable_shards[0].data.shape
  if dim is None:
    assert x.sharding.is_fully_replicated and local == x.shape, what
    return
  want = tuple(n // N if i == dim else n for i, n in enumerate(x.shape))
  assert local == want, (what, local, want)
  spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
  assert spec[dim] in ("fsdp", ("fsdp",)), (what, x.sharding.spec)


def test_every_optimizer_leaf_is_sharded_like_its_parameter(devices, program):
  program = program()
  state = program.init(0)
  params = {}
  for path, p in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    names = _names(path)
    _check_fsdp(p, _fsdp_dim(names), f"param {names}")
    params[tuple(names)] = p
  sharded = 0
  for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    names = _names(path)
    if x.ndim == 0 or names[-1] == "ns_coeffs":  # step counts; Muon's (3,) coefficients
      assert x.sharding.is_fully_replicated, names
      continue
    # The parameter whose path the leaf's path ends with (the test's own pairing).
    owners = [p for k, p in params.items() if tuple(names[-len(k) :]) == k]
    assert len(owners) == 1 and owners[0].shape == x.shape, names
    dim = _fsdp_dim(names)
    _check_fsdp(x, dim, f"optimizer leaf {names}")
    sharded += dim is not None
  assert sharded >= 10


def test_specific_optimizer_leaves(devices, program):
  program = program()
  leaves = {
    jax.tree_util.keystr(p): s
    for p, s in jax.tree_util.tree_flatten_with_path(program.state_sharding.opt_state)[0]
  }

  def spec(suffix, within=""):
    hits = [s for k, s in leaves.items() if k.endswith(suffix) and within in k]
    assert len(hits) == 1, (suffix, within, sorted(leaves))
    return tuple(hits[0].spec) + (None,) * (3 - len(hits[0].spec))

  q, down, emb = "['attn']['q_proj']['kernel']", "['mlp']['down']['kernel']", ".mu['embed']"
  if program.exp.optimizer.name == "adamw":
    assert spec(".mu['blocks'][0]" + q) == ("fsdp", None, None)
    assert spec(".nu['blocks'][1]" + down) == (None, "fsdp", None)
    assert spec(emb) == (None, "fsdp", None)
    assert spec(".nu['final_norm']['scale']") == (None, None, None)
  else:  # Muon's momentum for the matrices, the AdamW group's moments for the rest
    assert spec(".mu['blocks'][0]" + q, "['muon']") == ("fsdp", None, None)
    assert spec(".mu['blocks'][1]" + down, "['muon']") == (None, "fsdp", None)
    assert spec(emb, "['adam']") == (None, "fsdp", None)
    assert spec(".nu['embed']", "['adam']") == (None, "fsdp", None)
    assert spec(".ns_coeffs") == (None, None, None)


def _with_buffer(tx, value):
  """``tx`` chained with a transformation whose state is ``{"extra": value}``."""
  extra = optax.GradientTransformation(lambda params: {"extra": value}, lambda u, s, p=None: (u, s))
  return optax.chain(tx, extra)


def _derive(program, tx, **kw):
  params = program.abstract_state.params
  opt_state = jax.eval_shape(tx.init, params)
  return sharding.opt_state_shardings(
    opt_state, params, program.state_sharding.params, program.mesh, **kw
  )


def test_unmatched_non_scalar_leaf_raises(devices, program):
  program = program()
  with pytest.raises(ValueError, match=r"\['extra'\] \(shape \(64, 64\)\) mirrors no parameter"):
    _derive(program, _with_buffer(program.tx, jnp.zeros((D, D))))
  # A true scalar is replicated.
  out = _derive(program, _with_buffer(program.tx, jnp.zeros(())))
  assert out[-1]["extra"].is_fully_replicated


def test_muon_coefficients_replicate_only_by_rule(devices):
  program = _program("muon")
  with pytest.raises(ValueError, match=r"ns_coeffs \(shape \(3,\)\).*REPLICATED_STATE_FIELDS"):
    _derive(program, program.tx, replicated_fields=())


def test_params_shaped_state_of_other_shapes_raises(devices, program):
  program = program()
  # Adafactor's factored second moments mirror the params' tree with smaller leaves.
  with pytest.raises(ValueError, match=r"v_row.* has shape .* but its parameter has shape"):
    _derive(program, optax.adafactor(1e-3))


class _Untagged(nnx.Module):
  def __init__(self):
    self.tagged = nnx.Param(jnp.zeros((D, D)), **{sharding.LOGICAL_AXES: ("embed", None)})
    self.w = nnx.Param(jnp.zeros((D, 3)))


def test_parameter_without_logical_axes_raises(devices):
  mesh = Mesh(np.asarray(devices).reshape(1, N, 1, 1), sharding.MESH_AXES)
  rules = sharding.make_rules(mesh, sharding.ShardingConfig(strategy="fsdp"))
  variables = nnx.state(nnx.eval_shape(_Untagged))
  with pytest.raises(ValueError, match=r"parameter w of shape \(64, 3\) has logical_axes=None"):
    sharding.param_shardings(variables, rules)
