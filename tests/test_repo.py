"""The README's commands are the ones CI runs."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    blocks, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside:
            blocks.append(line.strip())
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = _bash_blocks(readme)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd.startswith("pip install torch==2.13.0 && pip install -e '.[test]'")
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()
    default_cmd = next(c for c in commands if "tune_study.grid" in c)
    assert default_cmd == "pip install torch==2.13.0 && pip install -e . && python -m tune_study.grid"
