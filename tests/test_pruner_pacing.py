"""The background pruner's pacing (worker/pruner.py): a batch that took longer than TARGET halves
the next, down to MIN_BATCH; one that took under half of it doubles the next, up to BATCH. The
pruning itself, against the database: tests/test_retention.py."""

from __future__ import annotations

from jobmaster_async.worker.pruner import BATCH, MIN_BATCH, TARGET, next_batch


def test_a_slow_batch_halves_the_next_down_to_the_least() -> None:
    assert next_batch(BATCH, TARGET * 1.5) == BATCH // 2
    sizes = [BATCH]
    for _ in range(10):
        sizes.append(next_batch(sizes[-1], TARGET * 10))
    assert sizes[-1] == MIN_BATCH
    assert sizes == sorted(sizes, reverse=True)


def test_a_fast_batch_doubles_the_next_up_to_the_most() -> None:
    assert next_batch(MIN_BATCH, TARGET / 4) == 2 * MIN_BATCH
    sizes = [MIN_BATCH]
    for _ in range(10):
        sizes.append(next_batch(sizes[-1], 0.0))
    assert sizes[-1] == BATCH
    assert sizes == sorted(sizes)


def test_a_batch_near_the_target_keeps_its_size() -> None:
    assert next_batch(200, TARGET * 0.75) == 200
    assert next_batch(200, TARGET) == 200
