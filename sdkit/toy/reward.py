"""The toy world's reward model: its CLIP fine-tuned on the pixel checker's judgements of generated candidates.

Real preference models (PickScore, ImageReward) are CLIPs fine-tuned on human judgements of generated images;
here the judge is `sdkit.toy.shapes.check`. The toy pipeline draws candidates for the 12 prompts from seeds
`RewardSettings.seed + k` (a seed range no benchmark uses), the checker reads each one's shape and colour, and
every candidate becomes 12 labels: whether it matches each prompt (its own and the 11 others); shifted and flipped
copies of each, checked again, add more (`variants`). The toy CLIP is then fine-tuned, both towers, with a binary
cross-entropy on `exp(logit_scale) * cosine + bias` for every (image, prompt) pair (a pairwise ranking loss within each
prompt's own candidates can be added, `rank_weight`; it did not help in validation). The result is a plain CLIPModel
folder scored as PickScore is (`sdkit.scoring.verifiers.toy_reward`); the bias moves every score of a prompt alike,
so it ranks nothing and is not saved. Figures: bench/reward.py.

    python -m sdkit.toy reward --out /tmp/reward --candidates /tmp/c.npz  # ~30 min on one core: ~24 generating
                                                          # (kept in c.npz for a rebuild), ~1 checking copies, ~5 training
    python -m sdkit.toy reward --ship                     # maintainers: replace sdkit/toy/fixture/reward
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from sdkit.toy import shapes



# Here, not in sdkit/toy/settings.py: the world's cache key hashes that file, and a reward setting must not retrain
# the world.
@dataclasses.dataclass(frozen=True)
class RewardSettings:
    """How the toy reward model (`sdkit.toy.reward`) is built from a world's pipeline and CLIP."""

    # Candidate k of every prompt has seed `seed + k`: far from the seeds bench/search.py (0-511), `python -m
    # sdkit.toy` (0-63) and bench/reward.py (its report bases, 2_000_000 and up) use.
    seed: int = 1_000_000
    seeds_per_prompt: int = 768  # 12 x 768 = 9216 candidates, ~25 min to generate on one core (--candidates keeps them)
    val_seeds: int = 192  # the last 192 seeds of each prompt (24 sets of 8, 288 in all): validation, never trained on
    num_inference_steps: int = 20  # bench/search.py's settings: the candidates the reward will rank
    guidance_scale: float = 2.0
    steps: int = 3000  # chosen on validation (192 seeds): 3000 steps x 12 variants beat 1500 x 4 (AUC 0.962 vs 0.954)
    batch_size: int = 64
    lr: float = 5e-4  # a fine-tune: a quarter of the toy CLIP's own rate
    weight_decay: float = 0.05
    own_weight: float = 4.0  # the loss weight of the pair (image, the prompt it was made for) vs the other 11
    variants: int = 12  # re-checked shifted/flipped copies of each candidate (validation AUC 0.935 without, 0.962)
    max_shift: int = 3  # pixels, for those copies
    # Weight of a pairwise ranking loss within each prompt's own candidates (0: BCE only). Validation (288 sets): 1.0
    # gave top-1 0.684, AUC 0.959 vs BCE alone 0.688, 0.965; off.
    rank_weight: float = 0.0
    group_size: int = 16  # with it: candidates of one prompt per batch group (batch_size // group_size groups)
    flip: bool = True  # horizontal flips keep every shape (the triangle is upright and symmetric)
    threads: int = 1
    train_seed: int = 0  # batches and flips


def wanted() -> np.ndarray:
    """(12, 2): each prompt's (shape, colour) as indices into SHAPES / COLORS, as `Labelled` records a check."""
    return np.array([[shapes.SHAPES.index(s), list(shapes.COLORS).index(c)]
                     for s, c in map(shapes.parse_prompt, shapes.PROMPTS)])


@dataclasses.dataclass
class Labelled:
    """Generated candidates and what the checker read: images uint8 (N, 32, 32, 3), the index of the prompt each
    was made for, its seed, and the checked (shape, colour) as indices into SHAPES / COLORS (-1: none)."""

    images: np.ndarray
    prompt: np.ndarray
    seed: np.ndarray
    shape: np.ndarray
    color: np.ndarray

    def matches(self) -> np.ndarray:
        """(N, 12) bool: candidate i matches prompt j, by the checker."""
        want = wanted()
        return (self.shape[:, None] == want[None, :, 0]) & (self.color[:, None] == want[None, :, 1])

    def ok(self) -> np.ndarray:
        """(N,) bool: candidate i matches the prompt it was made for."""
        return self.matches()[np.arange(len(self.prompt)), self.prompt]

    def save(self, path) -> None:
        np.savez_compressed(path, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path) -> "Labelled":
        with np.load(path) as f:
            return cls(**{k.name: f[k.name] for k in dataclasses.fields(cls)})


