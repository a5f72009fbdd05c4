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

from sdkit.generate import generate, regenerate
from sdkit.save import a1111_parameters, read_manifest, read_metadata, read_parameters, write_new_file

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
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file": "a.png", "seed": 1}) + "\n" + '{"file": "b.p')
    assert read_manifest(tmp_path) == [{"file": "a.png", "seed": 1}]


def test_read_metadata_of_foreign_png(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="no sdkit metadata"):
        read_metadata(tmp_path / "x.png")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from sdkit.load import load_pipeline
    from sdkit.generate import generate
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
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    records = {r["file"]: r for r in read_manifest(out)}
    for p in pngs:
        Image.open(p).load()  # complete, decodable
        assert read_metadata(p)["seed"] == records[p.name]["seed"]
    assert set(records) <= {p.name for p in pngs} and len(records) >= len(pngs) - 1
    if sig == signal.SIGINT:  # a clean stop: every image has its line, and the user is told
        assert len(records) == len(pngs)
        assert b"stopped;" in err


def test_manifest_collects_runs_and_filters_by_run_id(tiny_pipe, tmp_path):
    a = generate(tiny_pipe, "a cat", n=2, seed=0, output_dir=tmp_path, **FAST)
    b = generate(tiny_pipe, "a dog", n=1, seed=0, output_dir=tmp_path, **FAST)
    assert len(read_manifest(tmp_path)) == 3
    assert [r["prompt"] for r in read_manifest(tmp_path, run_id=b.run_id)] == ["a dog"]
    assert len(read_manifest(tmp_path, run_id=a.run_id)) == 2
