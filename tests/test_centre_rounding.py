"""``experiments/centre_rounding.py``: its blockwise replay is exact without rounding for every
centre rule, and with bf16 operands the centring matters where it should."""

import numpy as np
import pytest

from experiments import centre_rounding as cr


@pytest.mark.parametrize("centre", cr.CENTRES)
@pytest.mark.parametrize("kw", [{}, {"sink": 8.0, "drift": 5.0}])
def test_replay_is_exact_without_rounding(centre, kw):
  s, t, v = cr.inputs(0, 200, 32, **kw)  # 200: a ragged last tile
  np.testing.assert_allclose(
    cr.blockwise(s, t, v, centre, rounding=False), cr.reference(s, t, v), atol=1e-11
  )


def test_centring_beats_none_at_an_attention_sink():
  s, t, v = cr.inputs(0, 256, 64, sink=8.0)
  ref = cr.reference(s, t, v)
  err = {c: np.sqrt(np.mean((cr.blockwise(s, t, v, c) - ref) ** 2)) for c in cr.CENTRES}
  assert err["running"] < err["none"] / 2 and err["first"] < err["none"] / 2, err


def test_writes_its_table(tmp_path):
  result = cr.main(
    ["--length", "128", "--head-dim", "16", "--seeds", "1", "--out-dir", str(tmp_path)]
  )
  assert [r["scenario"] for r in result["rows"]] == list(cr.SCENARIOS)
  (md,) = tmp_path.glob("centre_rounding_*.md")
  assert "| gaussian |" in md.read_text()


def test_records_its_host_and_versions(tmp_path):
  result = cr.main(
    ["--length", "64", "--head-dim", "8", "--seeds", "1", "--out-dir", str(tmp_path)]
  )
  assert "CPU" in result["device"] and {"python", "numpy", "ml_dtypes"} <= set(result["versions"])
  (md,) = tmp_path.glob("centre_rounding_*.md")
  assert f"- device: {result['device']}" in md.read_text()


@pytest.mark.parametrize("flag", ["--length", "--head-dim", "--seeds"])
def test_a_non_positive_size_is_one_line_and_writes_nothing(tmp_path, capsys, flag):
  with pytest.raises(SystemExit) as exit_:
    cr.main([flag, "0", "--out-dir", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and "Traceback" not in err
  assert f"error: {flag}: must be >= 1" in err and not (tmp_path / "out").exists()
