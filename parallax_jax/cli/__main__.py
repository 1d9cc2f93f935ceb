"""``python -m parallax_jax.cli``: the ``parallax-jax`` command."""

import sys

from parallax_jax.cli import main

sys.exit(main())
