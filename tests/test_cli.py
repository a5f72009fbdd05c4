import json
import subprocess
import sys
import time

import pytest

from sdkit.cli.main import main


def test_cli_generates_files_with_metadata(tmp_path, tiny_path):
    out = subprocess.run(
        [sys.executable, "-m", "sdkit", "a red circle", "a blue square", "-n", "2", "--seed", "7", "--steps", "2",
         "--model", "sdkit:tiny", "--out", str(tmp_path), "--quiet", "--scheduler", "Euler a"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = tmp_path.iterdir()
    pngs = sorted(p.name for p in run_dir.glob("*-s*.png"))
    assert [p.split("-", 3)[-1] for p in pngs] == ["000-s7.png", "001-s8.png", "002-s7.png", "003-s8.png"]
    records = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert {(r["prompt"], r["seed"], r["scheduler"]) for r in records} >= {("a red circle", 7, "Euler a"), ("a blue square", 8, "Euler a")}
    assert "4 images in" in out.stdout
    # scored and ranked by default: scores in the manifest (last line per file) and the PNGs, a grid beside them
    from sdkit.show.grid import read_grid_metadata
    from sdkit.save import read_manifest, read_metadata

    assert all(r["score"] is not None and r["scorer"].startswith("clip-flax") for r in read_manifest(run_dir))
    assert read_metadata(run_dir / pngs[0])["logit"] is not None
    (grid,) = run_dir.glob("*-grid.png")
    assert sorted(c["file"] for c in read_grid_metadata(grid)) == pngs
    assert "#1  score=" in out.stdout


def test_prompts_file(tmp_path, tiny_path):
    f = tmp_path / "prompts.txt"
    f.write_text("a cat\n\n# a comment\na dog\n")
    rc = main(["generate", "--prompts-file", str(f), "-n", "1", "--seed", "1", "--steps", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 0
    from sdkit.save import read_manifest

    prompts = sorted(r["prompt"] for r in read_manifest(next((tmp_path / "o").iterdir())))
    assert prompts == ["a cat", "a dog"]


@pytest.mark.parametrize("args,message", [
    (["  "], "empty or whitespace"),
    (["a cat", "-n", "0"], "n=0"),
    (["a cat", "--height", "100"], "height=100"),
    (["a cat", "--steps", "0"], "num_inference_steps=0"),
    (["a cat", "--guidance", "-2"], "guidance_scale=-2.0"),
    (["a cat", "--guidance", "nan"], "guidance_scale=nan"),
    (["a cat", "--guidance", "inf"], "guidance_scale=inf"),
    (["a cat", "-n", "2", "--seeds", "1,2,3"], "seeds has 3 entries but n=2"),
    (["a cat", "--scheduler", "Euler b"], "scheduler='Euler b'"),
    (["generate", "--prompts-file", "/nonexistent"], "no such file"),
    (["a cat", "--out", "/proc/nope"], "cannot be created"),
])
def test_bad_input_exits_2_before_loading(monkeypatch, capsys, args, message):
    import sdkit.load.pipeline

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model before validating"))
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_missing_model_exits_1(tmp_path, capsys):
    assert main(["a cat", "--model", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_resume_a_killed_cli_run(tmp_path, tiny_pipe, monkeypatch, capsys):
    """Killed (SIGKILL, at a fault point) while saving the 2nd image; `--resume` finishes it bit-identically."""
    import os
    import signal

    import numpy as np
    from PIL import Image

    from sdkit.generation import generate

    env = {**os.environ, "SDKIT_FAULT_AT": "linked:2"}
    cmd = [sys.executable, "-m", "sdkit", "a cat", "a dog", "-n", "2", "--seed", "4", "--steps", "2", "--out",
           str(tmp_path), "--quiet", "--scorer", "none"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == -signal.SIGKILL
    (run_dir,) = tmp_path.iterdir()
    assert len(list(run_dir.glob("*.png"))) == 2

    import sdkit.load.pipeline

    real = sdkit.load.pipeline.load_pipeline
    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    assert main(["generate", "--resume", str(run_dir), "--steps", "5", "a cat"]) == 2
    err = capsys.readouterr().err
    assert "num_inference_steps was 2, now 5" in err and "prompts was ['a cat', 'a dog'], now ['a cat']" in err
    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", real)

    assert main(["generate", "--resume", str(run_dir), "--quiet", "--scorer", "none", "--seed", "4"]) == 0
    out = capsys.readouterr()
    assert "2 kept, 2 made" in out.out and "2 of 4 candidates kept, 2 to make" in out.err
    pngs = sorted(run_dir.glob("*-s*.png"))
    ref = generate(tiny_pipe, ["a cat", "a dog"], n=2, seed=4, num_inference_steps=2, progress=False)
    assert len(pngs) == 4 and not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    for p, c in zip(pngs, ref):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(c.image))
    assert main(["generate", "--resume", str(run_dir), "--quiet", "--scorer", "none"]) == 0
    assert "nothing to make" in capsys.readouterr().err


def test_resume_is_refused_for_edits_and_empty_folders(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["img2img", "--resume", str(tmp_path), "--image", "x.png", "a cat"])
    assert "--resume: not supported for edits" in capsys.readouterr().err
    assert main(["generate", "--resume", str(tmp_path)]) == 2
    assert "no sdkit run here" in capsys.readouterr().err


# --search: the strategies from the command line, their options checked before any model is loaded.

SEARCH_CASES = {  # strategy options, and the UNet evaluations they cost for 1 prompt, -n 4, --steps 4
    "best_of_n": ([], 4 * 4),
    "draft_then_finish": (["--draft-steps", "2", "--keep", "1"], 4 * 2 + 1 * 4),
    "successive_halving": (["--prune-at", "1,2", "--keep", "2,1"], 4 + 2 + 1 * 2),
}


@pytest.mark.parametrize("strategy", sorted(SEARCH_CASES))
def test_cli_search_saves_the_finished_and_prints_the_compute_line(strategy, tmp_path, tiny_pipe, capsys):
    import numpy as np

    from sdkit.generation import generate
    from sdkit.save import load_candidate, read_manifest, read_pruned

    options, evaluations = SEARCH_CASES[strategy]
    assert main(["a red circle", "-n", "4", "--seed", "3", "--steps", "4", "--out", str(tmp_path), "--quiet",
                 "--scorer", "torch", "--search", strategy, *options]) == 0
    out = capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    assert f"search {strategy}: {evaluations} UNet evaluations ({evaluations / 16:.2f} of 16)" in out
    assert "; best-of-4 at 4 steps: 16" in out
    records = read_manifest(run_dir)
    finished = {"best_of_n": 4, "draft_then_finish": 1, "successive_halving": 1}[strategy]
    assert len(records) == finished and f"{finished} images in" in out and "#1  score=" in out
    assert len(read_pruned(run_dir)) == (3 if strategy == "successive_halving" else 0)
    assert (run_dir / f"{run_dir.name}.search.json").exists() and list(run_dir.glob("*-grid.png"))
    for r in records:  # each finished image is the one its seed makes in a plain run
        c = load_candidate(run_dir / r["file"])
        alone = generate(tiny_pipe, c.prompt, n=1, seeds=[c.seed], num_inference_steps=4, progress=False)
        assert np.array_equal(np.asarray(c.image), np.asarray(alone.candidates[0].image)) and c.score is not None
        assert c.extra["search"]["strategy"] == strategy and c.run_id == run_dir.name


def test_cli_search_with_a_tiny_previewer(tmp_path, capsys):
    import diffusers
    import torch

    torch.manual_seed(0)
    diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                              num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                              latent_channels=4).save_pretrained(tmp_path / "taesd", safe_serialization=True)
    assert main(["a cat", "-n", "3", "--seed", "1", "--steps", "3", "--out", str(tmp_path / "o"), "--quiet",
                 "--scorer", "torch", "--search", "successive_halving", "--prune-at", "1", "--keep", "1",
                 "--previewer", str(tmp_path / "taesd")]) == 0
    assert "5 UNet evaluations (0.56 of 9), 3 preview decodes" in capsys.readouterr().out
    from sdkit.save import read_manifest

    (record,) = read_manifest(next((tmp_path / "o").iterdir()))
    assert record["extra"]["search"]["previewer"] == str(tmp_path / "taesd")  # what the preview scores came from


@pytest.mark.parametrize("args, message", [
    (["--prune-at", "2,6"], "--prune-at without --search: it is an option of --search successive_halving"),
    (["--keep", "2"], "--keep without --search"),
    (["--search", "draft_then_finish", "--prune-at", "1"],
     "--prune-at does not apply to --search draft_then_finish (it is an option of --search successive_halving); "
     "--search draft_then_finish takes --keep, --draft-steps"),
    (["--search", "best_of_n", "--keep", "2"], "--search best_of_n takes no options of its own"),
    (["--search", "successive_halving", "--draft-steps", "2"], "--draft-steps does not apply"),
    (["--search", "best_of_n", "--previewer", "x"], "--previewer does not apply"),
    (["--search", "draft_then_finish", "--keep", "2,1"], "--keep 2,1: draft_then_finish finishes one number"),
    (["--search", "draft_then_finish", "--draft-steps", "30"], "draft_steps=30: must be an integer from 1"),
    (["--search", "draft_then_finish", "-n", "2", "--keep", "3"], "keep=3: must be an integer from 1 to n=2"),
    (["--search", "successive_halving", "-n", "4", "--prune-at", "1,2", "--keep", "5,1"], "keep=[5, 1]"),
    (["--search", "successive_halving", "--prune-at", "1,2"], "give one keep count per pruning step"),
    (["--search", "successive_halving", "--prune-at", "40", "--keep", "1"], "prune_at=[40]"),
    (["--search", "successive_halving", "--batch-size", "2"], "--batch-size 2 with --search successive_halving"),
    (["--search", "best_of_n", "--scorer", "none"], "--search best_of_n --scorer none"),
    (["--search", "best_of_n", "-n", "2", "--seeds", "1,2"], "--seeds with --search"),
])
def test_cli_search_bad_options_exit_2_before_loading(monkeypatch, capsys, args, message):
    import sdkit.load.pipeline

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model before validating"))
    assert main(["a cat", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--search", "beam"], ["--search", "successive_halving", "--prune-at", "x"]])
def test_cli_search_unknown_values_are_usage_errors(capsys, args):
    with pytest.raises(SystemExit) as e:
        main(["a cat", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'beam'" in err or "'x': comma-separated integers" in err


def test_cli_search_refuses_resume(tmp_path, capsys):
    assert main(["generate", "--resume", str(tmp_path), "--search", "best_of_n"]) == 2
    assert "--resume with --search: a search cannot be resumed" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_the_traceback_is_one_variable_away(capsys, monkeypatch, tmp_path):
    """Whatever breaks inside (a diffusers or torch error sdkit did not foresee), a CLI user gets one line naming it
    and how to see more; SDKIT_DEBUG=1 re-raises it with its traceback."""
    import sdkit.load.pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x32 and 64x16)")

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", broken)  # the CLI imports it when it runs
    monkeypatch.delenv("SDKIT_DEBUG", raising=False)
    assert main(["a red circle", "-n", "1", "--model", "sdkit:tiny", "--out", str(tmp_path), "--scorer", "none"]) == 1
    err = capsys.readouterr().err
    assert "sdkit: error: RuntimeError: mat1 and mat2 shapes" in err and "SDKIT_DEBUG=1" in err
    assert "Traceback" not in err
    monkeypatch.setenv("SDKIT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        main(["a red circle", "-n", "1", "--model", "sdkit:tiny", "--out", str(tmp_path), "--scorer", "none"])
