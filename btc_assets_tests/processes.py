"""What a test sees of the processes a run or a stack service started."""

from __future__ import annotations

import psutil


def descendants(root: psutil.Process) -> list[tuple[psutil.Process, list[str]]]:
    """Every descendant of ``root`` with its arguments (one that exits meanwhile, e.g. a run's, is left out)."""
    found = []
    for child in root.children(recursive=True):
        try:
            found.append((child, child.cmdline()))
        except psutil.NoSuchProcess:
            continue
    return found
