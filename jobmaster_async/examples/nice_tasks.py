"""The seed's dependency example, exactly as in the original README (list-style options).

No ``from __future__ import annotations`` here: the list annotation stays a plain list."""

from jobmaster_async import Dependency, same, task


@task
def foo(file_path: str, number: int) -> None:
    with open(file_path, "w") as f:
        f.write(str(number))


@task(dependencies=Dependency(foo, 6, file_path=same))
def bar(file_path: str, number: int, letter: ["A", "B", "C"] = "A") -> None:  # type: ignore[valid-type,name-defined]  # noqa: F821
    with open(file_path) as f:
        _n = int(f.read())

    with open(file_path, "w") as f:
        f.write(f"{number + _n}{letter}")


@task(
    process_limit=3,
    dependencies=[
        Dependency(foo, 2, number=10, file_path=same),
        Dependency(bar, 2, file_path=same),
    ],
)
def baz(file_path: str) -> None:
    with open(file_path) as f:
        f.read()
