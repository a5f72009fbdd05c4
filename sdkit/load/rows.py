"""Exact regeneration at batched speed: the rows each candidate's UNet and VAE calls ran in.

A GPU's kernels choose their algorithm by a call's batch size, and a row's result can depend on its position in
the batch, but not on the other rows' contents (measured on an H200: random or zero rows, bit-identical; here
tested on the CPU). So sdkit runs a GPU's candidates batched and records, for every UNet call, how many
candidates it held and which row each was in (an `Arithmetic`); to make one again it pads each call to the
recorded size with zero rows and puts the candidate in its recorded row (`replaying`). A candidate is then the
same image in a regenerate, a resume or a search's replay as in its batch, at batched speed.

On the CPU sdkit runs every candidate alone instead ("per-candidate", `sdkit.load.invariance`): one row in
every call, so candidate k is the same image in any batch, and its record says so (batch 1, row 0).

The text encoder always encodes one prompt at a time (cheap, and a prompt's embedding then never depends on its
batch-mates); the VAE decodes as the UNet runs (per candidate on the CPU; on a GPU, the live candidates in one
call, recorded and replayed the same way). A little over 300 lines: the record, the two wrappers and the replay
share one notion of a group of rows, and read best side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
from typing import Callable

import torch

from sdkit.load.state import ModuleState, module_state

# Groups of one module call: (candidates in the call, {row of the caller's batch: row in the call}).
Group = tuple[int, dict[int, int]]


@dataclasses.dataclass
class Arithmetic:
    """What one candidate's pixels depended on, beyond its seed and settings: every UNet call's size and its row
    (`unet`: runs of [first call, candidates in the call, row], in call order), the VAE decode's (`decode`:
    [candidates, row]), and the hardware and software that ran them."""

    unet: list[list[int]]
    decode: list[int]
    device: str = ""
    software: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"unet": self.unet, "decode": self.decode, "device": self.device, "software": self.software}

    @classmethod
    def from_json(cls, d: dict | None) -> "Arithmetic | None":
        if not d:
            return None
        return cls([list(map(int, r)) for r in d["unet"]], list(map(int, d["decode"])), d.get("device", ""),
                   dict(d.get("software") or {}))

    def at(self, call: int) -> tuple[int, int]:
        """(candidates, row) of UNet call `call` (the last run goes on for any later call)."""
        size, row = self.unet[0][1:]
        for first, s, r in self.unet:
            if first > call:
                break
            size, row = s, r
        return size, row

    @property
    def alone(self) -> bool:
        """Every call held this candidate alone: any pipeline makes it again with a batch of one."""
        return all(s == 1 for _, s, _ in self.unet) and self.decode[0] == 1


def runs(calls: list[tuple[int, int]]) -> list[list[int]]:
    """[(candidates, row) per call] -> runs of [first call, candidates, row]."""
    out: list[list[int]] = []
    for i, (size, row) in enumerate(calls):
        if not out or out[-1][1:] != [size, row]:
            out.append([i, size, row])
    return out


def where(device) -> tuple[str, dict[str, str]]:
    """The hardware and software a candidate's arithmetic ran on: what decides its last bits."""
    device = torch.device(device)
    software = {"torch": torch.__version__}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        software.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()))
    elif device.type == "cpu":
        name = _cpu_name()
    else:
        name = device.type
    return name, software


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def differences(recorded: Arithmetic, device) -> list[str]:
    """Why a regenerate on `device` may differ in the last bits from the recorded arithmetic (empty: it should not)."""
    name, software = where(device)
    out = [f"device {recorded.device!r} then, {name!r} now"] if recorded.device and recorded.device != name else []
    out += [f"{k} {v} then, {software.get(k)} now" for k, v in recorded.software.items() if software.get(k) != v]
    return out


# ------------------------------------------------------------------------------------------------ the wrappers


