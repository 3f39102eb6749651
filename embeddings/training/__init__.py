"""Training: the config and presets, the loop, several processes."""
