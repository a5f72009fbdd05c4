"""A GPU cost model: the modelled wall time of every search strategy, from the per-call table measured on one
H200 (bench/results/gpu/search_gpu.json: SD 1.5 shapes, fp16, 512², one UNet call with guidance per candidate
count, VAE and TAESD-shaped decodes and CLIP scores by batch).

    from bench.gpu_model import Costs, seconds
    seconds({"strategy": "successive_halving", "n": 32, "prune_at": [2, 10], "keep": [8, 2]}, steps=20, prompts=12)

A strategy's run is modelled call by call as sdkit runs it on a GPU: live candidates of all prompts share UNet
calls of at most `width` candidates (pruned ones leave the batch), previews are decoded and scored in batches of
at most 32, finished images decoded and scored once. A call of a size between two measured ones costs the linear
interpolation; sizes above the largest measured one are split into calls of that size. Text encoding and
the scheduler's own arithmetic are left out (under 1% of a step at these sizes).

Scores are charged as sdkit takes them on a GPU: the decoded tensor handed to the scorer on the device
(`sdkit.generation.tensor_pixels`). The H200 measured that at 64 images a call only (bench/results/gpu/
gpu_check.json: 5,496 images/s for the Flax scorer), so a smaller call is charged a whole one, an upper bound;
a check that also timed smaller calls (gpu_check.py's `tensor_s_per_call`) gives the curve. `Costs(scoring="pil")`
charges the table's PIL curve instead (4.5 ms an image at 32): what a scorer of one's own, handed PIL images, costs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TABLE = Path(__file__).resolve().parent / "results" / "gpu" / "search_gpu.json"
CHECK = TABLE.with_name("gpu_check.json")  # its scorer section: images/s through the tensor path
WIDTH = 16  # candidates per UNet call: sdkit's CUDA default batch size where memory allows (generation.py)


class Costs:
    """Seconds per call, by batch size, from the measured table."""

    def __init__(self, path: Path = TABLE, scoring: str = "tensor", check: Path = CHECK):
        if scoring not in ("tensor", "pil"):
            raise ValueError(f"scoring={scoring!r}: must be 'tensor' (sdkit's path on a GPU) or 'pil'")
        d = json.loads(Path(path).read_text())["sections"]
        self.unet_curve = {int(k): v["s_per_call"]["median"] for k, v in d["unet_batch_curve"].items()
                           if k.isdigit()}
        p = d["preview_costs"]
        self.curves = {kind: {int(k.rsplit("_b", 1)[1]): v["median"] for k, v in p.items() if k.startswith(kind + "_b")}
                       for kind in ("vae_decode", "tiny_decode", "flax_score", "torch_score")}
        if scoring == "tensor":
            scorer = json.loads(Path(check).read_text())["sections"]["scorer"]["data"]
            by_size = scorer.get("tensor_s_per_call", {})  # "flax b8": seconds, where a GPU check measured sizes
            for name in ("flax", "torch"):  # below the smallest measured size a call costs what that size did
                curve = {int(scorer["images"]): scorer["images"] / scorer["images_per_s"][f"{name}, tensor"]["median"]}
                curve.update({int(k.rsplit(" b", 1)[1]): v["median"] for k, v in by_size.items()
                              if k.startswith(name + " ")})
                self.curves[f"{name}_score"] = curve

    @staticmethod
    def _call(curve: dict[int, float], size: int) -> float:
        if size <= 0:
            return 0.0
        sizes = sorted(curve)
        if size >= sizes[-1]:
            whole, rest = divmod(size, sizes[-1])
            return whole * curve[sizes[-1]] + Costs._call(curve, rest)
        lo = max(s for s in sizes if s <= size) if size >= sizes[0] else sizes[0]
        hi = min(s for s in sizes if s >= size)
        if lo == hi:
            return curve[lo]
        return curve[lo] + (curve[hi] - curve[lo]) * (size - lo) / (hi - lo)

    def unet(self, candidates: int, width: int = WIDTH) -> float:
        """One denoising step of `candidates` candidates (a guidance pair each), in calls of at most `width`."""
        calls = math.ceil(candidates / width) if candidates else 0
        if not calls:
            return 0.0
        base, extra = divmod(candidates, calls)  # as even as the rows wrapper splits them
        return sum(self._call(self.unet_curve, base + (k < extra)) for k in range(calls))

    def decode(self, n: int, previewer: str = "vae") -> float:
        return self._call(self.curves["tiny_decode" if previewer == "tiny" else "vae_decode"], n)

    def score(self, n: int, scorer: str = "flax") -> float:
        return self._call(self.curves[f"{scorer}_score"], n)


def lane_blocks(n: int, live: int, lanes: int) -> float:
    """Expected lane blocks (UNet calls) that one prompt's `live` of `n` candidates occupy when candidate k always
    runs in row k % `lanes` of block k // `lanes` (survivors of a pruning taken as uniformly random)."""
    if live >= n:
        return float(math.ceil(n / lanes))
    sizes = [min(lanes, n - a) for a in range(0, n, lanes)]
    return sum(1 - math.comb(n - size, live) / math.comb(n, live) for size in sizes)


