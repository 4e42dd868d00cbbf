"""CI proves the README: .ci/run runs the README's test command verbatim, and the README opens with two commands."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_main_job_and_the_test_command():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("pip install torch==2.13.0 && ")
    # the packaged recipe by name, one run directory, and a test that needs only the checkpoint
    assert "hf-transformer fit --config quickstart --trainer.default_root_dir runs/quickstart && " in commands[0]
    assert commands[0].endswith("hf-transformer test --ckpt_path runs/quickstart/checkpoints/best.ckpt")
    assert commands[1].startswith("pip install torch==2.13.0 && ") and commands[1].endswith("python -m pytest")
    first_block = (ROOT / "README.md").read_text().index("```bash")
    assert "```" not in (ROOT / "README.md").read_text()[:first_block]  # these are the first commands


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


def test_the_readme_says_where_a_run_writes():
    """Every entry of a run directory (lightning_modules/runs.py) is in the README's table, and the metrics too."""
    from lightning_modules.runs import CACHE_ENV, RUN_LAYOUT

    section = (ROOT / "README.md").read_text().split("### Where a run writes", 1)[1].split("\n## ", 1)[0]
    assert [name for name in RUN_LAYOUT if f"`{name}" not in section] == []
    for words in ("--trainer.default_root_dir", "metrics.csv", "tensorboard --logdir", "val/bleu", "val/chrf",
                  CACHE_ENV, "validation_sample", "hf-transformer plot"):
        assert words in section, words
