"""``experiments/attention_analysis.py``'s output names (the analysis itself is checked in
test_run_record.py on a trained run)."""

from pathlib import Path

from experiments.attention_analysis import output_paths


def test_output_stem_with_a_dot_keeps_its_whole_name():
  # Path.with_suffix would cut "lr0.5_s0" to "lr0" and let a later "lr0.25" run overwrite it.
  paths = output_paths("out/attention_muon_softmax_lr0.5_s0")
  assert paths == {
    ext: Path(f"out/attention_muon_softmax_lr0.5_s0{ext}") for ext in (".json", ".md", ".png")
  }
