"""The model every method builds on: the encoder run layer by layer, the classifier heads the
methods share, the training loop and its saved state."""
