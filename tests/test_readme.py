"""The README's Python examples run as written (```python blocks; ```py ones need live services)."""

from __future__ import annotations

import re
from pathlib import Path

from backtesting.test import GOOG

from tradpal_ray.backtest import backtest, get_strategy

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_examples_run(isolated_strategies: None) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    result = backtest(GOOG, "golden_cross", {"fast": 20, "slow": 100})
    assert get_strategy("golden_cross").params.keys() == {"fast", "slow"}
    assert result.stats["trades"] > 0


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_point_at_headings_and_files_that_exist() -> None:
    text = README.read_text()
    anchors = {_slug(heading) for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    for target in targets:
        if target.startswith("#"):
            assert target[1:] in anchors, f"{target}: no such heading"
        elif "://" not in target:
            assert (README.parent / target.split("#")[0]).exists(), f"{target}: no such file"
