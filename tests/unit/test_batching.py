"""Dynamic batching: each caller gets exactly its own rows, a batch holds at most `max_size` images of one model,
errors reach the callers they concern, and (with the real runtime and store) a state published while predictions
stream in never mixes into a batch: every batch is computed with one snapshot."""

from __future__ import annotations

import asyncio
import os
import threading

import fakeredis
import numpy as np
import pytest
import torch

from models_store import Store
from service.batching import Batcher
from service.errors import Problem
from service.inference import InferenceRuntime, auto_inference_threads, in_serving_layout, takes_channels_last
from tests.service.conftest import register_tiny, serve_forget_vector
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings
from unlearnd.state_versions import StateVersions
from unlearning.evaluation import perturbed_logits


class TimesTen:
    """`run` for a Batcher: rows × 10 computed on the whole batch, then split per caller; records every batch as
    (key, rows per caller). The first batch waits for `release`, so the calls made meanwhile queue up."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.threads: list[threading.Thread] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, key: str, inputs: list[np.ndarray]) -> list:
        self.batches.append((key, [len(x) for x in inputs]))
        self.threads.append(threading.current_thread())
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if key == "broken":
            raise RuntimeError("the model does not load")
        out = np.concatenate(inputs) * 10
        results, start = [], 0
        for x in inputs:
            results.append(ValueError("negative") if (x < 0).any() else (key, out[start:start + len(x)]))
            start += len(x)
        return results


def rows(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.float32)[:, None]


async def _while_held(batcher: Batcher, run: TimesTen, calls: list[tuple[str, np.ndarray]]) -> list:
    """Hold the first batch, submit `calls` meanwhile, release; every outcome (or exception), in call order."""
    first = asyncio.ensure_future(batcher.submit("m", rows(-100, 1) * -1))
    assert await asyncio.to_thread(run.entered.wait, 10)
    tasks = [asyncio.ensure_future(batcher.submit(key, x)) for key, x in calls]
    await asyncio.sleep(0.05)  # every call is queued
    run.release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    await first
    batcher.close()
    return outcomes


def test_each_caller_gets_its_own_rows_in_batches_of_at_most_max_size():
    run = TimesTen()
    batcher = Batcher(run, max_size=4, max_wait_s=0.05)
    sizes = [1, 2, 1, 3, 1, 1, 6, 2, 1]  # 6 > max_size: runs alone, unsplit
    calls, first = [], 0
    for n in sizes:
        calls.append(("m", rows(first, n)))
        first += n
    outcomes = asyncio.run(_while_held(batcher, run, calls))
    for (_, x), (key, y) in zip(calls, outcomes, strict=True):
        assert key == "m" and np.array_equal(y, x * 10)
    later = run.batches[1:]
    assert sorted(n for _, batch in later for n in batch) == sorted(sizes)
    assert all(sum(batch) <= 4 or batch == [6] for _, batch in later), later
    assert any(len(batch) > 1 for _, batch in later), later  # callers were gathered


def test_models_never_share_a_batch_and_errors_reach_only_their_callers():
    run = TimesTen()
    batcher = Batcher(run, max_size=8, max_wait_s=0.0)
    calls = [("a", rows(0, 1)), ("b", rows(1, 2)), ("a", -rows(3, 1)), ("broken", rows(4, 1)), ("b", rows(5, 1)),
             ("a", rows(6, 1))]
    outcomes = asyncio.run(_while_held(batcher, run, calls))
    for (key, x), outcome in zip(calls, outcomes, strict=True):
        if key == "broken":
            assert isinstance(outcome, RuntimeError)
        elif (x < 0).any():
            assert isinstance(outcome, ValueError)  # its own failure; the others of its batch are served
        else:
            assert outcome[0] == key and np.array_equal(outcome[1], x * 10)
    assert sorted(key for key, _ in run.batches[1:]) == ["a", "b", "broken"]  # one batch per model


def test_close_answers_what_was_submitted_and_a_later_call_starts_a_new_thread():
    run = TimesTen()
    run.release.set()
    batcher = Batcher(run, max_size=4, max_wait_s=0.0)

    async def scenario() -> None:
        pending = [asyncio.ensure_future(batcher.submit("m", rows(i, 1))) for i in range(3)]
        await asyncio.sleep(0)
        await asyncio.to_thread(batcher.close)
        assert [float(y[0, 0]) for _, y in await asyncio.gather(*pending)] == [0.0, 10.0, 20.0]
        first = run.threads[-1]
        assert not first.is_alive() and first is not threading.current_thread()
        _, again = await batcher.submit("m", rows(7, 1))
        assert float(again[0, 0]) == 70.0 and run.threads[-1] is not first
        await asyncio.to_thread(batcher.close)
        assert not run.threads[-1].is_alive()

    asyncio.run(scenario())


def test_callers_on_several_event_loops_share_a_batch_each_gets_its_own_rows_and_a_cancelled_one_is_skipped():
    run = TimesTen()
    batcher = Batcher(run, max_size=16, max_wait_s=0.0)
    outcomes: dict[int, list] = {}
    queued = threading.Barrier(3)

    async def submit(first: int, cancel_one: bool) -> None:
        tasks = [asyncio.ensure_future(batcher.submit("m", rows(first + i, 1 + i))) for i in range(3)]
        await asyncio.sleep(0)  # every call is queued
        if cancel_one:
            tasks[1].cancel()
        await asyncio.to_thread(queued.wait, 10)
        outcomes[first] = await asyncio.gather(*tasks, return_exceptions=True)

    held = threading.Thread(target=lambda: asyncio.run(batcher.submit("m", rows(1000, 1))))
    held.start()
    assert run.entered.wait(10)
    loops = [threading.Thread(target=lambda first=first: asyncio.run(submit(first, first == 200)))
             for first in (100, 200)]
    for thread in loops:
        thread.start()
    queued.wait(10)
    run.release.set()
    for thread in [held, *loops]:
        thread.join(10)
    batcher.close()
    assert run.batches[1:] == [("m", [1, 2, 3, 1, 2, 3])]  # both loops' callers in one forward pass
    for first, answers in outcomes.items():
        for i, answer in enumerate(answers):
            if first == 200 and i == 1:
                assert isinstance(answer, asyncio.CancelledError)
            else:
                assert answer[0] == "m" and np.array_equal(answer[1], rows(first + i, 1 + i) * 10)



@pytest.mark.parametrize("wait_share", [0.0, 1.0])
def test_a_slow_models_concurrent_callers_wait_a_share_of_its_forward_pass_to_share_a_batch(wait_share):
    """Forward passes of 0.2 s, no fixed wait: with a wait share of 1, a caller arriving 20 ms after another
    (once the model's traffic is concurrent) joins its batch; without, each runs alone."""
    batches: list[int] = []

    def slow(key: str, inputs: list[np.ndarray]) -> list:
        batches.append(len(inputs))
        threading.Event().wait(0.2)
        return [(key, x) for x in inputs]

    batcher = Batcher(slow, max_size=8, max_wait_s=0.0, wait_share=wait_share)

    async def scenario() -> None:
        running = asyncio.ensure_future(batcher.submit("m", rows(0, 1)))
        await asyncio.sleep(0.05)  # the next two queue while it runs, and share a batch: "m" is crowded
        await asyncio.gather(running, *(batcher.submit("m", rows(i, 1)) for i in (1, 2)))
        first = asyncio.ensure_future(batcher.submit("m", rows(10, 1)))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit("m", rows(11, 1)))
        await asyncio.gather(first, second)

    asyncio.run(scenario())
    batcher.close()
    assert batches[:2] == [1, 2] and batcher.wait_s("m") == pytest.approx(0.2 * wait_share, abs=0.1)
    assert batches[2:] == ([2] if wait_share else [1, 1])

