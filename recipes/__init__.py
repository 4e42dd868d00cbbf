"""Experiments as data: YAML configurations for the Lightning CLI, under `recipes/configs/`."""