def load_toy_pipeline(world, batch_invariant: bool = False):
    """The world's pipeline on the CPU in fp32. Not batch-invariant by default: one UNet call for a whole batch is
    ~4x faster for this tiny UNet than one per candidate (measured), and moves pixels by at most one level."""
    from sdkit.load.pipeline import load_pipeline

    return load_pipeline(str(Path(world) / "pipeline"), device="cpu", dtype="fp32", safety_checker=False,
                         batch_invariant=batch_invariant)


def generate_labelled(pipe, seeds, *, num_inference_steps: int = 20, guidance_scale: float = 2.0,
                      batch_size: int = 64, prompts=None, log=None) -> Labelled:
    """Each of the 12 prompts (or those indexed by `prompts`) from each of `seeds`, made with sdkit's `generate`
    and checked."""
    from sdkit.generation import generate

    seeds = [int(s) for s in seeds]
    rows = {k: [] for k in ("images", "prompt", "seed", "shape", "color")}
    t0 = time.perf_counter()
    for p in range(len(shapes.PROMPTS)) if prompts is None else prompts:
        prompt = shapes.PROMPTS[p]
        run = generate(pipe, prompt, seeds=seeds, n=len(seeds), num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, batch_size=batch_size, progress=False)
        for c in run.candidates:
            image = np.asarray(c.image.convert("RGB"))
            check = shapes.check(image)
            rows["images"].append(image)
            rows["prompt"].append(p)
            rows["seed"].append(c.seed)
            rows["shape"].append(shapes.SHAPES.index(check.shape) if check.shape else -1)
            rows["color"].append(list(shapes.COLORS).index(check.color) if check.color else -1)
        if log:
            log(f"  generated {prompt!r} x {len(seeds)}: {time.perf_counter() - t0:.0f}s")
    return Labelled(**{k: np.stack(v) if k == "images" else np.array(v) for k, v in rows.items()})


def variants(data: Labelled, k: int, max_shift: int, seed: int) -> Labelled:
    """`k` copies of every candidate, each shifted by up to `max_shift` pixels (edges replicated: the generated
    background is not pure black) and flipped left-right at random, and checked again: more labelled images of
    the same candidates, and the label is the checker's on the very pixels trained on."""
    rng = np.random.default_rng(seed)
    n, h, w, _ = data.images.shape
    m = max_shift
    padded = np.pad(data.images, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
    rows = {f.name: [] for f in dataclasses.fields(Labelled)}
    for _ in range(k):
        dy, dx = rng.integers(0, 2 * m + 1, size=(2, n))
        flip = rng.random(n) < 0.5
        for i in range(n):
            im = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
            im = im[:, ::-1] if flip[i] else im
            check = shapes.check(im)
            rows["images"].append(np.ascontiguousarray(im))
            rows["shape"].append(shapes.SHAPES.index(check.shape) if check.shape else -1)
            rows["color"].append(list(shapes.COLORS).index(check.color) if check.color else -1)
        rows["prompt"].append(data.prompt)
        rows["seed"].append(data.seed)
    return Labelled(images=np.stack(rows["images"]), prompt=np.concatenate(rows["prompt"]),
                    seed=np.concatenate(rows["seed"]), shape=np.array(rows["shape"]), color=np.array(rows["color"]))


def concat(*parts: Labelled) -> Labelled:
    return Labelled(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Labelled)})


# ---- training -------------------------------------------------------------------------------------


def load_clip(path):
    """A CLIPModel folder (the world's clip/, fp16 on disk) as an fp32 torch model, and its tokenizer."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from sdkit.quiet import quiet_hf

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no CLIP at {path}: expected a CLIPModel folder with config.json")
    with quiet_hf():
        model = CLIPModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
    return model, CLIPTokenizer.from_pretrained(path)


def pair_logits(model, pixels, ids):
    """exp(logit_scale) * cosine of every image with every prompt: (images, prompts)."""
    import torch.nn.functional as F

    img = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    txt = F.normalize(model.text_projection(model.text_model(input_ids=ids).pooler_output), dim=-1)
    return model.logit_scale.exp() * img @ txt.T


def own_logits(model, tokenizer, images: np.ndarray, prompt: np.ndarray, batch: int = 256) -> np.ndarray:
    """Each image's logit against the prompt it was made for (what a reranker sorts by)."""
    import torch

    from sdkit.toy import train

    ids = train.prompt_ids(tokenizer, shapes.PROMPTS)
    out = []
    with torch.no_grad():
        for a in range(0, len(images), batch):
            x = train.clip_pixels(train.to_tensor(images[a:a + batch]))
            out.append(pair_logits(model, x, ids)[torch.arange(len(x)), torch.from_numpy(prompt[a:a + batch])])
    return torch.cat(out).numpy().astype(np.float64)


