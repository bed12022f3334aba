"""The full-depth reference and the early-exit baselines, one method per file: ``bert``,
FastBERT, DeeBERT, PABEE and HashEE."""
