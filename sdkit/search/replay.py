"""Making an image again: `regenerate` for every PNG sdkit writes (a plain candidate from its seed, a resampled
particle by following its lineage), and `finish_pruned` for a candidate a search stopped early. Here, above both
generation and search, so neither has to reach up for the other."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from sdkit.generation import generate
from sdkit.load.invariance import has_rows, skipping
from sdkit.load import embeddings as inversions
from sdkit.load.loras import check_same, from_records
from sdkit.load.rows import Arithmetic, differences, replaying
from sdkit.load.schedulers import scheduler_name
from sdkit.results import Candidate, Lineage, Pruned
from sdkit.runs import replayable
from sdkit.save import MANIFEST, read_metadata, read_pruned


def regenerate(source, pipe=None, **overrides) -> Candidate:
    """Make one image again from a saved PNG (or its metadata dict), bit for bit on the same device.

    `overrides` change settings (e.g. `num_inference_steps=50`) while keeping the seed. A resampled particle
    (`particle_resampling`) is remade by following its recorded lineage, as it was (no overrides).
    """
    meta = dict(source) if isinstance(source, dict) else read_metadata(source)
    refiner = overrides.pop("refiner", None)  # an SDXL refiner already loaded (else loaded from what is recorded)
    meta.update(overrides)
    if meta.get("task", "text-to-image") != "text-to-image":
        raise ValueError(
            f"regenerate() redoes text-to-image only; this image is {meta['task']!r}, whose init image and mask are "
            f"recorded only as hashes. Call sdkit.{'img2img' if meta['task'] == 'image-to-image' else 'inpaint'}"
            f"(..., seeds=[{meta['seed']}]) with the same image (and mask) instead."
        )
    lineage = Lineage.of(meta)
    if lineage and overrides:
        raise ValueError(f"overrides {sorted(overrides)}: this image is a resampled particle, made by following its "
                         "lineage of seeds; it is remade only as it was (no overrides)")
    pipe_kwargs = {**replayable(meta.get("pipe_kwargs") or {}), **(_conditioning(meta) or {})}
    if pipe is None:
        from sdkit.load.pipeline import load_pipeline

        extra = meta.get("extra") or {}
        vae = (extra.get("sdxl") or {}).get("vae", "own")
        pipe = load_pipeline(meta["model_id"], meta.get("task", "text-to-image"), scheduler=meta.get("scheduler") or None,
                             dtype=meta.get("dtype") or "auto", revision=meta.get("revision"), config=extra.get("config"),
                             loras=from_records(meta.get("loras")),
                             embeddings=inversions.from_records(meta.get("embeddings")),
                             **({"batch_invariant": True} if lineage else {}), **({} if vae == "own" else {"vae": vae}))
    check_same(meta.get("loras"), pipe)
    inversions.check_same(meta.get("embeddings"), pipe)
    arithmetic = None if overrides else Arithmetic.from_json(meta.get("arithmetic"))
    if arithmetic is not None:
        _warn_elsewhere(arithmetic, pipe.device)
    if lineage:
        return replay_lineage(pipe, meta, lineage, arithmetic)
    with replaying(pipe, {0: arithmetic}) if arithmetic is not None else contextlib.nullcontext():
        run = generate(pipe, meta["prompt"], n=1, seeds=[meta["seed"]], negative_prompt=meta.get("negative_prompt"),
                       num_inference_steps=meta["num_inference_steps"], guidance_scale=meta["guidance_scale"],
                       height=meta["height"], width=meta["width"], progress=False, pipe_kwargs=pipe_kwargs or None,
                       **recorded_refiner(meta, refiner))
    return run.candidates[0]


def recorded_refiner(meta: dict, refiner) -> dict:
    """The recorded SDXL hand-off: `refiner` (or the recorded refiner, loaded) and its `denoising_end`."""
    rec = (meta.get("extra") or {}).get("refiner")
    if not rec:
        return {}
    if refiner is None:
        from sdkit.load.pipeline import load_pipeline

        refiner = load_pipeline(rec["model_id"], "image-to-image", scheduler=rec.get("scheduler") or None,
                                dtype=rec.get("dtype") or "auto", revision=rec.get("revision"),
                                loras=from_records(rec.get("loras")))
    check_same(rec.get("loras"), refiner)
    return {"refiner": refiner, "denoising_end": rec["denoising_end"]}


def _conditioning(meta: dict) -> dict | None:
    """SDXL's recorded conditioning (sizes, crop, aesthetic scores) as the pipeline arguments that made it."""
    rec = (meta.get("extra") or {}).get("sdxl")
    if not rec:
        return None
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in rec.items() if k not in ("vae", "vae_decode")}


def _warn_elsewhere(arithmetic: Arithmetic, device) -> None:
    why = differences(arithmetic, device)
    if why:
        warnings.warn(f"this image was made on other hardware or software ({'; '.join(why)}): made again here it "
                      "can differ in the last bits, since kernels round differently; its seed, settings and rows "
                      "are replayed as recorded", stacklevel=3)


