"""PyTorch Lightning side of the project: data modules, the training module and callbacks.

It builds `hf_transformer` models and trains them; `hf_transformer` never imports this package.
"""
