"""sdkit.models.cache: one build per cache entry, whole or absent, named after its source."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdkit.models.cache import build_atomically, build_key, cache_root

# A builder in its own process: says it is ready, builds `final` (logging each build), waits for `go`.
BUILDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from sdkit.models.cache import build_atomically
    final, log, go = map(Path, sys.argv[1:4])

    def build(tmp):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        (tmp / "weights").write_text("half")
        if sys.argv[4] == "kill":
            os.kill(os.getpid(), 9)  # as a power cut: no cleanup runs
        while not go.exists():
            time.sleep(0.05)
        (tmp / "weights").write_text(f"whole {os.getpid()}")

    (log.parent / f"ready-{os.getpid()}").touch()
    print(build_atomically(final, build))
""")


def _builder(tmp_path: Path, mode: str = "wait") -> subprocess.Popen:
    args = [sys.executable, "-c", BUILDER, str(tmp_path / "cache" / "model"), str(tmp_path / "builds.log"),
            str(tmp_path / "go"), mode]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, what: str, limit: float = 120.0) -> None:
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_cache_root_follows_sdkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SDKIT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("SDKIT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "sdkit"


def test_two_processes_building_at_once_make_one_build(tmp_path):
    builders = [_builder(tmp_path), _builder(tmp_path)]
    _wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 2 and (tmp_path / "builds.log").exists(),
              "both builders to start and one to build")
    time.sleep(1)  # room for the second one to reach the lock (a build it started would show in the log)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120) for p in builders]
    assert [p.returncode for p in builders] == [0, 0], [err for _, err in outs]
    final = tmp_path / "cache" / "model"
    assert [out.strip() for out, _ in outs] == [str(final)] * 2
    builds = (tmp_path / "builds.log").read_text().split()
    assert len(builds) == 1
    assert (final / "weights").read_text() == f"whole {builds[0]}"
    assert [p.name for p in final.parent.iterdir() if p.name != "model.lock"] == ["model"]  # no temp folder left


def test_a_killed_build_leaves_no_half_cache(tmp_path):
    killed = _builder(tmp_path, mode="kill")
    killed.communicate(timeout=120)
    assert killed.returncode == -9
    final = tmp_path / "cache" / "model"
    assert not final.exists()
    assert [p.name.startswith("model.tmp-") for p in final.parent.iterdir() if p.name != "model.lock"] == [True]
    (tmp_path / "go").touch()
    again = _builder(tmp_path)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert (final / "weights").read_text().startswith("whole ")
    assert [p.name for p in final.parent.iterdir() if p.name != "model.lock"] == ["model"]  # the dead one's temp is gone


def test_a_failed_build_leaves_nothing_and_the_next_one_builds(tmp_path):
    final = tmp_path / "model"

    def fail(tmp):
        (tmp / "weights").write_text("half")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        build_atomically(final, fail)
    assert not final.exists() and not list(tmp_path.glob("model.tmp-*"))
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "weights").write_text("whole")

    assert build_atomically(final, build) == final and (final / "weights").read_text() == "whole"
    assert build_atomically(final, build) == final and len(calls) == 1  # cached: built once


def _module(path: Path, source: str):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_key_changes_with_source_and_settings(tmp_path):
    builder = _module(tmp_path / "builder.py", "WIDTH = 32\n")
    key = build_key([builder], "text-to-image", 0)
    assert len(key) == 12 and key == build_key([builder], "text-to-image", 0)
    assert build_key([builder], "text-to-image", 1) != key
    assert build_key([builder], "inpainting", 0) != key
    _module(tmp_path / "builder.py", "WIDTH = 64\n")
    assert build_key([builder], "text-to-image", 0) != key


def test_sdkit_builds_use_the_one_key(monkeypatch, tmp_path):
    """The tiny pipeline, tiny CLIP and toy world are named by build_key over their builders' modules."""
    import sdkit.models.tiny as tiny
    import sdkit.models.tiny_clip as tiny_clip
    import sdkit.models.tokenizer as tokenizer
    from sdkit.toy import world

    built = []
    monkeypatch.setattr(tiny, "build_atomically", lambda final, build: built.append(final) or final)
    monkeypatch.setattr(tiny_clip, "build_atomically", lambda final, build: built.append(final) or final)
    monkeypatch.setattr(world, "build_atomically", lambda final, build: built.append(final) or final)
    monkeypatch.setenv("SDKIT_CACHE", str(tmp_path))
    tiny.tiny_pipeline_path("inpainting", seed=2)
    tiny_clip.tiny_clip_path(seed=5)
    settings = world.settings_for("full")
    world.toy_world_path("full")
    import sdkit.toy.junk
    import sdkit.toy.settings
    import sdkit.toy.shapes
    import sdkit.toy.train

    toy_modules = [sdkit.toy.shapes, sdkit.toy.train, world, sdkit.toy.junk, sdkit.toy.settings, tokenizer]
    assert built == [
        tmp_path / "tiny" / f"sd-inpainting-seed2-{build_key([tiny, tokenizer], 'inpainting', 2)}",
        tmp_path / "tiny" / f"clip-{build_key([tiny_clip, tokenizer], 5, {})}",
        tmp_path / "toy" / f"full-{build_key(toy_modules, settings)}",
    ]
    assert not os.listdir(tmp_path)  # nothing was built
