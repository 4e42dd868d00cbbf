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
    assert commands[0].startswith("pip install torch==2.13.0 && ") and "recipes/configs/quickstart.yaml" in commands[0]
    assert commands[1].startswith("pip install torch==2.13.0 && ") and commands[1].endswith("python -m pytest")
    first_block = (ROOT / "README.md").read_text().index("```bash")
    assert "```" not in (ROOT / "README.md").read_text()[:first_block]  # these are the first commands


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines
