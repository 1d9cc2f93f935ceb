"""Experiments: resumable sweeps over configs (``parallax-jax sweep``), results and plots.

sweep = load_sweep("configs/sweeps/smoke.py", workdir)   # points expanded and validated
rows = run_sweep(sweep, workdir, parallel=1)              # W/points/*, results.csv/.md, plots
"""

from parallax_jax.sweeps.config import Point, Sweep, build_sweep, load_sweep
from parallax_jax.sweeps.runner import run_sweep

__all__ = ["Point", "Sweep", "build_sweep", "load_sweep", "run_sweep"]
