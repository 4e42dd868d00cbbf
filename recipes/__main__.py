"""`python -m recipes fit --config recipes/configs/quickstart.yaml`: the same CLI as the `hf-transformer` script."""

from lightning_modules.cli import main

main()
