"""The search options every generating subcommand shares (`--search` and its strategy's settings), checked before
any model is loaded, and running the strategy they name (`sdkit.search`, called directly)."""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers, e.g. 2,6") from None


# Each search option, and the strategy it belongs to.
SEARCH_OPTIONS = {"--prune-at": ("prune_at", ("successive_halving",)),
                  "--keep": ("keep", ("draft_then_finish", "successive_halving")),
                  "--draft-steps": ("draft_steps", ("draft_then_finish",)),
                  "--resample-at": ("resample_at", ("particle_resampling",)),
                  "--lambda": ("lambda_", ("particle_resampling",)),
                  "--previewer": ("previewer", ("successive_halving", "particle_resampling"))}
ONE_BATCH = ("successive_halving", "particle_resampling")  # all candidates denoised together


def add_search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search: the best image per prompt, for less compute than best-of-N")
    g.add_argument("--search", default=None,
                   choices=["best_of_n", "draft_then_finish", "successive_halving", "particle_resampling"],
                   help="best_of_n: n full candidates, ranked; draft_then_finish: n drafts at --draft-steps, the best "
                        "--keep finished; successive_halving: n together, pruned on x0 previews at --prune-at steps; "
                        "particle_resampling: n particles of --scheduler 'Euler a', resampled by their previews' "
                        "scores at --resample-at steps (FK steering)")
    g.add_argument("--prune-at", type=_ints, default=None, metavar="STEPS",
                   help="successive_halving: steps after which to prune, e.g. 2,6 (default: 10%% and 50%% of --steps)")
    g.add_argument("--keep", type=_ints, default=None, metavar="COUNTS",
                   help="successive_halving: candidates per prompt kept at each --prune-at step, e.g. 4,2 (default: "
                        "n/4 then n/16); draft_then_finish: drafts per prompt finished (default 2)")
    g.add_argument("--draft-steps", type=int, default=None, help="draft_then_finish: steps per draft (default 6)")
    g.add_argument("--resample-at", type=_ints, default=None, metavar="STEPS",
                   help="particle_resampling: steps after which to resample, e.g. 2,5,10 (default: every 10%% of --steps)"
                        "")
    g.add_argument("--lambda", type=float, default=None, dest="lambda_",
                   help="particle_resampling: how sharply scores pick particles (default 0.3; 0: uniformly)")
    g.add_argument("--previewer", default=None, metavar="PATH",
                   help="successive_halving, particle_resampling: an AutoencoderTiny (TAESD) folder or Hub id to decode previews "
                        "(default: the model's VAE)")


def search_settings(args) -> dict | None:
    """The strategy's settings from the search options, each checked against --search, before any model is loaded."""
    given = {flag: getattr(args, dest) for flag, (dest, _) in SEARCH_OPTIONS.items()
             if getattr(args, dest, None) is not None}
    if args.search is None:
        if given:
            flag = next(iter(given))
            raise ValueError(f"{flag} without --search: it is an option of --search "
                             f"{' / '.join(SEARCH_OPTIONS[flag][1])}")
        return None
    for flag in given:
        if args.search not in SEARCH_OPTIONS[flag][1]:
            own = [f for f, (_, users) in SEARCH_OPTIONS.items() if args.search in users]
            raise ValueError(f"{flag} does not apply to --search {args.search} (it is an option of --search "
                             f"{' / '.join(SEARCH_OPTIONS[flag][1])}); --search {args.search} takes "
                             f"{', '.join(own) or 'no options of its own'}")
    if args.scorer == "none":
        raise ValueError(f"--search {args.search} --scorer none: a search ranks by a scorer; use --scorer flax or torch")
    if args.seeds is not None:
        raise ValueError("--seeds with --search: a search numbers its candidates from --seed (candidate k gets seed+k)")
    if args.search in ONE_BATCH and args.batch_size is not None:
        raise ValueError(f"--batch-size {args.batch_size} with --search {args.search}: it denoises all candidates "
                         "in one batch; leave --batch-size out")
    if args.search == "particle_resampling" and args.scheduler != "Euler a":
        raise ValueError(f"--search particle_resampling with --scheduler {args.scheduler or 'the model default'}: "
                         "resampled particles part ways only with a stochastic sampler; add --scheduler 'Euler a'")
    kwargs = {dest: given[flag] for flag, (dest, _) in SEARCH_OPTIONS.items() if flag in given}
    if args.search == "draft_then_finish" and "keep" in kwargs:
        if len(kwargs["keep"]) != 1:
            raise ValueError(f"--keep {','.join(map(str, kwargs['keep']))}: draft_then_finish finishes one number "
                             "of drafts per prompt, e.g. --keep 2")
        kwargs["keep"] = kwargs["keep"][0]
    if args.clip_model is not None:
        kwargs["clip_model"] = args.clip_model
    return kwargs


