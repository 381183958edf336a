"""The fenced code blocks of the project's READMEs, each with its journey name.

Every ```bash and ```python block in README.md and trainer/README.md is run by
tests/test_readme_journeys.py. A block names the journey step it belongs to
on the line before it, in an HTML comment that renders as nothing:

    <!-- journey: own-data-train -->
    ```bash
    python -m trainer.main ...
    ```

Blocks in other languages (```text for a synopsis, say) are not run and need
no name.
"""

import dataclasses
import os
import re
from typing import Dict, List

from tests.conftest import REPO_ROOT

RUN_LANGUAGES = ("bash", "python")
READMES = ("README.md", os.path.join("trainer", "README.md"))

_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)[ \t]*\n(.*?)^```[ \t]*$",
                    re.S | re.M)
_NAME = re.compile(r"<!--\s*journey:\s*([A-Za-z0-9_.-]+)\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its journey name, text."""
    readme: str
    line: int
    language: str
    name: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.readme}:{self.line}"


def read(path: str) -> str:
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        return f.read()


def blocks(readme: str) -> List[Block]:
    """The fenced blocks of one README, in order.

    A bash or python block without a `<!-- journey: NAME -->` line right
    before it gets the name '' (test_readme_journeys reports it).
    """
    text = read(readme)
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        name_match = _NAME.search(before)
        found.append(Block(readme, line, match.group(1), (
            name_match.group(1) if name_match else ""), match.group(2)))
    return found


def runnable_blocks() -> List[Block]:
    """Every bash and python block of every README, in reading order."""
    return [block for readme in READMES for block in blocks(readme)
            if block.language in RUN_LANGUAGES]


def by_name() -> Dict[str, Block]:
    """The runnable blocks keyed by journey name (names are unique)."""
    named = {}
    for block in runnable_blocks():
        if block.name in named:
            raise AssertionError(
                f"{block.where}: journey name {block.name!r} is used again "
                f"(first at {named[block.name].where})")
        named[block.name] = block
    return named


def shell_commands(text: str) -> List[str]:
    """The commands of a bash block: continuation lines joined, comments and
    blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands
