import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdkit.generation import generate
from sdkit.search.replay import regenerate
from sdkit.files import FAULT_POINTS, TEMP_NAME, write_new_file, write_temp
from sdkit.save import (a1111_parameters, file_name, png_bytes, read_manifest, read_metadata, read_parameters,
                        recover, update_scores)

FAST = dict(num_inference_steps=3, progress=False)


def test_files_metadata_and_manifest(tiny_pipe, tmp_path):
    run = generate(tiny_pipe, "a red circle", n=3, seed=5, negative_prompt="blurry, dark", guidance_scale=7.0,
                   output_dir=tmp_path, run_id="r1", **FAST)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["r1-000-s5.png", "r1-001-s6.png", "r1-002-s7.png"]
    params = read_parameters(tmp_path / "r1-001-s6.png")
    assert params == ("a red circle\nNegative prompt: blurry, dark\n"
                      'Steps: 3, Sampler: DDIM, CFG scale: 7, Seed: 6, Size: 64x64, Model: "sdkit:tiny", Version: sdkit 0.1.0')
    meta = read_metadata(tmp_path / "r1-001-s6.png")
    assert meta["seed"] == 6 and meta["negative_prompt"] == "blurry, dark" and meta["run_id"] == "r1"
    records = read_manifest(tmp_path)
    assert [r["file"] for r in records] == names
    assert np.array_equal(np.asarray(Image.open(run[1].path)), np.asarray(run[1].image))