def checked_search(args, strength: float | None = None) -> dict | None:
    """The search settings from the options, checked (with an edit's strength) before any model is loaded."""
    settings = search_settings(args)
    if settings is not None:
        from sdkit.search import check_search

        # The previewer is a path until loaded, and clip_model an argument every strategy takes: not settings.
        check_search(args.search, {k: v for k, v in settings.items() if k not in ("previewer", "clip_model")},
                     n=args.n, num_inference_steps=args.num_inference_steps, strength=strength)
    return settings


def run_search(args, settings: dict, pipe, prompts, **kwargs):
    """The strategy --search names, called directly (sdkit.search) with its settings, the previewer loaded next to
    the pipeline, and generate's arguments from the command line (those not given: the strategy's own defaults)."""
    from sdkit.search import strategy_named

    settings = dict(settings)
    if settings.get("previewer") is not None:
        from sdkit.load.previewer import load_previewer

        settings["previewer"] = load_previewer(settings["previewer"], device=pipe.device, dtype=pipe.vae.dtype)
    given = {k: v for k, v in kwargs.items() if v is not None}
    return strategy_named(args.search)(pipe, prompts, cli_scorer(args), **settings, **given)


def compute_line(run, n: int, num_inference_steps: int) -> str:
    """What a search cost, against best-of-N with the same n and steps (n * steps UNet evaluations per prompt;
    for an edit, the steps its strength runs)."""
    c, s = run.search.compute, run.search
    prompts = len({r.candidate.prompt for r in s.ranked}) or 1
    baseline = n * num_inference_steps * prompts
    return (f"search {s.strategy}: {c.describe(baseline)}; best-of-{n} at {num_inference_steps} steps: {baseline}"
            + (f"; {len(s.pruned)} pruned (listed in the manifest)" if s.pruned else ""))


def scorer_option(text: str) -> str:
    """--scorer's value, checked as it is parsed (before any model loads): a backend, none, or a verifier spec."""
    if text in ("flax", "torch", "auto", "none"):
        return text
    from sdkit.scoring.scorers import checked_spec

    try:
        checked_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; or flax, torch, none") from None
    return text


def add_scorer_args(p, *, default: str | None) -> None:
    """--scorer, --scorer-backend and --combine: the same for generate and sweep."""
    p.add_argument("--scorer", default=default, type=scorer_option,
                   help="rank with sdkit's Flax CLIP (flax), transformers' PyTorch CLIP (torch), not at all (none), or "
                        "by verifiers: clip, pickscore, hpsv2, aesthetic, toy-reward, several with weights as "
                        f"'clip:1,pickscore:1,aesthetic:0.5' (on --scorer-backend); default {default or 'none'}")
    p.add_argument("--scorer-backend", default="flax", choices=["flax", "torch", "auto"],
                   help="where verifiers named in --scorer run (default flax: all JAX devices)")
    p.add_argument("--combine", default=None, choices=["zscore", "rank"],
                   help="how several verifiers' scores are combined within a prompt's candidates (default zscore)")


def cli_scorer(args):
    """What --scorer asks for, as rerank and the searches take it: a backend name, or the verifiers loaded (once)."""
    if args.scorer in ("flax", "torch", "auto", "none"):
        return args.scorer
    from sdkit.scoring.scorers import scorer_for

    options = {"backend": args.scorer_backend} | ({"combine": args.combine} if args.combine else {})
    return scorer_for(args.scorer, args.model, args.clip_model, **options)
