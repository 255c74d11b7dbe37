"""What device the tests run on, and what the studio should do there. A test whose outcome depends on the
device asks here and checks the outcome for that device (`from device import CUDA, expected_method`);
tests that need CUDA carry the `gpu` marker and conftest skips them elsewhere, saying why."""

from __future__ import annotations

import torch

CUDA = torch.cuda.is_available()
BF16 = CUDA and torch.cuda.is_bf16_supported()
# the compute dtype of training and of a 16-bit endpoint: bf16 on GPUs that have it, fp16 on older ones,
# float32 on the CPU (studio/training/recipe.py compute_dtype, studio/serving/server/model.py _dtype)
COMPUTE_DTYPE = "bfloat16" if BF16 else "float16" if CUDA else "float32"


def expected_method(method: str = "qlora") -> str:
    """The manifest's method.used for a run that asked for `method`."""
    if CUDA and method == "qlora":
        return "qlora-4bit-nf4"
    return f"lora-{COMPUTE_DTYPE}"

# A publish of the session's trained run (QLoRA asked) is verified exactly on the CPU, where Chat and the export
# are one float32 model. On CUDA the expert chatted with the 4-bit base, the export is float32: the drift
# tolerance across precisions applies (studio/publishing/drift.py), and a drift beyond it is a pass with
# differences (still healthy).
PUBLISH_VERDICTS = ("passed", "passed_with_differences") if CUDA else ("passed",)