def seconds(cfg: dict, *, steps: int, prompts: int = 1, costs: Costs | None = None, width: int = WIDTH,
            lanes: int | None = None) -> float:
    """Modelled GPU seconds for one run of the strategy `cfg` (as in bench/results/search.json's entries) over
    `prompts` prompts sharing calls; divide by `prompts` for seconds per prompt.

    `lanes`: the alternative to recorded shapes that sdkit did not build, modelled to say why. Every UNet call and
    decode is `lanes` rows wide and candidate k always runs in row k % lanes, so seed s is the same image in any n
    and any batch; a call runs whenever one of its rows is live (the rest is padding), and prompts cannot share
    calls (every prompt has the same seeds, hence the same rows)."""
    c = costs or Costs()
    n, strategy = int(cfg["n"]), cfg["strategy"]
    previewer = "tiny" if cfg.get("previewer") == "tiny" else "vae"
    if lanes is not None:
        return _seconds_in_lanes(cfg, c, n, strategy, previewer, steps, prompts, int(lanes))
    if strategy == "best_of_n":
        total = n * prompts
        return steps * c.unet(total, width) + c.decode(total) + c.score(total)
    if strategy == "draft_then_finish":
        drafts, kept = n * prompts, int(cfg["keep"]) * prompts
        return (int(cfg["draft_steps"]) * c.unet(drafts, width) + c.decode(drafts) + c.score(drafts)
                + steps * c.unet(kept, width) + c.decode(kept) + c.score(kept))
    if strategy == "successive_halving":
        t, live, at = 0.0, n * prompts, dict(zip(cfg["prune_at"], cfg["keep"]))
        for step in range(1, steps + 1):
            t += c.unet(live, width)
            if step in at:
                t += c.decode(live, previewer) + c.score(live)
                live = int(at[step]) * prompts
        return t + c.decode(live) + c.score(live)
    if strategy == "particle_resampling":
        total = n * prompts
        looks = len(cfg["resample_at"])
        return steps * c.unet(total, width) + looks * (c.decode(total, previewer) + c.score(total)) \
            + c.decode(total) + c.score(total)
    raise ValueError(f"strategy={strategy!r}: no cost model")


def _seconds_in_lanes(cfg: dict, c: Costs, n: int, strategy: str, previewer: str, steps: int, prompts: int,
                      lanes: int) -> float:
    unet = c._call(c.unet_curve, lanes)

    def decode(blocks: float, kind: str = "vae") -> float:  # decodes are `lanes` wide too: they make the pixels
        return prompts * blocks * c.decode(lanes, kind)

    full = lane_blocks(n, n, lanes)
    if strategy == "best_of_n":
        return prompts * full * steps * unet + decode(full) + c.score(n * prompts)
    if strategy == "draft_then_finish":
        kept = int(cfg["keep"])
        finish = lane_blocks(n, kept, lanes)
        return (prompts * full * int(cfg["draft_steps"]) * unet + decode(full) + c.score(n * prompts)
                + prompts * finish * steps * unet + decode(finish) + c.score(kept * prompts))
    if strategy == "successive_halving":
        t, live, at = 0.0, n, dict(zip(cfg["prune_at"], cfg["keep"]))
        for step in range(1, steps + 1):
            t += prompts * lane_blocks(n, live, lanes) * unet
            if step in at:
                t += decode(lane_blocks(n, live, lanes), previewer) + c.score(live * prompts)
                live = int(at[step])
        return t + decode(lane_blocks(n, live, lanes)) + c.score(live * prompts)
    if strategy == "particle_resampling":
        looks = len(cfg["resample_at"])
        return (prompts * full * steps * unet + looks * (decode(full, previewer) + c.score(n * prompts))
                + decode(full) + c.score(n * prompts))
    raise ValueError(f"strategy={strategy!r}: no cost model")
