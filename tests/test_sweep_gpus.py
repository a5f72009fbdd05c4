"""Sweeps on a Ray cluster with GPUs: one actor per GPU, each with its own, on a local cluster with fake GPUs."""

import json
import os
from pathlib import Path

import pytest

from sdkit.sweep.run import run_sweep
from sdkit.sweep.spec import Sweep
from sdkit.sweep.worker import actor_pool

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("resources, workers, args, expected", [
    ({"CPU": 2.0}, None, None, (1, {"num_cpus": 1.0})),
    ({"CPU": 2.0}, 2, None, (2, {"num_cpus": 2 / 3})),
    ({"CPU": 64.0, "GPU": 8.0}, None, None, (8, {"num_gpus": 1.0, "num_cpus": 1.0})),  # one pipeline per GPU
    ({"CPU": 2.0, "GPU": 2.0}, None, None, (2, {"num_gpus": 1.0, "num_cpus": 2 / 3})),
    ({"CPU": 32.0, "GPU": 8.0}, 16, None, (16, {"num_gpus": 0.5, "num_cpus": 1.0})),  # two per GPU
    ({"CPU": 32.0, "GPU": 2.0}, 3, None, (3, {"num_gpus": 0.5, "num_cpus": 1.0})),  # 3 on 2 GPUs: halves fit
    ({"CPU": 32.0, "GPU": 8.0}, 4, None, (4, {"num_gpus": 1.0, "num_cpus": 1.0})),
    ({"CPU": 32.0, "GPU": 8.0}, None, {"num_gpus": 2}, (8, {"num_gpus": 2})),  # the caller's resources win
])
def test_actor_pool(resources, workers, args, expected):
    n, remote = actor_pool(resources, workers, args)
    assert n == expected[0] and remote == pytest.approx(expected[1])


class GpuRecordingScorer:
    """A sweep's scorer object, pickled to each actor: it records what Ray gave that actor (one file per actor
    process) when the actor unpickles it, i.e. builds its worker, and again on every call, then scores with the
    tiny CLIP. Recording at construction matters: Ray Data may hand all of a small sweep's blocks to the first
    actor ready, so an actor that never scored would otherwise leave no trace (CI saw one record of two)."""

    name = "gpu-recording"

    def __init__(self, folder: str):
        self.folder, self._scorer = folder, None

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._record()

    def _record(self):
        import ray

        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        if ctx is None or ctx.get_actor_id() is None:  # unpickled outside an actor (the driver): nothing to say
            return
        record = {"pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "resources": {k: float(v) for k, v in ctx.get_assigned_resources().items()}}
        Path(self.folder, f"{os.getpid()}.json").write_text(json.dumps(record))

    def __call__(self, images, prompts):
        from sdkit.models.tiny_clip import tiny_clip_path
        from sdkit.scoring.scorers import load_scorer

        self._record()
        if self._scorer is None:
            self._scorer = load_scorer("torch", str(tiny_clip_path()), device="cpu")
        return self._scorer(images, prompts)


@pytest.fixture(scope="module")
def ray_with_two_gpus():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # another module's runtime: this one needs its own resources
        ray.shutdown()
    # Workers import sdkit from this checkout and this module (the scorer's class) from tests/.
    path = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


@pytest.mark.slow  # starts a local Ray cluster (make test runs it)
def test_one_actor_per_gpu_on_a_gpu_cluster(ray_with_two_gpus, tmp_path, monkeypatch):
    ray = ray_with_two_gpus
    asked = {}
    map_batches = ray.data.Dataset.map_batches

    def spy(self, fn, **kw):  # what sdkit asks Ray Data for
        asked.update(pool=kw["compute"].max_size, num_gpus=kw.get("num_gpus"), num_cpus=kw.get("num_cpus"))
        return map_batches(self, fn, **kw)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", spy)
    # Start the whole pool before any block flows (Ray Data's default starts actors asynchronously), so both
    # actors exist and record themselves however the blocks are shared out.
    monkeypatch.setattr(ray.data.DataContext.get_current(), "wait_for_min_actors_s", 120)
    actors = tmp_path / "actors"
    actors.mkdir()
    sweep = Sweep(["a red circle", "a blue square"], n=2, batch_size=1, model="sdkit:tiny",
                  scorer=GpuRecordingScorer(str(actors)),
                  grid={"num_inference_steps": 2, "guidance_scale": [1.0, 5.0]})
    result = run_sweep(sweep, tmp_path / "out", backend="ray", progress=False)  # workers: default
    assert result.generated == len(sweep) == 8 and all(c.score is not None for c in result.candidates)
    assert asked == {"pool": 2, "num_gpus": 1.0, "num_cpus": pytest.approx(2 / 3)}
    records = [json.loads(f.read_text()) for f in actors.iterdir()]
    assert len(records) == 2, records  # the pool: one actor per GPU (none restarted)
    assert sorted(r["gpu_ids"][0] for r in records) == ["0", "1"]  # each actor its own GPU...
    assert all(len(r["gpu_ids"]) == 1 and r["cuda_visible_devices"] == r["gpu_ids"][0] for r in records)  # ...alone
    assert all(r["resources"]["GPU"] == 1.0 for r in records)