def test_a1111_readers_parse_our_chunk(tiny_pipe):
    """Parse like AUTOMATIC1111's `parse_generation_parameters`: last line is `key: value` pairs."""
    import re

    c = generate(tiny_pipe, "a cat, in a hat", n=1, seed=9, **FAST)[0]
    *prompt_lines, last = a1111_parameters(c).split("\n")
    pairs = dict(re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', last))
    assert prompt_lines == ["a cat, in a hat"]
    assert pairs["Seed"] == "9" and pairs["Steps"] == "3" and pairs["Size"] == "64x64" and pairs["Sampler"] == "DDIM"


def test_regenerate_from_png_is_bit_exact(tiny_pipe, tmp_path):
    run = generate(tiny_pipe, "a blue square", n=4, seed=20, batch_size=4, output_dir=tmp_path, **FAST)
    again = regenerate(run[2].path)
    assert again.seed == 22
    assert np.array_equal(np.asarray(again.image), np.asarray(run[2].image))
    changed = regenerate(run[2].path, num_inference_steps=4)
    assert not np.array_equal(np.asarray(changed.image), np.asarray(run[2].image))


def test_never_overwrites(tmp_path):
    first = write_new_file(tmp_path / "a.png", b"one")
    second = write_new_file(tmp_path / "a.png", b"two")
    assert first.name == "a.png" and second.name == "a-1.png"
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert not list(tmp_path.glob(".*.tmp"))


def test_torn_manifest_line_is_skipped(tmp_path):
    (tmp_path / "a.png").write_bytes(b"a record needs its file")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file": "a.png", "seed": 1}) + "\n" + '{"file": "b.p')
    assert read_manifest(tmp_path) == [{"file": "a.png", "seed": 1}]
    assert (tmp_path / "manifest.jsonl").read_text().endswith('{"file": "b.p\n')  # ended: the next line is whole
    assert read_manifest(tmp_path) == [{"file": "a.png", "seed": 1}]


def test_record_whose_png_is_gone_is_dropped_with_a_warning(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file": "a.png"}) + "\n" + json.dumps({"file": "gone.png"}) + "\n")
    with pytest.warns(UserWarning, match="1 manifest record.*'gone.png'"):
        assert read_manifest(tmp_path) == [{"file": "a.png"}]


def test_read_metadata_of_foreign_png(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="no sdkit metadata"):
        read_metadata(tmp_path / "x.png")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from sdkit.load.pipeline import load_pipeline
    from sdkit.generation import generate
    pipe = load_pipeline("sdkit:tiny")
    def slow(p):
        time.sleep(0.05)  # give the parent time to kill us mid-batch
    generate(pipe, "a red circle", n=200, seed=0, batch_size=2, num_inference_steps=4, output_dir=sys.argv[1],
             run_id="k", callback=slow, progress=False)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_keeps_every_finished_image(tmp_path, tiny_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.png"))) < 4:
        time.sleep(0.05)
    time.sleep(0.13)  # land somewhere inside a batch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    pngs = sorted(out.glob("*.png"))
    assert 4 <= len(pngs) < 200
    records = {r["file"]: r for r in read_manifest(out)}  # recovers the folder: the promise holds from here
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    for p in pngs:
        Image.open(p).load()  # complete, decodable
        assert read_metadata(p)["seed"] == records[p.name]["seed"]
    assert set(records) == {p.name for p in pngs}
    if sig == signal.SIGINT:  # a clean stop: every image has its line, and the user is told
        assert len(records) == len(pngs)
        assert b"stopped;" in err


def test_manifest_collects_runs_and_filters_by_run_id(tiny_pipe, tmp_path):
    a = generate(tiny_pipe, "a cat", n=2, seed=0, output_dir=tmp_path, **FAST)
    b = generate(tiny_pipe, "a dog", n=1, seed=0, output_dir=tmp_path, **FAST)
    assert len(read_manifest(tmp_path)) == 3
    assert [r["prompt"] for r in read_manifest(tmp_path, run_id=b.run_id)] == ["a dog"]
    assert len(read_manifest(tmp_path, run_id=a.run_id)) == 2


FAULT_SCRIPT = textwrap.dedent("""
    import sys
    from sdkit.load.pipeline import load_pipeline
    from sdkit.generation import generate
    run = generate(load_pipeline("sdkit:tiny"), "a red circle", n=3, seed=30, num_inference_steps=2, output_dir=sys.argv[1],
                   run_id="f", progress=False)
    if sys.argv[2:] == ["score"]:  # as after ranking: new metadata, the same pixels
        from sdkit.save import update_scores
        for c in run:
            c.score, c.logit, c.scorer = 1.0, 0.01, "test"
        update_scores(sys.argv[1], run.candidates)
""")
FAULT_RUN = dict(prompt="a red circle", n=3, seed=30, num_inference_steps=2, progress=False)


def killed_at(out, fault, *args):
    """Run FAULT_SCRIPT in a real subprocess that SIGKILLs itself at `fault` ("<point>:<k>")."""
    env = {**os.environ, "SDKIT_FAULT_AT": fault}
    proc = subprocess.run([sys.executable, "-c", FAULT_SCRIPT, str(out), *args], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def assert_whole(out, one_line_each=True):
    """After recovery: every PNG has exactly one manifest record (and line: `one_line_each`), every record its PNG,
    no temp file remains, and every PNG opens with its metadata."""
    records = read_manifest(out)
    lines = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # the torn half of a line, ended by recover
            continue
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(r["file"] for r in records) == pngs
    if one_line_each:  # one line per PNG, not one record out of several lines (update_scores appends more)
        assert sorted(r["file"] for r in lines) == pngs
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for r in records:
        meta = read_metadata(out / r["file"])
        assert (meta["seed"], meta["index"]) == (r["seed"], r["index"])
        Image.open(out / r["file"]).load()
    return records


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_at_each_point_of_the_save_sequence(tiny_pipe, tmp_path, point, capsys):
    """Killed at `point` while saving the 2nd candidate: nothing lost or half-done; a resume finishes bit-identically."""
    out = tmp_path / "out"
    killed_at(out, f"{point}:2")
    kept = 1 if point in ("tmp-written", "tmp-synced") else 2  # the 2nd PNG exists once linked
    assert len(list(out.glob("*.png"))) == kept
    assert len(assert_whole(out)) == kept
    assert len(assert_whole(out)) == kept  # recover is idempotent

    run = generate(tiny_pipe, output_dir=out, run_id="f", **FAULT_RUN)
    assert f"{kept} of 3 candidates kept, {3 - kept} to make" in capsys.readouterr().err
    assert run.resumed == kept and [c.index for c in run] == [0, 1, 2] and not run.cancelled
    assert len(assert_whole(out)) == 3
    ref = generate(tiny_pipe, **FAULT_RUN)
    for a, b in zip(run, ref):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(np.asarray(Image.open(a.path)), np.asarray(b.image))


@pytest.mark.parametrize("fault", ["tmp-written:4", "tmp-synced:5"])
def test_kill_while_scores_are_written(tmp_path, fault):
    """update_scores rewrites PNGs through the same temp files: a kill leaves every image whole."""
    out = tmp_path / "out"
    killed_at(out, fault, "score")  # 3 saves reach each point once; then update_scores does
    assert len(assert_whole(out, one_line_each=False)) == 3


def test_recover_leaves_a_live_writer_alone(tiny_pipe, tmp_path):
    """Between a live writer's link and its line, recover adds nothing (the writer's line is coming)."""
    c = generate(tiny_pipe, "a cat", n=1, seed=0, run_id="w", **FAST)[0]
    path = tmp_path / file_name(c)
    tmp = write_temp(path, png_bytes(c))
    os.link(tmp, path)  # this process is the writer, alive, and has not written the line yet
    recover(tmp_path)
    assert tmp.exists() and not (tmp_path / "manifest.jsonl").exists()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    left = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", f".{dead}."))
    os.rename(tmp, left)  # now it is what a writer killed at that instant leaves
    assert [r["file"] for r in read_manifest(tmp_path)] == [path.name]
    assert not left.exists()
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1
    recover(tmp_path)
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1


def test_update_scores_leaves_no_temp_file(tiny_pipe, tmp_path):
    run = generate(tiny_pipe, "a cat", n=2, seed=0, output_dir=tmp_path, **FAST)
    for c in run:
        c.score = 3.0
    update_scores(tmp_path, run.candidates)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert {r["score"] for r in read_manifest(tmp_path)} == {3.0} and read_metadata(run[0].path)["score"] == 3.0


def test_bad_fault_spec_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SDKIT_FAULT_AT", "linkd:1")
    with pytest.raises(ValueError, match="SDKIT_FAULT_AT='linkd:1'"):
        write_new_file(tmp_path / "a.png", b"x")


@pytest.mark.parametrize("name,pid", [(".a.png.123.45678901.tmp", 123), (".r-000-s5.png.77.5bce0e86.tmp", 77),
                                      (".r-grid.png.9.tmp", 9), (".r.run.json.4.abcdef.tmp", 4)])
def test_temp_names_give_the_writer_pid(name, pid):
    _TMP = TEMP_NAME

    assert int(_TMP.match(name)["pid"]) == pid  # a hex tag of digits only is not taken for the pid
