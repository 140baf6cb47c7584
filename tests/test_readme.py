"""README.md stays true: its Python blocks run, and the commands it names exist."""

import re
from pathlib import Path

import pytest

from beyondsgd.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("i", range(len(_blocks("python"))))
def test_readme_python_blocks_run(i, capsys):
    exec(compile(_blocks("python")[i], f"README.md python block {i}", "exec"), {})


def test_readme_commands_parse():
    parser = build_parser()
    commands = [line.split("#")[0].strip() for block in _blocks("bash")
                for line in block.replace("\\\n", " ").splitlines()]
    # `beyondsgd ARGS` and `torchrun ... -m beyondsgd.cli ARGS`
    args = [c.split()[1:] for c in commands if c.startswith("beyondsgd ")]
    args += [c.split("-m beyondsgd.cli ", 1)[1].split() for c in commands
             if c.startswith("torchrun ") and "-m beyondsgd.cli " in c]
    assert len(args) >= 6
    for a in args:
        parser.parse_args(a)  # raises SystemExit on a stale option
