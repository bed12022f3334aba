"""Serving under load: a method behind a dynamic batcher, driven by MLPerf LoadGen."""
