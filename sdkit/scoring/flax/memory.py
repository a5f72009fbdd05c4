"""JAX's GPU memory setting, chosen before JAX starts (this module imports no JAX)."""

from __future__ import annotations

import os
import sys
import warnings


def configure_jax_memory() -> None:
    """Stop JAX from grabbing 75% of GPU memory, which would starve the PyTorch pipeline.

    Sets XLA_PYTHON_CLIENT_PREALLOCATE=false before JAX's backends start, unless the user
    chose an allocator setting. Too late once JAX runs on a GPU: then it warns instead.
    """
    user_set = [k for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                            "XLA_PYTHON_CLIENT_ALLOCATOR") if k in os.environ]
    if user_set:
        return
    if "jax" in sys.modules:
        try:
            from jax._src import xla_bridge

            started = xla_bridge.backends_are_initialized()
        except (ImportError, AttributeError):
            started = False
        if started:
            import jax

            if any(d.platform != "cpu" for d in jax.devices()):
                warnings.warn("JAX was initialised before sdkit with GPU memory preallocation on (75% of the "
                              "GPU); the PyTorch pipeline may run out of memory. Import sdkit first, or set "
                              "XLA_PYTHON_CLIENT_PREALLOCATE=false before JAX starts.", RuntimeWarning, stacklevel=3)
            return
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