def train_reward(model, tokenizer, data: Labelled, s: RewardSettings, log=print):
    """Fine-tune `model` (in place) on the checker's labels of `data`: BCE on every (image, prompt) pair, plus (with
    `s.rank_weight`) a pairwise ranking loss within each prompt's own candidates, the order best-of-n sorts by."""
    import torch
    import torch.nn.functional as F

    from sdkit.toy import train

    torch.manual_seed(s.train_seed)
    gen = torch.Generator().manual_seed(s.train_seed)
    x = train.to_tensor(data.images)
    y = torch.from_numpy(data.matches()).float()
    own = torch.from_numpy(data.prompt).long()
    weight = torch.ones_like(y)
    weight[torch.arange(len(y)), own] = s.own_weight
    ids = train.prompt_ids(tokenizer, shapes.PROMPTS)
    # Scores of one prompt need only be ordered; the bias lets the BCE place its threshold without moving them.
    bias = torch.nn.Parameter(torch.tensor(-0.5 * float(model.logit_scale.exp().detach())))
    # With the ranking loss a batch is batch_size // group_size prompts x group_size of each one's own candidates.
    by_prompt = [torch.nonzero(own == p).flatten() for p in range(len(shapes.PROMPTS))]
    groups = max(1, s.batch_size // s.group_size)
    model.train()

    def draw():
        if not s.rank_weight:
            return torch.randint(len(x), (s.batch_size,), generator=gen)
        ps = torch.randint(len(by_prompt), (groups,), generator=gen)
        return torch.cat([by_prompt[p][torch.randint(len(by_prompt[p]), (s.group_size,), generator=gen)]
                          for p in ps.tolist()])

    def batch_loss():
        i = draw()
        xb = x[i]
        if s.flip:
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        logits = pair_logits(model, train.clip_pixels(xb), ids)
        loss = F.binary_cross_entropy_with_logits(logits + bias, y[i], weight=weight[i])
        if s.rank_weight:
            # Each group: its candidates' logits for their own prompt; every (matching, not matching) pair.
            g = logits[torch.arange(len(i)), own[i]].view(groups, s.group_size)
            lab = y[i, own[i]].view(groups, s.group_size)
            pairs = lab[:, :, None] * (1 - lab[:, None, :])  # [g, a, b]: a matches, b does not
            if pairs.sum() > 0:
                margin = g[:, :, None] - g[:, None, :]
                loss = loss + s.rank_weight * (F.softplus(-margin) * pairs).sum() / pairs.sum()
        return loss

    train._fit("reward", list(model.parameters()) + [bias], s, s.weight_decay, batch_loss, log)
    return model.eval()


# ---- evaluation on validation sets ----------------------------------------------------------------


def set_figures(logits: np.ndarray, ok: np.ndarray, n: int = 8) -> dict:
    """Best-of-`n` top-1 and within-set Spearman of `logits` with `ok`, over consecutive sets of `n` (one prompt's
    seeds in order; the first candidate wins ties, as `sdkit.ranking.rank` picks the lowest seed)."""
    from scipy.stats import spearmanr

    logits, ok = logits.reshape(-1, n), ok.reshape(-1, n)
    picks = np.argmax(logits, axis=1)  # argmax returns the first of equal maxima
    mixed = [i for i in range(len(ok)) if 0 < ok[i].sum() < n]  # sets with an adherence ranking at all
    return {"top1": float(ok[np.arange(len(ok)), picks].mean()), "oracle": float(ok.any(axis=1).mean()),
            "spearman": float(np.mean([spearmanr(logits[i], ok[i]).statistic for i in mixed])) if mixed else None,
            "sets": len(ok)}


def split(data: Labelled, val_seeds: int) -> tuple[Labelled, Labelled]:
    """Training and validation candidates: the last `val_seeds` seeds of every prompt are validation."""
    seeds = np.unique(data.seed)
    if not 0 <= val_seeds < len(seeds):
        raise ValueError(f"val_seeds={val_seeds}: must be from 0 to {len(seeds) - 1} (there are {len(seeds)} seeds)")
    val = np.isin(data.seed, seeds[len(seeds) - val_seeds:])
    pick = lambda m: Labelled(**{k: v[m] for k, v in dataclasses.asdict(data).items()})  # noqa: E731
    return pick(~val), pick(val)


# ---- build and ship -------------------------------------------------------------------------------


def build_reward(out, world=None, settings: RewardSettings = RewardSettings(), *, data: Labelled | None = None,
                 candidates=None, log=print) -> dict:
    """Generate and check the training candidates, fine-tune the world's CLIP, and write a CLIPModel folder to
    `out` (fp16 safetensors, tokenizer, preprocessor) with reward.json: settings, seeds, times, validation figures
    and the content sha256 of its tensors.

    Args:
        out: the folder to write (replaced).
        world: a toy world folder (default: the shipped CI world).
        settings: what to generate and how to train (`RewardSettings`).
        data: candidates already generated with `settings` (skips generation; must hold its seeds).
        candidates: an .npz of them (`Labelled.save`): read if it exists, else written once generated.
    """
    import shutil

    import torch

    from sdkit.toy.world import _cpu_name, content_hash, toy_world_path

    world = Path(world) if world is not None else toy_world_path("ci", log=None)
    if not (world / "pipeline").is_dir() or not (world / "clip").is_dir():
        raise FileNotFoundError(f"{world} is not a toy world: expected pipeline/ and clip/ in it")
    if settings.seeds_per_prompt < 2 or not 1 <= settings.val_seeds < settings.seeds_per_prompt:
        raise ValueError(f"seeds_per_prompt={settings.seeds_per_prompt}, val_seeds={settings.val_seeds}: need "
                         "1 <= val_seeds < seeds_per_prompt")
    seeds = list(range(settings.seed, settings.seed + settings.seeds_per_prompt))
    world_sha256 = content_hash(world)  # now: `out` may be inside the world (fixture/reward) and its .tmp too
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    times = {}
    try:
        t = time.perf_counter()
        given = data is not None
        if data is None and candidates is not None and Path(candidates).is_file():
            data, given = Labelled.load(candidates), True
        if data is None:
            data = generate_labelled(load_toy_pipeline(world), seeds, num_inference_steps=settings.num_inference_steps,
                                     guidance_scale=settings.guidance_scale, log=log)
            if candidates is not None:
                Path(candidates).parent.mkdir(parents=True, exist_ok=True)
                data.save(candidates)
        elif sorted(set(data.seed.tolist())) != seeds:
            raise ValueError(f"data holds seeds {int(data.seed.min())}..{int(data.seed.max())}, settings say "
                             f"{seeds[0]}..{seeds[-1]}")
        times["read_candidates_s" if given else "generate_s"] = time.perf_counter() - t
        fit, val = split(data, settings.val_seeds)
        n = 8 if settings.val_seeds % 8 == 0 else settings.val_seeds  # sets never straddle two prompts
        model, tokenizer = load_clip(world / "clip")
        before = set_figures(own_logits(model, tokenizer, val.images, val.prompt), val.ok(), n)
        t = time.perf_counter()
        if settings.variants:
            fit = concat(fit, variants(fit, settings.variants, settings.max_shift, settings.train_seed))
        times["variants_s"] = time.perf_counter() - t
        t = time.perf_counter()
        train_reward(model, tokenizer, fit, settings, log=log)
        times["train_s"] = time.perf_counter() - t
        after = set_figures(own_logits(model, tokenizer, val.images, val.prompt), val.ok(), n)
    finally:
        torch.set_num_threads(threads)
    if log:
        rho = lambda f: "-" if f["spearman"] is None else f"{f['spearman']:.3f}"  # noqa: E731 (no mixed set: none)
        log(f"  validation ({after['sets']} sets of {n}), CLIP -> reward: top-1 {before['top1']:.3f} -> "
            f"{after['top1']:.3f}, Spearman {rho(before)} -> {rho(after)}, oracle {after['oracle']:.3f}")

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(world / "clip", tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.lock"))
    # fp16 as the world's CLIP ships (a few hundred kB); logit_scale stays fp32 like there.
    state = {k: (v.half() if v.is_floating_point() and k != "logit_scale" else v).contiguous()
             for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    info = {
        "what": "the toy world's reward model: its CLIP fine-tuned on the pixel checker's labels of generated "
                "candidates (sdkit.toy.reward)",
        "content_sha256": content_hash(tmp),
        "world_sha256": world_sha256,
        "settings": dataclasses.asdict(settings),
        "training_seeds": {"first": seeds[0], "last": seeds[-1], "per_prompt": len(seeds),
                           "validation": seeds[len(seeds) - settings.val_seeds:][:1] + seeds[-1:]},
        "candidates": {"train": len(fit.prompt) // (1 + settings.variants), "validation": len(val.prompt),
                       "train_images": len(fit.prompt), "train_matching": float(fit.ok().mean())},
        "validation": {"clip": before, "reward": after},
        "trained_on": {"cpu": _cpu_name(), "threads": settings.threads, "torch": torch.__version__},
        "times": {k: round(v, 1) for k, v in times.items()},
    }
    (tmp / "reward.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return info
