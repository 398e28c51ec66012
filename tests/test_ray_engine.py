"""`synthgen build --engine ray` (issue 10 item 4) on a local two-node Ray cluster (`ray.cluster_utils.Cluster`,
one CPU and one logical GPU per node, so one worker per node): the same samples as a local build, byte for byte
(`created_at` aside), after a worker is killed mid-shard, a node is removed mid-build, and the driver is killed
and the command rerun. One thread everywhere (the local build too: thread counts change float results).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

ray = pytest.importorskip("ray")

from synthgen.build import build  # noqa: E402
from synthgen.cli import app  # noqa: E402
from synthgen.engines import make_engine  # noqa: E402
from synthgen.engines.ray_engine import RayEngine, Slots, plan_slots  # noqa: E402
from synthgen.errors import SynthgenError  # noqa: E402
from synthgen.generation.streams import WaitClock  # noqa: E402
from synthgen.output.shard_set import load_completed  # noqa: E402
from synthgen.recipe import load_recipe  # noqa: E402
from synthgen.runtime import Reporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if "fault_injection" not in sys.modules:  # its fingerprint: every Parquet row and tar member, created_at aside
    _spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "bench" / "fault_injection.py")
    sys.modules["fault_injection"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["fault_injection"])
fi = sys.modules["fault_injection"]

pytestmark = pytest.mark.slow

DEMO = {"type": "demo", "classes": ["polyp", "normal"], "per_class": 4, "resolution": 32}
RECIPE = {
    "name": "ray-tiny",
    "model": {
        "train": {"preset": "tiny", "data": DEMO, "resolution": 32, "vae_steps": 2, "unet_steps": 2, "batch_size": 4}
    },
    "classes": {
        "polyp": {
            "count": 4,
            "prompts": ["colonoscopy phantom showing a {size} polyp"],
            "variables": {"size": ["small", "large"]},
        },
        "normal": {"count": 4, "prompts": ["colonoscopy phantom showing normal mucosa"]},
    },
    "sampling": {"steps": 2, "batch_size": 2, "seed": 7},
    "audit": {"data": DEMO, "threshold": "auto"},  # calibrated once by the driver, used by every worker
    "output": {"dir": "out", "shard_size": 2},  # 4 shards of 2
}
WAIT = 240  # seconds any one wait below may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory):
    """One thread, offline, a model cache of the module's own; set before the cluster starts (workers inherit)."""
    folder = tmp_path_factory.mktemp("ray")
    patch = pytest.MonkeyPatch()
    for name, value in {
        "SYNTHGEN_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "SYNTHGEN_CACHE": str(folder / "cache"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }.items():
        patch.setenv(name, value)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    yield folder
    patch.undo()


@pytest.fixture(scope="module")
def expected(work: Path) -> dict:
    """The local build (it trains the tiny model into the module's cache): what every Ray build must match."""
    result = build(load_recipe(work / "recipe.yaml"), work / "local")
    assert result.shards_written == 4
    return fi.build_fingerprint(work / "local")


@pytest.fixture(scope="module")
def cluster(work: Path, expected: dict):
    """A head and a worker node, one CPU and one logical GPU each; this process is the driver."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1})
    worker = cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


class Lines(Reporter):
    """The build's log lines, shown when an assertion fails."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str, warning: bool = False) -> None:
        self.lines.append(message)


def same_as_local(out: Path, expected: dict) -> None:
    assert fi.compare(expected, fi.build_fingerprint(out)) == []
    assert fi.leftovers(out) == []


def test_ray_build_has_the_local_builds_bytes(work: Path, expected: dict, cluster) -> None:
    out = work / "ray"
    args = ["build", str(work / "recipe.yaml"), "--out", str(out), "--engine", "ray", "--address", cluster[0].address]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "shards written 4, resumed 0" in result.output
    same_as_local(out, expected)
    generation = json.loads((out / "manifest.json").read_text())["generation"]  # the workers' clocks, summed
    local = json.loads((work / "local" / "manifest.json").read_text())["generation"]
    assert generation is not None and generation.keys() == local.keys(), (generation, local)
    assert (generation["streams"], generation["threads_per_stream"]) == (local["streams"], 1)
    assert 0 <= generation["denoiser_waited_s"] <= generation["generation_s"] and generation["generation_s"] > 0
    assert "generation: denoiser waited" in result.output, result.output
    again = CliRunner().invoke(app, args)  # finished: nothing for the cluster to do
    assert again.exit_code == 0 and "shards written 0, resumed 4" in again.output, again.output


def _kill_once(flag: str, index: int):
    def hook(shard) -> None:  # in the worker, between generating shard `index` and writing it
        if shard.index == index and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


DRIVER = """
import sys
from synthgen.build import build
from synthgen.engines.ray_engine import RayEngine
from synthgen.recipe import load_recipe
import time

def hook(shard):
    if shard.index >= 2:
        time.sleep(600)

build(load_recipe(sys.argv[1]), sys.argv[2], engine=RayEngine(sys.argv[3], hook=hook))
"""


def test_killed_driver_is_resumed_and_a_killed_worker_retried(work: Path, expected: dict, cluster) -> None:
    """The driver (a subprocess) is killed with shards 0 and 1 done and 2 and 3 in flight; the rerun's worker is
    killed mid-shard 2 once. Both end with the local build's bytes and no temp file."""
    out, flag = work / "killed", work / "killed-worker.flag"
    command = [sys.executable, "-c", DRIVER, str(work / "recipe.yaml"), str(out), cluster[0].address]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT
    while len(load_completed(out)) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert sorted(load_completed(out)) == [0, 1] and not (out / "manifest.json").exists()
    result = build(load_recipe(work / "recipe.yaml"), out, engine=RayEngine(hook=_kill_once(str(flag), 2)))
    assert flag.exists(), "no worker was killed"
    assert (result.shards_written, result.shards_resumed) == (2, 2)
    same_as_local(out, expected)


def test_node_removed_mid_build(work: Path, expected: dict, cluster) -> None:
    """The worker node goes while it holds a shard; the head's worker makes that shard too (no GPU is left for a
    replacement, which waits until the build ends). Last: the cluster keeps only its head afterwards."""
    head, node = cluster
    out, started = work / "node-removed", work / "node-removed.started"
    node_id = node.node_id

    def hook(shard) -> None:  # the worker node's worker never finishes its shard; the head's waits for it to start
        import ray as ray_inside

        if ray_inside.get_runtime_context().get_node_id() == node_id:
            Path(started).write_text(str(shard.index))
            time.sleep(600)
        for _ in range(WAIT * 10):
            if Path(started).exists():
                break
            time.sleep(0.1)

    outcome: dict = {}
    lines = Lines()

    def run() -> None:
        try:
            engine = RayEngine(hook=hook)
            outcome["result"] = build(load_recipe(work / "recipe.yaml"), out, reporter=lines, engine=engine)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not started.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists(), (outcome, lines.lines)
    head.remove_node(node, allow_graceful=False)  # as a machine that goes away
    thread.join(WAIT)
    assert not thread.is_alive() and "error" not in outcome, (outcome, lines.lines)
    assert any("its worker died" in line for line in lines.lines), lines.lines
    assert (outcome["result"].shards_written, outcome["result"].shards_resumed) == (4, 0)
    same_as_local(out, expected)


def test_ray_workers_take_the_cpus_ray_gives_them(cluster) -> None:
    from synthgen.runtime import cpu_threads

    @ray.remote(num_cpus=1, runtime_env={"env_vars": {"SYNTHGEN_THREADS": "", "OMP_NUM_THREADS": "7"}})
    def threads() -> int:
        return cpu_threads()

    assert ray.get(threads.remote(), timeout=WAIT) == 1  # Ray's allocation, not OMP_NUM_THREADS or the machine


def test_wait_clocks_of_shards_sum() -> None:
    """What the driver does with each accepted shard's clock: seconds add up, an empty clock adds nothing."""
    driver, shard = WaitClock(), WaitClock()
    shard.add(0.5, 2.0, 2, 1)
    shard.add(0.25, 1.0, 2, 1)
    for clock in (shard, WaitClock(), shard):
        driver.merge(clock)
    assert (driver.waited, driver.total, driver.calls) == (1.5, 6.0, 4)
    assert driver.record() == {"streams": 2, "threads_per_stream": 1, "denoiser_waited_s": 1.5, "generation_s": 6.0}


def test_slots_one_worker_per_gpu_else_per_threads_cpus() -> None:
    gpu_nodes = [{"Alive": True, "Resources": {"CPU": 32.0, "GPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 8.0}}]
    assert plan_slots(gpu_nodes, threads=8, shards=100) == Slots(count=8, cpus=4, gpus=1)  # 32 CPUs / 8 GPUs
    assert plan_slots(gpu_nodes, threads=2, shards=3).count == 3  # never more workers than shards
    cpu_nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": False, "Resources": {"CPU": 64.0}}]
    assert (plan_slots(cpu_nodes, 2, 100).count, plan_slots(cpu_nodes, 2, 100).cpus) == (4, 2)
    with pytest.raises(SynthgenError, match="--threads: each Ray worker takes 16 CPU threads"):
        plan_slots(cpu_nodes, 16, 100)


def test_bad_engine_flags_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    for args, message in [
        (["--engine", "spark"], "error: --engine: unknown engine 'spark'; use local or ray"),
        (["--address", "auto"], "error: --address: only with --engine ray"),
    ]:
        result = CliRunner().invoke(app, ["build", str(recipe), *args])
        assert result.exit_code == 2 and result.output.strip() == message, result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    with pytest.raises(SynthgenError, match=r"^--engine ray: Ray is not installed; pip install 'synthgen\[ray\]'$"):
        make_engine("ray")
    result = CliRunner().invoke(app, ["build", str(recipe), "--engine", "ray"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