def cfg_pairs(sample: torch.Tensor) -> bool:
    """True when `sample` is diffusers' classifier-free-guidance batch: `cat([latents] * 2)`.

    Every diffusers SD pipeline builds it that way (the 9-channel inpainting input too), so
    the two halves are equal exactly; without guidance the rows are distinct latents. Read
    from the tensor, not from a pipeline, because pipelines made with `from_pipe` share one UNet.
    """
    b = sample.shape[0]
    return b % 2 == 0 and torch.equal(sample[: b // 2], sample[b // 2 :])



class Rows:
    """One pipeline call's record, and its plan when it replays: shared by the UNet's and the VAE's wrappers."""

    def __init__(self, targets: dict[int, Arithmetic] | None = None):
        self.targets = targets  # row of the caller's batch -> the arithmetic to replay; None: record only
        self.unet: list[list[Group]] = []
        self.decode: list[Group] = []

    def groups(self, state: ModuleState, live: list[int], call: int | None = None) -> list[Group]:
        """How the live rows of one call run: as recorded (a replay; `call` None for the decode), else alone
        (per-candidate) or all together (batched)."""
        if self.targets is not None:
            out: list[Group] = []
            for i in live:
                t = self.targets.get(i)
                size, row = (1, 0) if t is None else (t.decode if call is None else t.at(call))
                g = next((g for g in out if g[0] == size and row not in g[1].values()
                          and _length(state, i) == _length(state, next(iter(g[1])))), None)
                if g is None:
                    out.append((size, {i: row}))
                else:
                    g[1][i] = row
            return out
        return alone_or_together(state, live)

    def of_row(self, row: int, device) -> Arithmetic:
        """The arithmetic of row `row` of the call."""
        calls = [next(((size, rows[row]) for size, rows in groups if row in rows)) for groups in self.unet
                 if any(row in rows for _, rows in groups)]
        decode = next(([size, rows[row]] for size, rows in self.decode if row in rows), [1, 0])
        name, software = where(device)
        return Arithmetic(runs(calls) or [[0, 1, 0]], decode, name, software)


def alone_or_together(state: ModuleState, live: list[int]) -> list[Group]:
    """Each live row alone (batch invariance), or all together in calls of at most `state.max_rows`, as even as
    they can be (13 rows, at most 8 a call: 7 and 6)."""
    if state.batch_invariant:
        return [(1, {i: 0}) for i in live]
    if not live:
        return []
    lengths = sorted({_length(state, i) for i in live})
    if len(lengths) > 1:  # prompts of other lengths run in calls of their own (`text_lengths`)
        return [g for n in lengths for g in alone_or_together(state, [i for i in live if _length(state, i) == n])]
    calls = -(-len(live) // (state.max_rows or len(live)))
    base, extra = divmod(len(live), calls)
    out, at = [], 0
    for k in range(calls):
        size = base + (k < extra)
        out.append((size, {i: r for r, i in enumerate(live[at:at + size])}))
        at += size
    return out


def _length(state: ModuleState, row: int) -> int | None:
    return (state.text_lengths or {}).get(row)


@contextlib.contextmanager
def text_lengths(pipe, lengths: list[int] | None):
    """Inside the block, row i of each UNet call of `pipe` reads only the first `lengths[i]` tokens of its text
    embeddings: prompts of several lengths (a long prompt is 77 tokens a chunk) share a batch padded to the longest,
    and each candidate still sees its own prompt alone, as it would in a batch of one. Rows of different lengths
    never share a UNet call."""
    state = module_state(pipe.unet)
    before, state.text_lengths = state.text_lengths, (dict(enumerate(lengths)) if len(set(lengths or ())) > 1 else None)
    try:
        yield
    finally:
        state.text_lengths = before


def gather(x: torch.Tensor, rows: dict[int, int], size: int, copies: int, total: int) -> torch.Tensor:
    """`x`'s rows for one call of `size` candidates: row i of the caller's batch at row rows[i] (in each of the
    `copies` halves, for a classifier-free-guidance pair), zeros elsewhere (contents of other rows do not matter).
    By indexing, as the caller's own slices would be: the result keeps `x`'s memory format (an img2img latent is
    channels-last), and a convolution's last bits depend on it."""
    if size == total and all(i == r for i, r in rows.items()) and len(rows) == total:
        return x  # the caller's batch as it is
    source = [0] * (size * copies)
    pad = set(range(size * copies))
    for i, r in rows.items():
        for c in range(copies):
            source[c * size + r] = c * total + i
            pad.discard(c * size + r)
    out = x[torch.tensor(source, device=x.device)]
    if pad:
        out[sorted(pad)] = 0
    return out


def scatter(out: torch.Tensor, y: torch.Tensor, rows: dict[int, int], size: int, copies: int, total: int) -> None:
    for i, r in rows.items():
        for c in range(copies):
            out[c * total + i] = y[c * size + r]


def _take(v, rows: dict[int, int], size: int, copies: int, total: int):
    """A keyword argument's rows (tensors with the batch's leading size, dicts of them), like the sample's."""
    if torch.is_tensor(v) and v.ndim and v.shape[0] == total * copies:
        return gather(v, rows, size, copies, total)
    if isinstance(v, dict):
        return {k: _take(x, rows, size, copies, total) for k, x in v.items()}
    return v


def rows_unet(forward, state: ModuleState, out_channels: int):
    """A UNet forward that runs the live candidates (not in `state.skip`) in groups: alone, all together, or as a
    replay's plan says, padding each call to its size; skipped candidates get a zero noise prediction. A
    classifier-free-guidance batch (`cat([latents] * 2)`) is a pair of rows per candidate, kept together."""
    @functools.wraps(forward)
    def wrapped(sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        b = sample.shape[0]
        copies = 2 if cfg_pairs(sample) else 1
        total = b // copies
        skip = state.skip or ()
        live = [i for i in range(total) if i not in skip]
        rows = state.rows
        groups = rows.groups(state, live, len(rows.unet)) if rows is not None else alone_or_together(state, live)
        if rows is not None:
            rows.unet.append(groups)
        if len(groups) == 1 and groups[0][0] == total == len(live) and state.text_lengths is None:
            size, where_ = groups[0]
            if all(i == r for i, r in where_.items()):  # the whole batch as it is: no copies
                return forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        out = None
        for size, where_ in groups:
            t = _take(timestep, where_, size, copies, total) if torch.is_tensor(timestep) and timestep.ndim else timestep
            ehs = _take(encoder_hidden_states, where_, size, copies, total)
            n = _length(state, next(iter(where_)))
            if n is not None:  # the group's own tokens, not its batch-mates' padding
                ehs = ehs[:, :n].contiguous()  # a slice's strides would pick other kernels (other last bits)
            kw = {k: _take(v, where_, size, copies, total) for k, v in kwargs.items()}
            y = forward(gather(sample, where_, size, copies, total), t, ehs, *args, return_dict=False, **kw)[0]
            if out is None:
                out = y.new_zeros((b, *y.shape[1:]))
            scatter(out, y, where_, size, copies, total)
        if out is None:  # every candidate skipped (an inpainting UNet takes 9 channels and returns 4)
            out = sample.new_zeros((b, out_channels, *sample.shape[2:]))
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    return wrapped


def rows_decode(vae, state: ModuleState):
    """`vae.decode` in groups like the UNet's (per image on the CPU, the live latents together on a GPU), each
    group padded to its size, recorded, or placed as a replay says. Previews are decoded with the unwrapped
    `vae.decode.__wrapped__` (`sdkit.search.previews`): they are not the pipeline's output."""
    decode = vae.decode

    @functools.wraps(decode)
    def wrapped(z, *args, return_dict: bool = True, **kwargs):
        total = z.shape[0]
        skip = state.skip or ()
        live = [i for i in range(total) if i not in skip]
        rows = state.rows
        groups = rows.groups(state, live) if rows is not None else alone_or_together(state, live)
        if rows is not None:
            rows.decode = groups
        out = None
        for size, where_ in groups:  # (with the VAE's slicing on, a call decodes its rows one by one)
            y = decode(gather(z, where_, size, 1, total), *args, return_dict=False, **kwargs)[0]
            if out is None:
                out = y.new_zeros((total, *y.shape[1:]))
            scatter(out, y, where_, size, 1, total)
        if out is None:  # every candidate skipped: zeros of the decoded shape
            y = decode(z[:1], *args, return_dict=False, **kwargs)[0]
            out = y.new_zeros((total, *y.shape[1:]))
        if not return_dict:
            return (out,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=out)

    return wrapped


@contextlib.contextmanager
def recording(pipe, *more):
    """Inside the block (one pipeline call, or a hand-off through `more` pipelines: an SDXL base and its refiner),
    the UNets' and VAEs' wrappers record every call's groups into the yielded `Rows`, calls numbered across the
    pipelines; inside `replaying(pipe, ...)`, they replay the recorded arithmetic instead of choosing."""
    states = [module_state(m) for p in (pipe, *more) for m in (p.unet, p.vae)]
    rows = Rows(states[0].replay)
    for s in states:
        s.rows = rows
    try:
        yield rows
    finally:
        for s in states:
            s.rows = None


@contextlib.contextmanager
def replaying(pipe, targets: dict[int, Arithmetic]):
    """Inside the block, each pipeline call of `pipe` puts row i of its batch where `targets[i]` says it ran (its
    batch size and row in every UNet call and in the decode), padding the calls with zero rows; rows without a
    target run alone. `targets` maps a row to one candidate's recorded `Arithmetic`."""
    state = module_state(pipe.unet)
    before, state.replay = state.replay, dict(targets)
    try:
        yield
    finally:
        state.replay = before


def planned_rows(pipe, count: int, batch_size: int | None,
                 lengths: list[int] | None = None) -> dict[int, tuple[int, Arithmetic]] | None:
    """For a run of `count` candidates made in batches of `batch_size` from the start: each candidate's batch
    (its first candidate's number) and arithmetic, by candidate number. `lengths`: each candidate's text length in
    tokens, where prompts differ in length (a long prompt's rows ran in UNet calls of their own). None where a
    candidate's rows do not depend on its batch (batch invariance) or the batch size is not known (a run recorded
    before sdkit 0.2)."""
    if batch_size is None or module_state(pipe.unet).batch_invariant:
        return None
    unet, vae = module_state(pipe.unet), module_state(pipe.vae)
    device, software = where(pipe.device)
    plan = {}
    for first in range(0, count, batch_size):
        rows = list(range(min(batch_size, count - first)))
        with text_lengths(pipe, None if lengths is None else lengths[first:first + len(rows)]):
            calls = {i: (size, at[i]) for size, at in alone_or_together(unet, rows) for i in at}
        decode = {i: [size, at[i]] for size, at in alone_or_together(vae, rows) for i in at}
        for i in rows:
            plan[first + i] = (first, Arithmetic([[0, *calls[i]]], decode[i], device, software))
    return plan
