"""Denoising streams (`sampling.streams`, generation/streams.py): the same bytes whatever the number of streams,
results in job order, bounded back-pressure, a failing stream stopping the others with a clear error, and the
denoiser's waiting time recorded. No timings here: bench/bench_generation.py.

Tiny in-process pipelines (an SD 1.5 layout with CLIP, and an untrained MSDM with its BERT), one thread per stream.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pipeline_factories import sd_pipeline

from synthgen.generation.streams import STREAM_WORK_LIMIT, Streams, WaitClock, plan_streams
from synthgen.models.loading import LoadedModel
from synthgen.plan import Job, Shard
from synthgen.recipe import AuditConfig, OutputConfig, SamplingConfig

PROMPTS = ["colonoscopy polyp", "colonoscopy ulcer", "normal mucosa"]
WAIT_LINE = re.compile(
    r"generation: denoiser waited \d+\.\d s of \d+\.\d s on the finishing thread \(decode, encode, audit\)"
)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """One CPU thread for synthgen, so every stream count below runs one-thread streams."""
    monkeypatch.setenv("SYNTHGEN_THREADS", "1")


def msdm_pipeline():
    from synthgen.models import msdm

    spec = msdm.PRESETS["tiny"]
    tokenizer = msdm.train_tokenizer(PROMPTS, spec)
    vae = msdm.build_vae(spec, 32)
    text = msdm.build_text_encoder(spec, len(tokenizer))
    unet = msdm.build_unet(spec, 32, vae=vae, cross_attention_dim=spec.text_hidden)
    return msdm.assemble_pipeline(vae, text, tokenizer, unet)


@pytest.fixture(scope="module", params=["sd", "msdm"])
def model(request: pytest.FixtureRequest) -> LoadedModel:
    import torch

    torch.manual_seed(0)
    pipeline = sd_pipeline() if request.param == "sd" else msdm_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline, request.param, "0" * 64, Path("."), {})


def jobs(n: int = 7) -> list[Job]:
    return [Job(f"k-{i}", "polyp", PROMPTS[i % len(PROMPTS)], 2000 + i) for i in range(n)]


def generator(model: LoadedModel, streams: int | str, **extra):
    from synthgen.generate import Generator

    config = SamplingConfig(steps=2, resolution=32, batch_size=2, streams=streams, **extra)
    return Generator(model, config, {})


def test_streams_give_the_same_bytes_in_job_order(model: LoadedModel) -> None:
    from synthgen.output.writers import encoded_bytes, pre_encode

    runs = {}
    for streams in (1, 2, 3):
        finished: list[str] = []
        progress: list[int] = []

        def finish(samples, finished=finished) -> None:
            assert threading.current_thread() is threading.main_thread()  # the finishing thread is the caller's
            for sample in samples:
                pre_encode(sample, "png")
                finished.append(sample.key)

        made = generator(model, streams).generate(jobs(), lambda done, _, p=progress: p.append(done), finish=finish)
        assert [s.key for s in made] == finished == [job.key for job in jobs()]  # 4 batches, finished in order
        assert progress == [2, 4, 6, 7]
        runs[streams] = made
    for one, two, three in zip(runs[1], runs[2], runs[3], strict=True):
        assert encoded_bytes(one, "png") == encoded_bytes(two, "png") == encoded_bytes(three, "png")
        assert one.metadata == two.metadata == three.metadata  # sampling_numerics included
    record = json.loads(runs[2][0].metadata["sampling_numerics"])
    assert record["threads"] == 1 and "streams" not in record  # the bytes depend on the threads per stream only


def test_negative_prompts_across_streams(model: LoadedModel) -> None:
    one, three = (generator(model, n, negative_prompt="blurry").generate(jobs(5)) for n in (1, 3))
    assert [a.image.tobytes() for a in one] == [b.image.tobytes() for b in three]


def test_each_stream_has_its_own_scheduler_and_the_weights_are_shared(model: LoadedModel) -> None:
    made = generator(model, 3)
    pipelines = made._pipelines
    assert len(pipelines) == 3 and pipelines[0] is model.pipeline
    assert len({id(p.scheduler) for p in pipelines}) == 3
    assert len({id(p.unet) for p in pipelines}) == len({id(p.vae) for p in pipelines}) == 1


def test_a_failing_stream_stops_the_others_with_a_clear_error(model: LoadedModel) -> None:
    made = generator(model, 2)
    calls: list[int] = []
    original = type(made._pipelines[1]).__call__

    def failing(self, *args, **kwargs):
        calls.append(id(self))
        if self is made._pipelines[1]:
            raise RuntimeError("out of memory in the UNet")
        return original(self, *args, **kwargs)

    made._pipelines[1].__class__ = type("Failing", (type(made._pipelines[1]),), {"__call__": failing})
    with pytest.raises(RuntimeError, match="out of memory in the UNet") as caught:
        made.generate(jobs(12))  # 6 batches: stream 1 fails on its first (batch 1)
    assert any(re.fullmatch(r"\(in denoising stream 1, batch \d+; .*\)", note) for note in caught.value.__notes__)
    assert len(calls) < 6  # the other stream stopped instead of sampling every remaining batch
    assert not [t for t in threading.enumerate() if t.name.startswith("synthgen-stream")]


def test_the_wait_is_recorded_per_generator_and_in_the_shard_builder(model: LoadedModel) -> None:
    from synthgen.shard_builder import ShardBuilder

    made = generator(model, 2)
    loaded = SimpleNamespace(recipe=SimpleNamespace(output=OutputConfig(), audit=AuditConfig(enabled=False)))
    builder = ShardBuilder(loaded, lambda: made, None, SimpleNamespace(progress=lambda *a: None, log=print))
    assert builder.wait.calls == 0
    samples, log = builder.run(Shard(0, tuple(jobs(5))))
    assert len(samples) == 5 and log is None
    wait = builder.wait
    assert wait.calls == 1 and 0 <= wait.waited <= wait.total and wait.total > 0
    assert (wait.streams, wait.threads) == (2, 1)
    assert WAIT_LINE.fullmatch(wait.line())
    assert set(wait.record()) == {"streams", "threads_per_stream", "denoiser_waited_s", "generation_s"}
    assert made.wait.calls == 1 and made.wait.total == wait.total


def test_streams_are_planned_for_the_cpu_and_small_models(model: LoadedModel) -> None:
    import torch

    cpu, cuda, pipeline = torch.device("cpu"), torch.device("cuda"), model.pipeline
    assert plan_streams("auto", pipeline, cpu, 2, 48, 32) == (2, 1)
    assert plan_streams("auto", pipeline, cpu, 1, 48, 32) == (1, 1)
    assert plan_streams("auto", pipeline, cpu, 32, 48, 32) == (8, 4)  # at most 8 streams; threads shared out
    assert plan_streams("auto", pipeline, cuda, 16, 48, 32) == (1, 16)
    assert plan_streams(3, pipeline, cpu, 2, 48, 32) == (3, 1)
    assert plan_streams(1, pipeline, cpu, 2, 48, 32) == (1, 2)
    parameters = sum(p.numel() for p in pipeline.unet.parameters())
    too_big = int(STREAM_WORK_LIMIT / parameters) + 1  # latent pixels x images beyond the limit
    assert plan_streams("auto", pipeline, cpu, 2, too_big, 4 * pipeline.vae_scale_factor)[0] == 1
    assert SamplingConfig().streams == "auto"
    kandinsky = SimpleNamespace(scheduler=None, prior_pipe=None, decoder_pipe=None)
    assert plan_streams(4, kandinsky, cpu, 4, 1, 64) == (1, 4)
    assert plan_streams(4, pipeline, cpu, 4, 1, 64, prompts_encoded_once=False) == (1, 4)  # SDXL, FLUX: one


# --- the runner alone (no model) ------------------------------------------------------------------------------


def test_back_pressure_bounds_the_batches_ahead_of_the_finishing_thread() -> None:
    finished: list[int] = []
    ahead: list[int] = []

    def task(index: int):
        def run(stream: int, stop: threading.Event) -> int:
            ahead.append(index - len(finished))  # batches started beyond the last one finished
            return index

        return run

    def finish(index: int, value: int) -> None:
        assert index == value
        time.sleep(0.002)
        finished.append(value)

    waited, total = Streams(3, 1, depth=1).run([task(i) for i in range(40)], finish)
    assert finished == list(range(40))
    assert max(ahead) <= 3 + 1  # streams + depth
    assert 0 <= waited <= total


def test_a_failing_finish_stops_the_streams() -> None:
    started: list[int] = []

    def task(stream: int, stop: threading.Event) -> None:
        started.append(stream)

    def finish(index: int, value: None) -> None:
        if index == 2:
            raise ValueError("audit failed")

    with pytest.raises(ValueError, match="audit failed"):
        Streams(2, 1).run([task] * 50, finish)
    assert len(started) <= 2 + 1 + 3  # the window past batch 2, not all 50
    assert not [t for t in threading.enumerate() if t.name.startswith("synthgen-stream")]


def test_one_stream_without_overlap_runs_inline() -> None:
    threads: set[str] = set()

    def task(stream: int, stop: threading.Event) -> None:
        threads.add(threading.current_thread().name)

    clock = WaitClock()
    clock.add(*Streams(1, 2, overlap=False).run([task] * 3, lambda i, v: time.sleep(0.01)), 1, 2)
    assert threads == {threading.main_thread().name}
    assert clock.waited >= 0.03 - 1e-3 and WAIT_LINE.fullmatch(clock.line())


class FlagByBytes:
    """A stand-in auditor: a sample is a copy when its image's first pixel byte is even (about half of them,
    decided by the bytes alone, so two runs that make the same bytes get the same verdicts)."""

    threshold = 0.5

    def check(self, samples):
        from synthgen.audit.detection.auditor import Verdict

        return [
            Verdict(float(s.image.tobytes()[0] % 2 == 0), "train-0", s.image.tobytes()[0] % 2 == 0) for s in samples
        ]

    def sample_metadata(self, verdict) -> dict:
        return {"audit_flagged": verdict.flagged}


def test_run_many_gives_each_shard_what_run_gives_it_retries_included(model: LoadedModel) -> None:
    """One set of streams through several shards (the local engine) against one shard at a time (a Ray task):
    the same samples, bytes, metadata and audit rows per shard; shards with retries may complete later."""
    from synthgen.shard_builder import ShardBuilder

    audit = AuditConfig(action="drop", max_retries=1)
    loaded = SimpleNamespace(recipe=SimpleNamespace(output=OutputConfig(), audit=audit))
    reporter = SimpleNamespace(progress=lambda *a: None, log=lambda *a, **k: None)
    all_jobs = jobs(11)
    shards = [Shard(i, tuple(all_jobs[i * 3 : i * 3 + 3])) for i in range(4)]  # 3, 3, 3 and 2 jobs

    def rows(log) -> list[tuple]:
        return [(r.key, r.flagged, r.dropped, r.attempt) for r in log.rows]

    made = generator(model, 2)
    one_by_one = {s.index: ShardBuilder(loaded, lambda: made, FlagByBytes(), reporter).run(s) for s in shards}
    completed: list[int] = []
    together: dict[int, tuple] = {}

    def done(shard: Shard, samples, log) -> None:
        assert threading.current_thread() is threading.main_thread()
        completed.append(shard.index)
        together[shard.index] = (samples, log)

    builder = ShardBuilder(loaded, lambda: generator(model, 2), FlagByBytes(), reporter)
    builder.run_many(shards, done)
    assert sorted(completed) == [0, 1, 2, 3] and builder.wait.calls == 1  # one run of the streams
    retried = [i for i, (_, log) in one_by_one.items() if any(r.attempt for r in log.rows)]
    assert retried, "the stand-in auditor flagged nothing: the test would not cover retries"
    for index, (samples, log) in one_by_one.items():
        other_samples, other_log = together[index]
        assert [s.key for s in samples] == [s.key for s in other_samples]
        assert [s.image.tobytes() for s in samples] == [s.image.tobytes() for s in other_samples]
        assert [s.metadata for s in samples] == [s.metadata for s in other_samples]
        assert rows(log) == rows(other_log)


def test_a_finisher_s_follow_up_work_runs_next_and_the_feed_is_read_lazily() -> None:
    """Work a finisher returns goes ahead of the feed's next group; the feed is read only when work runs out."""
    finished: list[str] = []
    fed: list[int] = []
    groups = iter(range(3))

    def item(name: str, follow: list | None = None):
        def finisher(result: str) -> list | None:
            finished.append(result)
            return follow

        return (lambda stream, stop: name, finisher)

    def feed() -> list:
        for group in groups:
            fed.append(len(finished))
            retry = [item(f"g{group}-retry")] if group == 0 else None
            return [item(f"g{group}-a"), item(f"g{group}-b", retry)]
        return []

    Streams(1, 1, overlap=False).run_feed(feed)  # inline: strictly one item after the other
    assert finished == ["g0-a", "g0-b", "g0-retry", "g1-a", "g1-b", "g2-a", "g2-b"]
    assert fed == [0, 3, 5]  # each group read when the work before it was finished

    finished.clear()
    fed.clear()
    groups = iter(range(3))
    Streams(2, 1).run_feed(feed)  # two streams run ahead of the finishing thread, at most `window` items
    assert sorted(finished) == sorted(["g0-a", "g0-b", "g0-retry", "g1-a", "g1-b", "g2-a", "g2-b"])
    order = {name: finished.index(name) for name in finished}
    assert order["g0-a"] < order["g0-b"] < order["g0-retry"] and order["g1-a"] < order["g1-b"] < order["g2-a"]
    assert fed[2] >= 1  # group 2 waited for back-pressure: it was not read up front
