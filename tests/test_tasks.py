"""@task, Dependency and same: parsing and definition mistakes (no database needed)."""

from __future__ import annotations

from typing import Literal, Optional

import pytest

from jobmaster_async import Dependency, TaskDefinitionError, same, task
from jobmaster_async.examples import nice_tasks
from jobmaster_async.tasks import check_cycles, check_definitions, definition_of, registry
from tests import tasks_for_tests

#: the type key of the tasks a test defines (removed afterwards by the ``forget`` fixture)
SCRATCH = "scratch"


def test_seed_definitions_parse() -> None:
    bar = definition_of(nice_tasks.bar)
    assert (bar.type_key, bar.task_key) == ("nice_tasks", "bar")
    letter = bar.parameter("letter")
    assert letter is not None and letter.options == ("A", "B", "C") and letter.default == "A"
    assert letter.type == "string" and not letter.required
    number = bar.parameter("number")
    assert number is not None and number.type == "integer" and number.required
    baz = definition_of(nice_tasks.baz)
    assert baz.process_limit == 3
    assert [d.key for d in baz.dependencies] == [("nice_tasks", "foo"), ("nice_tasks", "bar")]
    assert baz.dependencies[0].hours == 2


def test_decorated_function_stays_callable(tmp_path: object) -> None:
    path = f"{tmp_path}/x"
    nice_tasks.foo(path, 7)
    with open(path) as f:
        assert f.read() == "7"


def test_bare_and_called_decorator_and_options(forget: object) -> None:
    @task(type_key="scratch", retries=3, timeout=2.5, process_units=2, executor="process")
    def one(a: int) -> int:
        return a

    @task(type_key="scratch")
    async def two(b: Optional[str] = None, c: float = 1.5, d: dict | None = None) -> None:  # type: ignore[type-arg]  # noqa: UP045
        """Does two.

        :param b: the b value
        :param c: a float
        """

    d1, d2 = definition_of(one), definition_of(two)
    assert (d1.retries, d1.timeout, d1.process_units, d1.executor, d1.is_async) == (3, 2.5, 2, "process", False)
    assert d2.is_async and d2.description == "Does two."
    b, c, d = d2.parameters
    assert (b.type, b.nullable, b.required, b.help) == ("string", True, False, "the b value")
    assert (c.type, c.default, c.help) == ("number", 1.5, "a float")
    assert (d.type, d.nullable) == ("object", True)


def test_literal_options(forget: object) -> None:
    @task(type_key="scratch", write_all="size,colour")
    def paint(size: Literal[1, 2], colour: Literal["red", "blue"] = "red") -> None: ...

    definition = definition_of(paint)
    assert definition.write_all == ("size", "colour")
    assert definition.parameters[0].options == (1, 2) and definition.parameters[0].type == "integer"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: task(type_key="scratch", task_key="x")(lambda when: None), None),
        (lambda: task(type_key="scratch", write_all=["a"])(_with_param_a), ["write_all", "'a'", "options"]),
        (lambda: task(type_key="scratch", write_all=["zz"])(_with_param_a), ["write_all", "'zz'"]),
        (lambda: task(type_key="scratch", process_limit=0)(_with_param_a), ["process_limit"]),
        (lambda: task(type_key="scratch", retries=-1)(_with_param_a), ["retries"]),
        (lambda: task(type_key="scratch", timeout=0)(_with_param_a), ["timeout"]),
        (lambda: task(type_key="scratch", executor="fork")(_with_param_a), ["executor"]),  # type: ignore[call-overload]
        (lambda: task(type_key="scratch")(_bad_annotation), ["'when'", "not a JSON type"]),
        (lambda: task(type_key="scratch")(_bad_default), ["'a'", "default"]),
        (
            lambda: task(type_key="scratch", dependencies=Dependency(nice_tasks.foo, file_path=same, nope=1))(
                _with_file_path
            ),
            ["nice_tasks.foo", "'nope'"],
        ),
        (
            lambda: task(type_key="scratch", dependencies=Dependency(nice_tasks.foo, file_path=same))(_with_param_a),
            ["same", "'file_path'", "scratch._with_param_a"],
        ),
        (lambda: Dependency(nice_tasks.foo, 0), ["hours"]),
        (lambda: task(type_key="scratch", dependencies=Dependency(_with_param_a))(_with_param_a), ["not a task"]),
        (lambda: same / 0, ["zero"]),
        (lambda: same + "x", ["number"]),
    ],
)
def test_definition_mistakes_raise_naming_task_and_parameter(
    forget: object, make: object, words: list[str] | None
) -> None:
    if words is None:  # a valid one: the check is that a duplicate key raises
        make()  # type: ignore[operator]

        def other(when: int) -> None: ...

        with pytest.raises(TaskDefinitionError, match="duplicate"):
            task(type_key="scratch", task_key="x")(other)
        return
    with pytest.raises(TaskDefinitionError) as info:
        make()  # type: ignore[operator]
    for word in words:
        assert word in str(info.value)