def replay_lineage(pipe, meta: dict, lineage: Lineage, arithmetic: Arithmetic | None = None) -> Candidate:
    """A particle's image again, from its metadata: the seeds of its lineage denoised as rows of one batch, each
    row running only while the lineage is on it and handing its latent on at the recorded step (the same
    arithmetic as in the search: per-row noise, batch invariance), so one trajectory's UNet cost."""
    from sdkit.search.previews import after_steps

    found = meta["extra"]["search"]
    if not has_rows(pipe):
        raise ValueError("replaying a particle's lineage needs sdkit's row wrappers: a pipeline from load_pipeline, "
                         "or sdkit.load.invariance.install(pipe, batch_invariant=...)")
    seeds = lineage.seeds  # each seed once: one row, its own noise throughout
    row = {s: k for k, s in enumerate(seeds)}
    hops = lineage.hops
    hands = {step - 1: (row[a], row[b]) for (_, a), (step, b) in zip(hops, hops[1:])}  # loop position -> rows
    live = row[hops[0][1]]
    pipe_kwargs = {"eta": found["eta"]} if "eta" in found else None

    def copy(i, latents):
        if i in hands:
            src, dst = hands[i]
            latents = latents.clone()
            latents[dst] = latents[src]
        return latents

    # Whichever row the lineage is on runs where the particle's arithmetic says it ran (its batch size and row).
    targets = {k: arithmetic for k in range(len(seeds))} if arithmetic is not None else {}
    with skipping(pipe) as skip, after_steps(pipe, copy), replaying(pipe, targets):
        def follow(p):  # after loop position p.step - 1: only the row the lineage is on runs next
            nonlocal live
            if p.step - 1 in hands:
                live = hands[p.step - 1][1]
            skip.clear()
            skip.update(k for k in range(len(seeds)) if k != live)

        skip.update(k for k in range(len(seeds)) if k != live)
        run = generate(pipe, meta["prompt"], n=len(seeds), seeds=seeds, negative_prompt=meta.get("negative_prompt"),
                       num_inference_steps=meta["num_inference_steps"], guidance_scale=meta["guidance_scale"],
                       height=meta["height"], width=meta["width"], batch_size=len(seeds), callback=follow,
                       progress=False, pipe_kwargs=pipe_kwargs, extra=meta.get("extra"))
    c = run.candidates[row[hops[-1][1]]]
    c.index = meta.get("index", c.index)
    return c


def pick_pruned(source, *, seed=None, prompt=None, run_id=None) -> Pruned:
    """The one pruned candidate of `source` (a `Pruned`, its manifest line, or a search's folder) that matches."""
    if isinstance(source, (Pruned, dict)):
        if isinstance(source, dict) and not source.get("pruned"):
            raise ValueError(f"{str(source)[:80]}...: not a pruned candidate's record (from run.search.pruned or "
                             "sdkit.save.read_pruned)")
        records = [source if isinstance(source, Pruned) else Pruned.from_record(source)]
    else:
        folder = Path(source)
        if folder.name == MANIFEST:
            folder = folder.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"{source}: no such folder (give a search's output folder, its manifest.jsonl, "
                                    "or a record from run.search.pruned)")
        records = read_pruned(folder, run_id)
        if not records:
            raise ValueError(f"{folder}: no pruned candidates listed in its manifest" +
                             (f" for run {run_id!r}" if run_id else ""))
    match = [r for r in records if (seed is None or r.seed == seed) and (prompt is None or r.prompt == prompt)
             and (run_id is None or r.run_id == run_id)]
    if len(match) != 1:
        listed = ", ".join(f"({r.prompt!r}, seed {r.seed}, run {r.run_id})" for r in records[:8])
        raise ValueError(f"seed={seed!r} prompt={prompt!r} run_id={run_id!r}: " +
                         ("no pruned candidate matches" if not match else f"{len(match)} pruned candidates match; "
                          "name the others too") + f". Pruned: {listed}" + (" ..." if len(records) > 8 else ""))
    return match[0]


def finish_pruned(pipe, source, *, seed: int | None = None, prompt: str | None = None, run_id: str | None = None,
                  image=None, mask_image=None, output_dir=None, progress: bool = False) -> Candidate:
    """Finish a candidate a search pruned: its seed to all the search's steps, with the search's settings.

    `source` is a `Pruned` from `run.search.pruned` (or its manifest line), or a search's output folder (or its
    manifest.jsonl), where `seed` (and `prompt`, `run_id` where several match) pick the pruned candidate. The image
    is the one that seed makes in a plain `generate` (or `best_of_n`) run with the same settings; with
    `output_dir` it is saved like generate's. An edit's candidate needs its init `image` (and `mask_image`, unless
    the mask was a box), which the record holds only as hashes (`sdkit.edit.tasks.redo`).
    """
    found = pick_pruned(source, seed=seed, prompt=prompt, run_id=run_id)
    c = found.candidate
    if c.task != "text-to-image" and image is None:
        raise ValueError(f"the pruned candidate is {c.task!r}: pass image= (and mask_image= for a mask that was not "
                         "a box), the init image the search started from; the record holds only its hash")
    now = scheduler_name(pipe.scheduler)
    if c.scheduler and c.scheduler != now:
        warnings.warn(f"the search used scheduler {c.scheduler!r}, this pipeline has {now!r}: the finished "
                      "image will not be the one the search would have made", stacklevel=2)
    extra = dict(c.extra or {})
    searched = extra.pop("search", {}) or {}
    extra["search"] = {"finished_pruned": {"run_id": c.run_id, "strategy": searched.get("strategy"),
                                           "step": found.step, "preview_score": found.preview_score}}
    if c.task != "text-to-image":
        from sdkit.edit.tasks import redo

        return redo(pipe, found.record(), image, mask_image, output_dir=output_dir, progress=progress,
                    extra=extra).candidates[0]
    run = generate(pipe, c.prompt, n=1, seeds=[c.seed], negative_prompt=c.negative_prompt,
                   num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale, height=c.height,
                   width=c.width, output_dir=output_dir, progress=progress, extra=extra)
    return run.candidates[0]
