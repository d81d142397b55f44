"""The README's example composes the components by hand: it must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_one_training_loop():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    metrics = namespace["metrics"]
    assert {"loss_qvalue", "alpha", "q_mean"} <= set(metrics.keys())
    assert namespace["loss"].alpha < 1.0  # the temperature was trained


def test_readme_shows_both_commands():
    text = README.read_text()
    assert "make train" in text and "make test" in text