def _with_param_a(a: int) -> None: ...


def _with_file_path(file_path: str) -> None: ...


def _bad_annotation(when: object.__class__) -> None: ...  # type: ignore[valid-type]


def _bad_default(a: int = object()) -> None: ...  # type: ignore[assignment]


def test_same_arithmetic_serialises() -> None:
    dep = Dependency("x.y", 1, n=same * 2 + 1, m=10 - same, k=5)
    assert dep.to_json()["arguments"] == {
        "n": {"same": "n", "ops": [["*", 2], ["+", 1]]},
        "m": {"same": "m", "ops": [["r-", 10]]},
        "k": {"value": 5},
    }
    assert dep.to_json()["hours"] == 1.0
    assert Dependency("x.y").hours == 720


def test_a_set_of_definitions_is_checked_without_a_database() -> None:
    """What deploy() checks, on plain data: a cycle names its tasks in order (``a -> b``: a
    depends on b), through tasks deployed by another service too; an unknown dependency names it."""
    with pytest.raises(TaskDefinitionError, match=r"dependency cycle: a\.x -> b\.x -> c\.x -> a\.x"):
        check_cycles({("a", "x"): [("b", "x")], ("b", "x"): [("c", "x")], ("c", "x"): [("a", "x")]})
    check_cycles({("a", "x"): [("b", "x")], ("b", "x"): [], ("c", "x"): [("a", "x"), ("b", "x")]})

    bar = definition_of(nice_tasks.bar)  # depends on nice_tasks.foo
    foo_elsewhere = {  # as another service deployed it: depending on bar
        "parameters": definition_of(nice_tasks.foo).to_row()["parameters"],
        "dependencies": '[{"type_key": "nice_tasks", "task_key": "bar"}]',
    }
    with pytest.raises(TaskDefinitionError, match=r"cycle: .*nice_tasks\.bar.*nice_tasks\.foo"):
        check_definitions([bar], {("nice_tasks", "foo"): foo_elsewhere})
    with pytest.raises(TaskDefinitionError, match=r"nice_tasks\.bar: .*unknown dependency nice_tasks\.foo"):
        check_definitions([bar], {})


def test_a_registry_of_ones_own_holds_only_its_tasks() -> None:
    """``@tasks.task`` registers into that registry alone; ``Registry(f)`` takes a function
    decorated elsewhere; the global registry (``@task``) is the default of JobMaster."""
    from jobmaster_async import Registry

    tasks = Registry()

    @tasks.task(type_key="scratch_own", retries=1)
    def mine(a: int) -> None: ...

    @tasks.task
    def bare() -> None: ...

    assert [d.key for d in tasks] == ["scratch_own.mine", "test_tasks.bare"]
    assert registry.get("scratch_own", "mine") is None and registry.get("test_tasks", "bare") is None
    assert definition_of(mine).retries == 1
    other = Registry(mine, tasks_for_tests.add)
    assert [d.key for d in other] == ["scratch_own.mine", "tasks_for_tests.add"]
    assert registry.get("tasks_for_tests", "add") is definition_of(tasks_for_tests.add)
    with pytest.raises(TaskDefinitionError, match="not a task"):
        Registry(lambda: None)
    with pytest.raises(TypeError, match="'retires'"):
        tasks.task(retires=2)  # type: ignore[call-overload]
    with pytest.raises(TaskDefinitionError, match="duplicate key"):

        @tasks.task(type_key="scratch_own", task_key="mine")
        def again() -> None: ...
