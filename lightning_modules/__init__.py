"""PyTorch Lightning side of the project: it builds `hf_transformer` models and trains them (`hf_transformer` never
imports this package).

- `tasks/`: one base (`TaskModule`) and the three tasks: translation, language modelling, captioning.
- `data/`: one corpus layer (`corpus.py`) and the three tasks' data modules, the batch samplers, generated corpora.
- `callbacks/`: the HF export, the Hub push, checkpoint averaging, throughput and the non-finite guard.
- `cli.py` (the `hf-transformer` command), `schedules.py` (§5.3), `checkpointing.py` (atomic, `weights_only`
  checkpoints), `redaction.py` (secrets never written), `average.py` (checkpoint averaging on the command line).
"""
