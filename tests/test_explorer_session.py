"""The explorer's session without a UI: a request run on sdkit:tiny, told as events. No ipywidgets here."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdkit.results import Candidate, Ranked, Scores
from sdkit.save import read_manifest
from sdkit.show.explorer import session as ev
from sdkit.show.explorer.session import Request, Session
from sdkit.show.grid import read_grid_metadata


class MeanRed:
    """A scorer of the standard shape whose ranking is easy to predict: the mean red value."""

    name = "mean-red"
    model_id = "pixels"

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts):
        self.calls.append(len(images))
        v = np.array([np.asarray(im)[..., 0].mean() for im in images], np.float32)
        return Scores(logits=v, clip_score=v / 2.55, scorer="mean-red:pixels")


def red(c):
    return float(np.asarray(c.image)[..., 0].mean())


def request(tmp_path, scorer, model="sdkit:tiny", **kwargs):
    return Request(model=model, scheduler=None, scorer=scorer, clip_model=None, prompts=["a red circle"],
                   kwargs={**dict(n=3, seed=7, num_inference_steps=2, batch_size=2), **kwargs}, output_dir=tmp_path)


def run_session(req, on_event=None):
    seen = []
    session = Session(lambda e: (seen.append(e), on_event and on_event(session, e)))
    session.start(req)
    assert session.wait(120), "the session did not finish"
    return session, seen


def kinds(events, steps=True):
    return [type(e).__name__ for e in events if steps or not isinstance(e, ev.Stepped)]


def test_a_request_is_told_as_events_ranked_by_the_scores_the_candidates_carry(tmp_path):
    scorer = MeanRed()
    session, seen = run_session(request(tmp_path, scorer))
    batch = ["Stepped", "Stepped", "Stepped", "BatchFinished", "BatchRanked"]  # 2 steps, then the decoded batch
    assert kinds(seen) == ["Said", "Started", *batch, *batch, "Finished"]
    assert seen[0].message == "loading sdkit:tiny…"
    started, done = seen[1], seen[-1]
    assert started.total == 3 and started.output_dir.parent == tmp_path
    assert scorer.calls == [2, 1] and session.steps_seen == 2 * 2

    first, ranked = [e for e in seen if isinstance(e, (ev.BatchFinished, ev.BatchRanked))][:2]
    assert [c.seed for c in first.candidates] == [7, 8] and all(isinstance(c, Candidate) for c in first.ranked)
    assert all(c.score is None for c in first.ranked)  # shown at once, unscored
    assert all(isinstance(r, Ranked) for r in ranked.ranked) and sorted(r.rank for r in ranked.ranked) == [1, 2]

    assert done.started and not done.stopped and done.scorer_error is None
    run = done.run
    assert [c.seed for c in run] == [7, 8, 9] and not run.cancelled
    # Each candidate carries its own score (the shared path: score_candidates, then rank without Scores).
    assert [c.logit for c in run] == pytest.approx([red(c) for c in run], abs=1e-4)
    assert {c.scorer for c in run} == {"mean-red:pixels"}
    by_red = sorted(run.candidates, key=lambda c: (-red(c), c.seed))
    assert [r.candidate.seed for r in done.ranked] == [c.seed for c in by_red]
    assert [r.candidate for r in done.ranked] == by_red and [r.rank for r in done.ranked] == [1, 2, 3]
    records = {r["seed"]: round(r["score"], 4) for r in read_manifest(run.output_dir) if r.get("score") is not None}
    assert records == {c.seed: round(red(c) / 2.55, 4) for c in run}
    assert [(cell["rank"], cell["seed"]) for cell in read_grid_metadata(done.grid_path)] == [
        (k + 1, c.seed) for k, c in enumerate(by_red)]


def test_a_model_that_does_not_load_ends_the_request_unstarted(tmp_path):
    _, seen = run_session(request(tmp_path, MeanRed(), model=str(tmp_path / "no-such-model")))
    assert kinds(seen) == ["Said", "Failed", "Finished"]
    assert seen[1].during == "loading the model" and "no such directory" in str(seen[1].error)
    assert not seen[2].started and seen[2].run is None


def test_a_scorer_that_fails_leaves_generation_going_unranked(tmp_path):
    def broken(images, prompts):
        raise RuntimeError("CLIP exploded")

    _, seen = run_session(request(tmp_path, broken))
    failed = [e for e in seen if isinstance(e, ev.Failed)]
    assert len(failed) == 1 and failed[0].during.startswith("scoring") and "CLIP exploded" in str(failed[0].error)
    assert "BatchRanked" not in kinds(seen) and kinds(seen, steps=False).count("BatchFinished") == 2
    done = seen[-1]
    assert [c.seed for c in done.ranked] == [7, 8, 9] and all(c.score is None for c in done.run)
    assert done.scorer_error == "RuntimeError: CLIP exploded" and done.grid_path.exists()


def test_stop_keeps_the_finished_batch(tmp_path):
    def stop_after_first_batch(session, e):
        if isinstance(e, ev.BatchFinished):
            session.stop()

    _, seen = run_session(request(tmp_path, None, batch_size=1), stop_after_first_batch)
    assert kinds(seen, steps=False) == ["Said", "Started", "BatchFinished", "Finished"]  # no scorer: never ranked
    done = seen[-1]
    assert done.stopped and done.run.cancelled and [c.seed for c in done.run] == [7]
    assert done.total == 3 and len(read_manifest(done.run.output_dir)) == 1 and done.grid_path.exists()


def test_without_a_listener_the_session_logs(tmp_path, caplog):
    session = Session()
    with caplog.at_level("INFO", logger="sdkit.show.explorer.session"):
        session.work(request(tmp_path, None, model=str(tmp_path / "no-such-model")))
    assert "loading " in caplog.text and "error while loading the model: ModelNotAvailable" in caplog.text


def test_the_session_runs_where_ipywidgets_cannot_be_imported(tmp_path):
    script = f"""
