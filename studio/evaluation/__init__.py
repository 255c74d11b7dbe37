"""Evaluation: golden sets, scores, the run against base and tuned model, blind A/B, and the expert's
corrections turned into dataset versions."""
