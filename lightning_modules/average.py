"""Checkpoint averaging on the command line (§6.1; the averaging itself: `lightning_modules/callbacks/averaging.py`).

    python -m lightning_modules.average --checkpoint-dir runs/x/checkpoints --last 5 \\
        --output runs/x/hf_model_averaged
    python -m lightning_modules.average --checkpoints a.ckpt b.ckpt c.ckpt --output averaged [--tokenizer DIR]

The model is rebuilt from the configuration the checkpoints store; the tokenizer comes from `--tokenizer` or from
`<run>/hf_model` next to the checkpoints' folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .callbacks.averaging import checkpoint_step, export_average, find_checkpoints
from .checkpointing import CheckpointLoadError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_modules.average",
        description="Average Lightning checkpoints (§6.1 of 'Attention Is All You Need') into a Hugging Face folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", nargs="+", metavar="CKPT", help="checkpoint files to average")
    source.add_argument("--checkpoint-dir", metavar="DIR", help="average the last --last *.ckpt files of DIR")
    parser.add_argument("--last", type=int, default=5, help="with --checkpoint-dir: how many (5 base, 20 big)")
    parser.add_argument("--output", required=True, metavar="DIR", help="the Hugging Face folder to write")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: <run>/hf_model)")
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error("--last must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.checkpoint_dir:
            paths = find_checkpoints([args.checkpoint_dir], last=args.last)
            if not paths:
                print(f"error: no *.ckpt files in {args.checkpoint_dir}", file=sys.stderr)
                return 1
            if len(paths) < args.last:
                print(f"warning: only {len(paths)} checkpoints in {args.checkpoint_dir}, averaging those",
                      file=sys.stderr)
        else:
            paths = [Path(p) for p in args.checkpoints]
        output = export_average(paths, args.output, tokenizer=args.tokenizer)
        steps = [checkpoint_step(path) for path in paths]
    except (CheckpointLoadError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"averaged {len(paths)} checkpoints:")
    for path, step in zip(paths, steps):
        print(f"  {path} (step {step})")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
