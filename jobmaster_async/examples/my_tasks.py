"""The seed's first example: ``task1`` writes a + b to a file."""

from __future__ import annotations

from jobmaster_async import task


@task
def task1(file_path: str, a: int, b: int) -> None:
    """Writes a + b to file_path.

    :param file_path: the file to write
    :param a: first number
    :param b: second number
    """
    with open(file_path, "w") as f:
        f.write(str(a + b))
