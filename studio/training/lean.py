"""What the training process leaves unimported.

Some libraries are imported by transformers and peft whenever they are installed, though a run can use them
only on a GPU: bitsandbytes (4-bit QLoRA; studio/training/recipe.py trains 32-bit on the CPU) registers its
kernels with torch at import, about 2-3 s of CPU. On a machine without a GPU driver they are hidden from this
process before anything imports them, so the libraries see them as not installed (importlib.util.find_spec
answers None) and the run starts sooner. On a GPU machine nothing is hidden.
"""

from __future__ import annotations

import sys

from studio.core.driver import no_gpu_driver

UNUSED_WITHOUT_GPU = ("bitsandbytes",)


def skip_unused() -> list[str]:
    """Hide the libraries this process cannot use (none on a GPU machine); returns their names."""
    if not no_gpu_driver():
        return []
    hidden = [name for name in UNUSED_WITHOUT_GPU if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError; find_spec(name) is None
    return hidden
