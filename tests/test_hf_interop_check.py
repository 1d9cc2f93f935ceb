"""``experiments/hf_interop_check.py --smoke`` end to end on CPU (docs/design.md §14.1).

Without torch/transformers (as on the dev machines) the PyTorch comparisons record why they
were skipped; part 1 then checks the import against the float64 NumPy Qwen3 oracle instead,
and part 3 (uptraining) runs fully. The checks are properties independent of the code under
test: the oracle's logits, a Parallax model with W_R = 0 computing the softmax model's loss,
a loss that falls when training on one batch.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from cli_runner import script_error

from experiments import hf_interop_check

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("hf_interop")
  scratch = out / "scratch"
  result, stem = hf_interop_check.main(
    ["--smoke", "--out", str(out), "--tmp", str(scratch), "--train-steps", "3"]
  )
  return result, stem, scratch


def _rows(part: dict) -> dict[tuple[str, str], dict]:
  return {(r["name"], r["dtype"]): r for r in part["rows"]}


@pytest.mark.slow  # the script end to end (~35 s on 2 cores); -m slow runs it
def test_writes_json_and_markdown_and_cleans_up(smoke):
  result, stem, scratch = smoke
  record = json.loads(stem.with_suffix(".json").read_text())
  assert record["parts"].keys() == {"qwen3", "fla", "uptrain"}
  assert record["command"].startswith("python -m experiments.hf_interop_check --smoke")
  for name, part in record["parts"].items():
    assert "error" not in part, (name, part["error"])
    assert part["seconds"] >= 0
  markdown = stem.with_suffix(".md").read_text()
  assert "| qwen3 |" in markdown and "## uptrain" in markdown
  assert not scratch.exists()  # the scratch folder is removed without --keep


@pytest.mark.slow  # the script end to end (~35 s on 2 cores); -m slow runs it
@pytest.mark.skipif(HAVE_TORCH, reason="torch/transformers are installed: part 1 compares them")
def test_qwen3_import_matches_the_oracle_and_says_why_torch_is_skipped(smoke):
  part = smoke[0]["parts"]["qwen3"]
  rows = _rows(part)
  assert rows[("ours vs float64 NumPy Qwen3 oracle", "float32")]["max_norm_rel"] < 1e-5
  for dtype in ("float32", "bfloat16"):
    assert rows[("ours vs transformers Qwen3", dtype)]["skipped"] == "skipped: torch not installed"


@pytest.mark.slow  # the script end to end (~35 s on 2 cores); -m slow runs it
@pytest.mark.skipif(not HAVE_TORCH, reason="torch/transformers are not installed")
def test_qwen3_import_matches_transformers(smoke):
  rows = _rows(smoke[0]["parts"]["qwen3"])
  assert rows[("ours vs transformers Qwen3", "float32")]["max_norm_rel"] < 1e-5
  assert rows[("ours vs transformers Qwen3 (from_pretrained)", "bfloat16")]["max_norm_rel"] < 5e-2


@pytest.mark.slow  # the script end to end (~35 s on 2 cores); -m slow runs it
def test_fla_part_exports_and_says_why_fla_is_skipped(smoke):
  part = smoke[0]["parts"]["fla"]
  assert {"model.safetensors", "config.json"} <= set(part["export"]["files"])
  assert part["imported_model"]["attention"] == "parallax"
  if not HAVE_TORCH:  # on CPU with torch, fla loads but its Triton kernels cannot run
    for row in part["rows"]:
      assert row["skipped"] == "skipped: torch not installed"


@pytest.mark.slow  # the script end to end (~35 s on 2 cores); -m slow runs it
def test_uptraining_starts_from_the_softmax_loss_and_learns(smoke):
  part = smoke[0]["parts"]["uptrain"]
  # W_R = 0: the Parallax model computes the softmax model's function, so its loss.
  assert part["first_loss_rel_diff_float32"] < 1e-6
  assert part["first_loss_rel_diff_bfloat16"] < 2e-3  # bf16 rounding in different kernels
  losses = part["parallax_train"]["losses"]
  assert len(losses) == 3 and losses[-1] < losses[0] and part["loss_fell"]
  assert part["parallax_train"]["max_abs_w_r_after"] > 0  # r left zero: it is trained


def test_output_stem_never_overwrites(tmp_path):
  first = hf_interop_check.output_stem(tmp_path, "2026-01-02", "NVIDIA H200")
  assert first.name == "hf_interop_2026-01-02_h200"
  first.with_suffix(".md").write_text("")
  second = hf_interop_check.output_stem(tmp_path, "2026-01-02", "NVIDIA H200")
  assert second.name == "hf_interop_2026-01-02_h200_2"
  second.with_suffix(".json").write_text("")
  assert hf_interop_check.output_stem(tmp_path, "2026-01-02", "NVIDIA H200").name.endswith("_3")


@pytest.mark.parametrize(
  "argv, says",
  [
    (["--seq", "-1"], "--seq: must be >= 1, got -1"),
    (["--train-steps", "0"], "--train-steps: must be >= 1, got 0"),
    (["--layers", "-2"], "--layers: must be >= 0, got -2"),
    (["--parts", ""], "--parts: unknown ''; known:"),
  ],
  ids=["seq", "train-steps", "layers", "no-parts"],
)
def test_bad_numbers_and_no_part_are_one_line_before_anything_runs(tmp_path, capsys, argv, says):
  """--seq -1 (and the other counts below 1) ran every part to an error row ("negative
  dimensions are not allowed") and wrote the result files, exit 0; --parts '' wrote an empty
  result."""
  argv = ["--smoke", *argv, "--out", str(tmp_path / "out")]
  assert says in script_error(capsys, hf_interop_check.main, argv)
  assert not (tmp_path / "out").exists()
