"""What a folder holds, to show that a command left a user's files intact."""

import os
from typing import Dict


def snapshot(directory) -> Dict[str, bytes]:
    """Every file under `directory` (relative path) -> its bytes."""
    out = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def users_folder(directory) -> Dict[str, bytes]:
    """Makes the issue's folder of a user (notes.txt, sub/data.csv) at
    `directory` (a pathlib.Path); returns its snapshot."""
    (directory / "sub").mkdir(parents=True)
    (directory / "notes.txt").write_text("my notes")
    (directory / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return snapshot(directory)
