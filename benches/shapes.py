"""The benchmark shapes of ``benches/shapes.csv``, for the Python benchmarks.

``compare.py``, ``adapter.py``, ``gpu.py`` and ``vs_torch_cuda.py`` take their shapes from
here, and ``kernel.rs`` embeds the same file, so that a shape is written once. The format is
described at the top of the file; it is parsed by hand (not with ``csv``) by the same rules
as ``kernel.rs`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

PATH = Path(__file__).with_name("shapes.csv")
BENCHES = ("compare", "adapter", "gpu", "kernel", "cuda")


class Shape(NamedTuple):
    name: str
    id: str
    T: int
    N: int
    C: int
    S: int
    benches: tuple[str, ...]

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return self.T, self.N, self.C, self.S


def load(path: Path = PATH) -> list[Shape]:
    """Every shape of the file, in its order; a malformed line raises ``ValueError``."""
    shapes: list[Shape] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{number}"
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 7:
            raise ValueError(f"{where}: expected 7 fields, got {len(fields)}: {line!r}")
        name, id_, *dims, benches = fields
        try:
            T, N, C, S = (int(value) for value in dims)
        except ValueError:
            raise ValueError(f"{where}: T, N, C and S must be integers: {line!r}") from None
        if min(T, N, S) < 1 or C < 2:
            raise ValueError(f"{where}: T, N and S must be positive and C at least 2: {line!r}")
        used = tuple(benches.split())
        unknown = [bench for bench in used if bench not in BENCHES]
        if unknown:
            raise ValueError(f"{where}: unknown benches {unknown}; known: {BENCHES}")
        if any(name == s.name or id_ == s.id for s in shapes):
            raise ValueError(f"{where}: the name {name!r} or id {id_!r} is already used")
        shapes.append(Shape(name, id_, T, N, C, S, used))
    return shapes


def chosen(
    parser: argparse.ArgumentParser,
    shapes: dict[str, tuple[int, int, int, int]],
    option: str | None,
    default: tuple[str, ...] | None = None,
) -> dict[str, tuple[int, int, int, int]]:
    """The shapes a ``--shapes`` option names (comma-separated), in its order; ``default``
    (else every shape) without it. An unknown name is a usage error through ``parser``."""
    if option:
        names = [name.strip() for name in option.split(",")]
    else:
        names = list(shapes if default is None else default)
    unknown = [name for name in names if name not in shapes]
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {list(shapes)}")
    return {name: shapes[name] for name in names}


def shapes_for(bench: str) -> dict[str, tuple[int, int, int, int]]:
    """The shapes ``bench`` times, name -> (T, N, C, S), in the file's order."""
    if bench not in BENCHES:
        raise ValueError(f"unknown bench {bench!r}; known: {BENCHES}")
    return {shape.name: shape.dims for shape in load() if bench in shape.benches}
