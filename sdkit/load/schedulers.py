"""Schedulers by the names people use (AUTOMATIC1111's sampler names)."""

from __future__ import annotations

# name -> (diffusers class name, config overrides)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "DDIM": ("DDIMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}


def check_scheduler(name: str | None) -> None:
    if name is not None and name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not known; choose one of {list(SCHEDULERS)}")


def make_scheduler(name: str, base_config):
    """A scheduler `name` configured from a pipeline's own scheduler config."""
    import diffusers

    check_scheduler(name)
    cls_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


def scheduler_name(scheduler) -> str:
    """The sdkit name of a scheduler instance, or its class name if it has none."""
    cls_name = type(scheduler).__name__
    for name, (cls, overrides) in SCHEDULERS.items():
        if cls == cls_name and all(scheduler.config.get(k) == v for k, v in overrides.items()):
            if name == "DPM++ 2M" and scheduler.config.get("use_karras_sigmas"):
                continue
            return name
    return cls_name
