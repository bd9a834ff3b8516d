"""The README is for users: its two commands and its configuration table must stay true."""

from __future__ import annotations

from pathlib import Path

from scripts.gen_worker_env import render_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_configuration_table_is_the_generated_one() -> None:
    assert render_markdown() in README, "run: python scripts/gen_worker_env.py --markdown (and paste)"


def test_the_two_setup_commands_come_first() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "rory-client demo" in first_block
    assert "python -m pytest" in first_block


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and "pip install" in ci
