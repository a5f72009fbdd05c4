"""Previews: what each candidate would become, seen at every denoising step (the x0 prediction).

    with capture_previews(pipe) as previews:
        run = generate(pipe, "a red circle", n=8, seed=0)
    images = decode_previews(previews.at(5), pipe.vae)   # every candidate as its 6th step predicted it

`x0_prediction` is the clean latent a scheduler step implies, in each scheduler's own convention (all of
`sdkit.load.schedulers.SCHEDULERS`); `decode_previews` turns latents into PIL images with the pipeline's
VAE or a tiny previewer (`sdkit.load.previewer.load_previewer`: diffusers' `AutoencoderTiny`, e.g. `madebyollin/taesd`
for SD 1.x).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Collection


def _step_index(scheduler, timestep) -> int:
    """The index into `scheduler.sigmas` that its next `step(..., timestep, ...)` uses, found without changing it."""
    if scheduler.step_index is not None:
        return scheduler.step_index
    if scheduler.begin_index is not None:  # as the schedulers' own _init_step_index
        return scheduler.begin_index
    if hasattr(timestep, "to"):
        timestep = timestep.to(scheduler.timesteps.device)
    return scheduler.index_for_timestep(timestep)


def x0_prediction(scheduler, model_output, timestep, sample):
    """The clean latent (x0) that `scheduler.step(model_output, timestep, sample)` predicts, as float32.

    Call it before that step: it reads the scheduler's position (step index) and changes no state. `sample` is
    what the pipeline passes to `step` (for Euler, Euler a and Heun the unscaled latent, not
    `scale_model_input(sample)`). Epsilon, v and sample prediction models; flow prediction for the DPM/UniPC kind.
    """
    import torch

    config = scheduler.config
    kind = config.get("prediction_type", "epsilon")
    eps, x = model_output.float(), sample.float()
    if kind in ("sample", "original_sample"):
        x0 = eps
    elif hasattr(scheduler, "_sigma_to_alpha_sigma_t"):
        # DPM-Solver, UniPC and kin: x = alpha_t x0 + sigma_t eps at sigmas[step index]; their own
        # convert_model_output gives x0 only for the x0-predicting variants (dpmsolver++, predict_x0).
        sigma = scheduler.sigmas[_step_index(scheduler, timestep)]
        alpha_t, sigma_t = (v.to(x.device, torch.float32) for v in scheduler._sigma_to_alpha_sigma_t(sigma))
        x0 = {"epsilon": lambda: (x - sigma_t * eps) / alpha_t,
              "v_prediction": lambda: alpha_t * x - sigma_t * eps,
              "flow_prediction": lambda: x - sigma_t * eps}[_known(kind, "epsilon", "v_prediction", "flow_prediction")]()
    elif getattr(scheduler, "sigmas", None) is not None and hasattr(scheduler, "index_for_timestep"):
        # k-diffusion samplers (Euler, Euler a, Heun): x = x0 + sigma eps. Heun's second evaluation of a step
        # sits at sigmas[step index] too (its step_index has moved on by one). Euler with s_churn > 0 adds
        # noise inside step() first, so its x0 is not known beforehand; sdkit's schedulers do not use it.
        sigma = scheduler.sigmas[_step_index(scheduler, timestep)].to(x.device, torch.float32)
        x0 = {"epsilon": lambda: x - sigma * eps,
              "v_prediction": lambda: eps * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)}[
            _known(kind, "epsilon", "v_prediction")]()
    elif getattr(scheduler, "alphas_cumprod", None) is not None:
        # DDIM, PNDM, DDPM: x = sqrt(a_t) x0 + sqrt(1 - a_t) eps at the timestep the UNet saw. For PNDM that is
        # the UNet's own x0 at this sample (its step mixes several evaluations into one update).
        t = int(timestep.item() if hasattr(timestep, "item") else timestep)
        a = scheduler.alphas_cumprod[t].to(x.device, torch.float32)
        x0 = {"epsilon": lambda: (x - (1 - a) ** 0.5 * eps) / a**0.5,
              "v_prediction": lambda: a**0.5 * x - (1 - a) ** 0.5 * eps}[_known(kind, "epsilon", "v_prediction")]()
    else:
        raise TypeError(f"{type(scheduler).__name__} has neither sigmas nor alphas_cumprod: no x0 prediction known")
    if config.get("thresholding"):  # as the schedulers do to their own x0
        x0 = scheduler._threshold_sample(x0)
    elif config.get("clip_sample"):
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0


def _known(kind: str, *kinds: str) -> str:
    if kind not in kinds:
        raise NotImplementedError(f"x0 previews for prediction_type={kind!r} are not implemented here; known: {kinds}")
    return kind


@dataclasses.dataclass
class PreviewStep:
    """The x0 predictions of one scheduler step of one denoising run (one pipeline call, one batch)."""

    run: int  # pipeline calls during the capture, from 0
    step: int  # position in the run's loop, from 0: len(scheduler.timesteps) of them (Heun: 2 a step, PNDM: more)
    timestep: float
    x0: object  # torch.Tensor (rows, C, H, W), float32 on the CPU: rows are the batch's candidates
    first: int  # the capture's candidate number of row 0: rows of the runs before, counted in order


class Previews:
    """What `capture_previews` recorded. Candidates are numbered in the order their rows were denoised; for a
    fresh `generate(...)` (no resume, no out-of-memory retry) that is `Candidate.index`."""

    def __init__(self):
        self.steps: list[PreviewStep] = []
        self.rows: list[int] = []  # rows of each run

    def __len__(self) -> int:
        return sum(self.rows)

    def of(self, candidate: int) -> list[tuple[int, float, object]]:
        """(step, timestep, x0 of shape (C, H, W)) for every recorded step of one candidate."""
        return [(s.step, s.timestep, s.x0[candidate - s.first]) for s in self.steps
                if s.first <= candidate < s.first + len(s.x0)]

    def at(self, step: int):
        """Every candidate's x0 at loop position `step` of its run (-1: the last recorded), stacked in order."""
        import torch

        if not self.rows:
            raise KeyError("no previews were recorded")
        out = []
        for run in range(len(self.rows)):
            steps = [s for s in self.steps if s.run == run]
            try:
                out.append(steps[step].x0 if step < 0 else next(s.x0 for s in steps if s.step == step))
            except (IndexError, StopIteration):
                raise KeyError(f"step {step} was not recorded for run {run} (steps {[s.step for s in steps]})") from None
        return torch.cat(out)


