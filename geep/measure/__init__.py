"""Measurement: analytic FLOPs, the work a run issues, the latency model and the paper's regime
built on it, quality and timing statistics, and device utilisation."""