# ---- the runtime: one snapshot per batch while a state is published ------------------------------------------
def tiny_store(data_dir) -> Store:
    """Model `tiny` (1×8×8, 10 classes) in a signed store."""
    torch.manual_seed(0)
    return register_tiny(open_store(Settings(data_dir=data_dir)))


@pytest.fixture
def store(tmp_path) -> Store:
    return tiny_store(tmp_path)


def test_a_state_published_mid_stream_never_mixes_into_a_batch(store):
    versions = StateVersions(fakeredis.FakeRedis())
    versions.bump("tiny")
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=3600, batch_max_size=8,
                               batch_max_wait_ms=20)
    batches: list[list[int]] = []
    computed = threading.Event()
    run = runtime.batcher._run

    def recording(key, inputs):
        outcomes = run(key, inputs)
        batches.append([id(served) for served, _ in outcomes])
        computed.set()
        return outcomes

    runtime.batcher._run = recording
    x = np.random.default_rng(0).random((60, 1, 8, 8), dtype=np.float32)

    async def scenario():
        before = [asyncio.ensure_future(runtime.predict("tiny", x[i:i + 1 + i % 2])) for i in range(30)]
        assert await asyncio.to_thread(computed.wait, 30)  # a first batch was computed with state 1
        serve_forget_vector(store, 0.4, ["r"])
        versions.bump("tiny")
        after = [asyncio.ensure_future(runtime.predict("tiny", x[i:i + 1 + i % 2])) for i in range(30, 59)]
        return await asyncio.gather(*before), await asyncio.gather(*after)

    before, after = asyncio.run(scenario())
    runtime.close()
    assert all(len(set(batch)) == 1 for batch in batches), batches  # one snapshot per batch
    assert any(len(batch) > 1 for batch in batches) and {s.state_version for s, _ in before + after} == {1, 2}
    assert all(served.state_version == 2 for served, _ in after)  # started after the bump: sees the new state
    for i, (served, probabilities) in enumerate(before + after):
        assert (served.delta is None) == (served.state_version == 1)
        own = torch.from_numpy(x[i:i + 1 + i % 2])
        expected = torch.softmax(perturbed_logits(served.model, own, served.delta), dim=1).numpy()
        assert probabilities.shape == expected.shape and np.allclose(probabilities, expected, atol=1e-6)