@contextlib.contextmanager
def capture_previews(pipe, steps: Collection[int] | None = None, on_step: Callable[[PreviewStep], None] | None = None):
    """Record the x0 prediction of every candidate row at each step of `pipe`'s denoising loops.

    Wraps `pipe.scheduler.step` (and `set_timesteps`, which marks a new run) for the duration; the wrapped step
    returns exactly what the original does, so images are unchanged. The scheduler sees the noise prediction after
    classifier-free guidance, and so do the previews. `steps`: loop positions to keep (negative ones count from
    the run's end); None keeps all. `on_step` is called with each `PreviewStep` as it is recorded, before the
    scheduler steps (a search strategy's hook).
    """
    scheduler = pipe.scheduler
    previews = Previews()
    state = {"step": 0}
    original_step, original_set_timesteps = scheduler.step, scheduler.set_timesteps

    @functools.wraps(original_set_timesteps)
    def set_timesteps(*args, **kwargs):
        state["step"] = 0
        state["new_run"] = True
        return original_set_timesteps(*args, **kwargs)

    @functools.wraps(original_step)
    def step(model_output, timestep, sample, *args, **kwargs):
        import torch

        if state.pop("new_run", False) or not previews.rows:
            previews.rows.append(len(sample))
        i, n = state["step"], getattr(pipe, "_num_timesteps", None)
        state["step"] += 1
        if steps is None or i in steps or (n is not None and i - n in steps):
            with torch.no_grad():
                # On the CPU, so that a long capture does not hold accelerator memory.
                x0 = x0_prediction(scheduler, model_output, timestep, sample).cpu()
            t = float(timestep.item() if hasattr(timestep, "item") else timestep)
            record = PreviewStep(len(previews.rows) - 1, i, t, x0, sum(previews.rows[:-1]))
            previews.steps.append(record)
            if on_step is not None:
                on_step(record)
        return original_step(model_output, timestep, sample, *args, **kwargs)

    with replacing_steps(scheduler, step, set_timesteps):
        yield previews


@contextlib.contextmanager
def replacing_steps(scheduler, step, set_timesteps):
    """`scheduler.step` and `.set_timesteps` replaced by wrappers inside the block; what was there is put back
    (an instance's own wrapper, e.g. an enclosing capture's, or the class's method)."""
    own = {name: scheduler.__dict__[name] for name in ("step", "set_timesteps") if name in scheduler.__dict__}
    scheduler.step, scheduler.set_timesteps = step, set_timesteps
    try:
        yield
    finally:
        for name in ("step", "set_timesteps"):
            if name in own:
                setattr(scheduler, name, own[name])
            else:
                delattr(scheduler, name)


@contextlib.contextmanager
def after_steps(pipe, hook: Callable):
    """Inside the block, `hook(i, latents) -> latents` replaces what loop position i of each denoising run of `pipe`
    hands on (the scheduler's prev_sample), so rows can be copied between steps (particles, their replay)."""
    scheduler = pipe.scheduler
    inner_step, inner_set = scheduler.step, scheduler.set_timesteps
    state = {"i": 0}

    @functools.wraps(inner_set)
    def set_timesteps(*args, **kwargs):
        state["i"] = 0
        return inner_set(*args, **kwargs)

    @functools.wraps(inner_step)
    def step(*args, **kwargs):
        out, i = inner_step(*args, **kwargs), state["i"]
        state["i"] += 1
        if isinstance(out, tuple):
            return (hook(i, out[0]), *out[1:])
        out.prev_sample = hook(i, out.prev_sample)
        return out

    with replacing_steps(scheduler, step, set_timesteps):
        yield


def decode_previews(latents, vae, batch_size: int = 8, output_type: str = "pil"):
    """PIL images of `latents` (the pipeline's latents, (N, C, H, W) or (C, H, W)) decoded by `vae`; with
    output_type="pt", the (N, 3, H, W) tensor in [0, 1] on the VAE's device they are made from.

    `vae` is the pipeline's `AutoencoderKL` or an `AutoencoderTiny` (TAESD: its scaling_factor is 1.0 because it
    decodes the diffusion model's latents as they are), as the pipeline decodes and post-processes its own.
    """
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from sdkit.load.state import module_state

    latents = latents if latents.dim() == 4 else latents[None]
    processor = VaeImageProcessor()
    # Not the pipeline's output: around sdkit's row wrapper (sdkit.load.rows), so no rows are recorded or skipped.
    decode = vae.decode.__wrapped__ if module_state(vae).installed else vae.decode
    shift = vae.config.get("shift_factor") or 0.0
    images = []
    with torch.no_grad():
        for chunk in latents.split(batch_size):
            z = chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor + shift
            images.append(processor.postprocess(decode(z, return_dict=False)[0].float(), output_type="pt"))
    pixels = torch.cat(images)
    return pixels if output_type == "pt" else processor.numpy_to_pil(processor.pt_to_numpy(pixels))