import sys
sys.modules["ipywidgets"] = None  # any import of it now fails
from pathlib import Path
import sdkit.show.explorer.session as s
req = s.Request(model="sdkit:tiny", scheduler=None, scorer=None, clip_model=None, prompts=["a red circle"],
                kwargs=dict(n=1, seed=0, num_inference_steps=1), output_dir=Path({str(tmp_path)!r}))
seen = []
s.Session(seen.append).work(req)
print(" ".join(type(e).__name__ for e in seen))
print(seen[-1].run[0].seed, seen[-1].grid_path.exists())
"""
    plain = subprocess.run([sys.executable, "-c", "import sys, sdkit.show.explorer.session; "
                            "print('ipywidgets' in sys.modules)"], capture_output=True, text=True, timeout=300)
    assert plain.stdout.strip() == "False", plain.stderr
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["Said Started Stepped Stepped BatchFinished Finished", "0 True"]


def test_a_search_shows_ranked_previews_then_only_the_survivors(tmp_path):
    """successive_halving in the session: after each pruning step a Previewed event ranks every candidate's
    preview (the pruned marked with their step); the finished ranking holds only the survivors, which are the
    images their seeds make in a plain run."""
    from sdkit.generation import generate
    from sdkit.load.pipeline import load_pipeline

    scorer = MeanRed()
    req = request(tmp_path, scorer, n=4, num_inference_steps=4)
    req.kwargs.pop("batch_size")
    req = Request(**{**req.__dict__, "search": "successive_halving"})
    session, seen = run_session(req)
    previewed = [e for e in seen if isinstance(e, ev.Previewed)]
    done = seen[-1]
    assert not any(isinstance(e, ev.Failed) for e in seen), [e for e in seen if isinstance(e, ev.Failed)]
    assert [e.step for e in previewed] == [1, 2]  # default_schedule(4, 4): after 10% and 50% of 4 steps
    for e in previewed:
        assert sorted(r.candidate.seed for r in e.ranked) == [7, 8, 9, 10]
        stopped = [r.candidate.extra.get("pruned_at") for r in e.ranked]
        assert stopped[0] is None and stopped.count(None) == 1  # keep 1, then 1: live first, pruned after
    assert [r.candidate.extra.get("pruned_at") for r in previewed[-1].ranked].count(2) == 0  # all stopped at 1
    assert [type(x).__name__ for x in done.ranked] == ["Ranked"] and done.run.search is not None
    survivor = done.ranked[0].candidate
    assert survivor.seed == previewed[0].ranked[0].candidate.seed
    plain = generate(load_pipeline("sdkit:tiny"), "a red circle", seeds=[survivor.seed], n=1, num_inference_steps=4,
                     progress=False)
    assert np.array_equal(np.asarray(plain[0].image), np.asarray(survivor.image))
    assert len(read_manifest(done.run.output_dir)) == 1  # the pruned are not images on disk


def test_a_search_without_a_scorer_is_refused_before_generating(tmp_path):
    req = request(tmp_path, None, n=4, num_inference_steps=4)
    req.kwargs.pop("batch_size")
    req = Request(**{**req.__dict__, "search": "successive_halving"})
    session, seen = run_session(req)
    failed = [e for e in seen if isinstance(e, ev.Failed)]
    assert failed and "pick flax or torch" in str(failed[0].error) and not seen[-1].started


def test_an_sdxl_request_runs_ranked_with_its_own_size_and_record(tmp_path):
    scorer = MeanRed()
    session, seen = run_session(request(tmp_path, scorer, model="sdkit:tiny-xl"))
    done = seen[-1]
    assert done.started and done.scorer_error is None and len(done.run) == 3
    assert {c.image.size for c in done.run} == {(64, 64)}  # tiny-xl's own size: no height/width asked
    assert all(c.extra["sdxl"]["target_size"] == [64, 64] for c in done.run)
    assert [r.rank for r in done.ranked] == [1, 2, 3]
    assert [r.candidate.seed for r in done.ranked] == [c.seed for c in sorted(done.run, key=lambda c: (-red(c), c.seed))]