def test_a_caller_whose_images_do_not_fit_the_snapshot_gets_422_alone(store):
    runtime = InferenceRuntime(store, "cpu", batch_max_size=8, batch_max_wait_ms=0)
    outcomes = runtime._run_batch("tiny", [np.zeros((1, 1, 8, 8), np.float32), np.zeros((2, 3, 8, 8), np.float32)])
    assert outcomes[0][1].shape == (1, 10)
    assert isinstance(outcomes[1], Problem) and outcomes[1].status == 422


def test_batches_from_the_setting_on_run_channels_last_and_predict_as_contiguous_ones_do(store):
    rgb = np.random.default_rng(0).random((8, 3, 4, 4), dtype=np.float32)
    for images in (rgb, rgb.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)):  # the latter: stacked PNGs
        served = {(n, minimum): in_serving_layout(images[:n], minimum) for n in (1, 7, 8) for minimum in (0, 8)}
        layouts = {key: (t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last))
                   for key, t in served.items()}
        assert layouts == {(1, 0): (True, False), (1, 8): (True, False), (7, 0): (True, False),
                           (7, 8): (True, False), (8, 0): (True, False), (8, 8): (False, True)}
        assert np.array_equal(in_serving_layout(images, 8).numpy(), rgb)
    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    answers = []
    for minimum in (0, 8):
        runtime = InferenceRuntime(store, "cpu", batch_max_size=8, channels_last_min_batch=minimum)
        (served, probabilities), = runtime._run_batch("tiny", [x])
        answers.append(probabilities)
        assert served.channels_last == (minimum > 0)  # the small CNN takes channels-last images
    assert np.allclose(answers[0], answers[1], atol=1e-6)


class FlatView(torch.nn.Module):
    """A model that views its input as flat: it cannot take channels-last images."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.view(len(x), -1))


def test_only_models_that_give_the_same_logits_channels_last_take_channels_last_batches():
    torch.manual_seed(0)
    convolutional = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    assert takes_channels_last(convolutional, [3, 4, 4], "cpu")
    assert not takes_channels_last(FlatView().eval(), [3, 4, 4], "cpu")
    assert not takes_channels_last(convolutional, [48], "cpu")  # not images


def test_inference_threads_follow_the_setting_or_the_process_share_of_the_cpus(store, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [auto_inference_threads(workers) for workers in (1, 2, 8)] == [8, 4, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})

    def runtime(**settings) -> InferenceRuntime:
        return InferenceRuntime.from_settings(Settings(data_dir=tmp_path, **settings), store, ledger=None,
                                              redis=fakeredis.FakeRedis())

    assert runtime(api_workers=1).torch_threads == 2 and runtime(api_workers=2).torch_threads == 1
    chosen = runtime(inference_threads=3)
    seen = []
    run = chosen.batcher._run
    chosen.batcher._run = lambda key, inputs: seen.append(torch.get_num_threads()) or run(key, inputs)
    own = torch.get_num_threads()
    try:
        served, probabilities = asyncio.run(chosen.predict("tiny", np.zeros((2, 1, 8, 8), np.float32)))
    finally:
        chosen.close()
        torch.set_num_threads(own)
    assert seen == [3] and probabilities.shape == (2, 10)
