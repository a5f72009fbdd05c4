"""The `img2img`, `inpaint` and `outpaint` subcommands: N seeded candidates from an image, saved like `generate`'s.

    sdkit img2img --image photo.png "a watercolour" --strength 0.6 -n 8 --seed 0
    sdkit inpaint --image cat.png --mask cat_mask.png "cat with a hat" --model runwayml/stable-diffusion-inpainting
    sdkit inpaint --image cat.png --box 40,10,120,60 "cat with a hat"
    sdkit outpaint --image cat.png --right 128 --bottom 64 "a garden"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdkit.cli.generate import add_common_args, finish, generate_kwargs, pipeline_from_args, read_prompts
from sdkit.cli.search import add_search_args, checked_search, run_search

NAMES = ("img2img", "inpaint", "outpaint")


def _box(s: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: give LEFT,TOP,RIGHT,BOTTOM as integers") from None
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"{s!r}: give exactly four numbers, LEFT,TOP,RIGHT,BOTTOM")
    return box


def _no_resume(_value: str):
    raise argparse.ArgumentTypeError(
        "not supported for edits: the init image and mask are recorded only as hashes. Resume from Python with "
        "sdkit.img2img/inpaint/outpaint(pipe, prompt, image, ..., output_dir=FOLDER, run_id=RUN_ID) and the "
        "same image and settings, or start a new run")


def _common(p: argparse.ArgumentParser, strength: float) -> None:
    p.add_argument("prompt", nargs="*", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, default=None, help="a file with one prompt per line")
    p.add_argument("--image", required=True, help="the init image (PNG, JPEG, ...)")
    p.add_argument("--resume", metavar="FOLDER", type=_no_resume, default=None,
                   help="not for edits (generate --resume is); resume an edit from Python, see sdkit.img2img")
    p.add_argument("--strength", type=float, default=strength, help=f"in (0, 1]: how much to change (default {strength})")
    p.add_argument("--resize-mode", choices=("pad", "resize"), default="pad",
                   help="sizes not a multiple of 8: pad edge pixels (default) or resize; results keep the original size")
    add_common_args(p)
    add_search_args(p)
    for action in p._actions:  # the working size defaults to the image's, not the model's
        if action.dest == "height":
            action.help = "work at this height (multiple of 8; with --width); default: the image's size"


def _mask_args(p: argparse.ArgumentParser, blur: int, grow: int) -> None:
    p.add_argument("--mask-blur", type=int, default=blur, help=f"feather width in pixels, inwards (default {blur})")
    p.add_argument("--mask-grow", type=int, default=grow, help=f"grow the mask by N pixels, negative shrinks (default {grow})")
    p.set_defaults(model="sdkit:tiny-inpainting")


def add_parser(sub) -> None:
    if "img2img" in sub.choices:  # cli.COMMANDS lists this module once per subcommand
        return
    p = sub.add_parser("img2img", help="image-to-image: N seeded candidates starting from an image")
    _common(p, 0.75)
    p.set_defaults(func=run, task="img2img")

    p = sub.add_parser("inpaint", help="repaint the white part of a mask, keep the rest exactly")
    _common(p, 1.0)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--mask", help="mask image: white = repaint, black = keep")
    which.add_argument("--box", type=_box, help="repaint this rectangle: LEFT,TOP,RIGHT,BOTTOM (pixels)")
    p.add_argument("--resize-mask", action="store_true", help="stretch a mask of another size to the image's")
    _mask_args(p, 4, 0)
    p.set_defaults(func=run, task="inpaint")

    p = sub.add_parser("outpaint", help="extend the canvas and paint the new area")
    _common(p, 1.0)
    for side in ("left", "right", "top", "bottom"):
        p.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side} (default 0)")
    _mask_args(p, 8, 8)
    p.set_defaults(func=run, task="outpaint")


def prepare(args):
    """Load and check the image (and mask) before any model is loaded."""
    from sdkit.edit.tasks import prepare_img2img, prepare_inpaint, prepare_outpaint

    size = dict(num_inference_steps=args.num_inference_steps, height=args.height, width=args.width,
                resize_mode=args.resize_mode, strength=args.strength)
    if args.task == "img2img":
        return prepare_img2img(args.image, **size)
    masks = dict(mask_blur=args.mask_blur, mask_grow=args.mask_grow)
    if args.task == "inpaint":
        mask = args.box if args.box is not None else args.mask
        return prepare_inpaint(args.image, mask, resize_mask=args.resize_mask, **masks, **size)
    return prepare_outpaint(args.image, left=args.left, right=args.right, top=args.top, bottom=args.bottom,
                            **masks, **size)


def run(args) -> int:
    from sdkit.checks import as_prompt_list, check_generate_args, check_output_dir
    from sdkit.edit.tasks import run_edit
    from sdkit.save import new_run_id
    from sdkit.load.schedulers import check_scheduler

    prompts = as_prompt_list(read_prompts(args))
    # Everything is checked before a model loads: loading a real one takes minutes.
    check_generate_args(n=args.n, seeds=args.seeds, num_inference_steps=args.num_inference_steps,
                        guidance_scale=args.guidance_scale, height=None, width=None, batch_size=args.batch_size)
    check_scheduler(args.scheduler)
    inputs = prepare(args)
    settings = checked_search(args, strength=inputs.strength)
    run_id = new_run_id()
    out = check_output_dir(Path(args.out) / run_id)
    pipe = pipeline_from_args(args, inputs.task)
    kwargs = dict(generate_kwargs(args), output_dir=out, run_id=run_id)
    del kwargs["height"], kwargs["width"]  # the working size comes from the image (see prepare)
    if settings is None:
        result = run_edit(pipe, prompts, inputs, **kwargs)
    else:  # a search over the edit: the strategy makes its candidates with run_edit
        result = run_search(args, settings, pipe, prompts, edit=inputs, **kwargs)
    return finish(result, args)
