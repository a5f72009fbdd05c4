"""Prompts as AUTOMATIC1111 writes them, turned into what a pipeline takes.

    (word)  (word:1.3)  [word]  \\(literal\\)  <lora:name:0.8>  and prompts over the text encoder's 77 tokens

`parse` reads A1111's attention syntax into (text, weight) fragments with A1111's own rules (its
`parse_prompt_attention`: `(...)` x1.1, `[...]` /1.1, `(...:w)` x w, nesting multiplies, `\\` escapes), and takes
`<lora:name:weight>` tags out (`sdkit.load.pipeline.with_prompt_loras` loads them). `encode` turns the fragments
into `prompt_embeds` with compel's embeddings provider (compel 2.5 runs on transformers 5, so not its fork
`compel5`): a weight w moves a token's embedding away from the empty prompt's by w (compel's arithmetic, not A1111's
mean-preserving rescale; weights below 1 blend towards the prompt without those tokens), and a prompt over 75
tokens is cut into 75-token chunks, each between its own start and end token, concatenated as A1111 does (A1111
moves a chunk's tail of up to 20 tokens after its last comma to the next chunk; compel and sdkit cut at 75).

A prompt without weights, escapes or too many tokens is passed to diffusers as text, exactly as before (`needs_embeddings`
is False): only a call with weighted or long prompts goes through `encode`, one prompt at a time.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch

# A1111's tokens (modules/prompt_parser.py, re_attention), plus a weight that is not a number, which A1111 reads
# as text and sdkit refuses.
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
:\s*([^\s()\[\]\\:]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""", re.X)
_LORA = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")
_SYNTAX = re.compile(r"[()\[\]\\]")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prompt read: its weighted fragments (what the text encoder sees, in order) and its `<lora:>` tags."""

    fragments: tuple[tuple[str, float], ...]
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight), as tagged

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.fragments)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for _, w in self.fragments)


def lora_tags(prompt: str) -> tuple[str, tuple[tuple[str, float], ...]]:
    """`prompt` without its `<lora:name:weight>` tags, and the tags (weight 1 when left out); a ValueError naming a
    weight that is not a number."""
    tags = []
    for m in _LORA.finditer(prompt):
        name, weight = m.group(1).strip(), (m.group(2) or "1").strip()
        try:
            w = float(weight)
        except ValueError:
            w = math.nan
        if not math.isfinite(w):
            raise ValueError(f"{m.group(0)!r} in the prompt: its weight {weight!r} is not a number "
                             "(write <lora:name:0.8>)")
        tags.append((name, w))
    return _LORA.sub("", prompt), tuple(tags)


def parse(prompt: str) -> Prompt:
    """A1111's attention syntax read into weighted fragments (equal neighbours merged), `<lora:>` tags taken out; a
    ValueError naming a weight that is not a number, such as `(word:abc)`."""
    text, loras = lora_tags(prompt)
    res: list[list] = []
    round_, square = [], []

    def multiply(start, by):
        for p in range(start, len(res)):
            res[p][1] *= by

    for m in _ATTENTION.finditer(text):
        tok, weight, bad = m.group(0), m.group(1), m.group(2)
        if (bad is not None or weight is not None) and round_:
            try:
                w = float(weight if weight is not None else bad)
            except ValueError:
                w = math.nan
            if not math.isfinite(w):
                raise ValueError(f"prompt {prompt[:80]!r}: the weight in {tok.strip()!r} is not a number; write "
                                 r"(word:1.3), or escape the brackets as \( \) to mean them literally")
            multiply(round_.pop(), w)
        elif tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_.append(len(res))
        elif tok == "[":
            square.append(len(res))
        elif tok == ")" and round_:
            multiply(round_.pop(), 1.1)
        elif tok == "]" and square:
            multiply(square.pop(), 1 / 1.1)
        else:
            res.append([tok, 1.0])
    for p in round_:  # unclosed brackets count to the end, as in A1111
        multiply(p, 1.1)
    for p in square:
        multiply(p, 1 / 1.1)
    merged: list[list] = []
    for t, w in res:
        if merged and merged[-1][1] == w:
            merged[-1][0] += t
        elif t:
            merged.append([t, w])
    return Prompt(tuple((t, w) for t, w in merged) or (("", 1.0),), loras)


def plain(prompt: str | None) -> bool:
    """True when `prompt` holds no attention syntax: diffusers reads it as text, as it always did."""
    return prompt is None or not _SYNTAX.search(lora_tags(prompt)[0])


def tokens(tokenizer, text: str) -> int:
    """Tokens of `text` with its start and end tokens, as the tokenizer reads them (no truncation)."""
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def needs_embeddings(pipe, prompts) -> bool:
    """Whether a pipeline call with these prompts (and negatives) needs `encode`: a weight, an escape, or more
    tokens than the text encoder reads."""
    tokenizer = getattr(pipe, "tokenizer", None) or pipe.tokenizer_2
    for p in prompts:
        if p is None:
            continue
        if not plain(p):
            return True
        text = lora_tags(p)[0]
        convert = getattr(pipe, "maybe_convert_prompt", None)  # a textual inversion's token: its vectors' tokens
        if tokens(tokenizer, convert(text, tokenizer) if convert else text) > tokenizer.model_max_length:
            return True
    return False


# ---------------------------------------------------------------------------------------------- embeddings


class _Inversions:
    """compel's hook for textual inversions of several vectors: diffusers' own expansion (`<tok>` -> `<tok> <tok>_1
    ...`) for this tokenizer (compel's DiffusersTextualInversionManager uses the first tokenizer for both of SDXL's)."""

    def __init__(self, pipe, tokenizer):
        self.pipe, self.tokenizer = pipe, tokenizer

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids):
        if not token_ids:
            return token_ids
        text = self.pipe.maybe_convert_prompt(self.tokenizer.decode(token_ids), self.tokenizer)
        return self.tokenizer.encode(text, add_special_tokens=False)


def _providers(pipe):
    """compel's embeddings provider for each text encoder, taking the hidden states diffusers takes: SD 1.x/2.x the
    last (normalised) layer, SDXL the penultimate (not normalised) of each encoder."""
    from compel.embeddings_provider import EmbeddingsProvider, ReturnedEmbeddingsType, SplitLongTextMode

    xl = getattr(pipe, "tokenizer_2", None) is not None or getattr(pipe, "text_encoder_2", None) is not None
    kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if xl else
            ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    pairs = [(getattr(pipe, t, None), getattr(pipe, e, None)) for t, e in
             (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))]
    return xl, [EmbeddingsProvider(tok, enc, textual_inversion_manager=_Inversions(pipe, tok), truncate=False,
                                   returned_embeddings_type=kind, split_long_text_mode=SplitLongTextMode.BRUTAL,
                                   device=enc.device)
                for tok, enc in pairs if enc is not None]


def _one(providers, xl: bool, prompt: str):
    """One prompt's embeddings [1, 77k, width] (the encoders' side by side) and, for SDXL, its pooled embedding."""
    p = parse(prompt)
    frags, weights = [t for t, _ in p.fragments], [w for _, w in p.fragments]
    embeds = torch.cat([ep.get_embeddings_for_weighted_prompt_fragments([frags], [weights], device=ep.device)
                        for ep in providers], dim=-1)
    # The pooled embedding (SDXL's last encoder) is of the text's first 77 tokens, unweighted, as diffusers takes it.
    pooled = providers[-1].get_pooled_embeddings([p.text], device=providers[-1].device) if xl else None
    return embeds, pooled


def _empty_chunks(providers, xl: bool, count: int):
    """`count` chunks of the empty prompt's embeddings: what a shorter prompt of a guidance pair is padded with."""
    return torch.cat([ep.empty_z for ep in providers], dim=-1).repeat(1, count, 1)


@torch.no_grad()
def encode(pipe, prompts: list[str], negatives: list[str | None] | None) -> tuple[dict, list[int]]:
    """`prompt_embeds`, `negative_prompt_embeds` (and SDXL's pooled ones) for a pipeline call, each prompt encoded
    alone, and each row's length in tokens. A row's prompt and negative are padded with empty chunks to one length
    (A1111 does the same); rows of another length are padded with zeros, which `sdkit.load.rows` cuts off again
    (each candidate's UNet sees its own tokens only, so its image does not depend on its batch-mates).

    `negatives` None: no negative prompt; SDXL's base then takes zeros (its `force_zeros_for_empty_prompt`), as
    diffusers does for text."""
    xl, providers = _providers(pipe)
    zeros = xl and negatives is None and bool(pipe.config.get("force_zeros_for_empty_prompt", False))
    negatives = negatives if negatives is not None else [None] * len(prompts)
    rows = []
    for prompt, neg in zip(prompts, negatives):
        cond, pooled = _one(providers, xl, prompt)
        if zeros:
            uncond, upooled = torch.zeros_like(cond), torch.zeros_like(pooled)
        else:
            uncond, upooled = _one(providers, xl, neg or "")
            more = (uncond.shape[1] - cond.shape[1]) // providers[0].max_token_count  # chunks
            if more > 0:
                cond = torch.cat([cond, _empty_chunks(providers, xl, more).to(cond)], dim=1)
            elif more < 0:
                uncond = torch.cat([uncond, _empty_chunks(providers, xl, -more).to(uncond)], dim=1)
        rows.append((cond, uncond, pooled, upooled))
    lengths = [r[0].shape[1] for r in rows]
    longest = max(lengths)

    def stack(i):
        return torch.cat([torch.nn.functional.pad(r[i], (0, 0, 0, longest - r[i].shape[1])) for r in rows])

    out = {"prompt_embeds": stack(0), "negative_prompt_embeds": stack(1)}
    if xl:
        out.update(pooled_prompt_embeds=torch.cat([r[2] for r in rows]),
                   negative_pooled_prompt_embeds=torch.cat([r[3] for r in rows]))
    return out, lengths


def takes_embeddings(pipe) -> bool:
    """Whether the pipeline's call takes `prompt_embeds` (every SD 1.x/2.x and SDXL pipeline of diffusers does)."""
    import inspect

    return "prompt_embeds" in inspect.signature(type(pipe).__call__).parameters


def check(prompts, negatives) -> None:
    """Each prompt read before any model work (a ValueError naming a bad weight); `<lora:>` tags in a negative prompt
    are refused (a LoRA changes the model, not one prompt of the guidance pair)."""
    for p in prompts:
        parse(p)
    for n in negatives:
        if n is not None and parse(n).loras:
            raise ValueError(f"negative_prompt {n[:80]!r} has <lora:> tags; put them in the prompt")


def text_kwargs(pipe, prompts: list[str], negatives: list[str] | None) -> tuple[dict, list[int] | None]:
    """The text arguments of one pipeline call, and each row's length in tokens where rows differ: the prompts as text
    (`<lora:>` tags taken out), as sdkit always passed them, unless one needs `encode` (weights, escapes, more tokens
    than the encoder reads) and the pipeline takes embeddings."""
    inner = getattr(pipe, "pipeline", pipe)  # an edit's wrapper: its pipeline
    if takes_embeddings(inner) and needs_embeddings(inner, [*prompts, *(negatives or ())]):
        embeds, lengths = encode(inner, prompts, negatives)
        return embeds, lengths
    return {"prompt": [lora_tags(p)[0] for p in prompts], "negative_prompt": negatives}, None


def row_lengths(pipe, prompts: list[str], negatives: list[str | None]) -> list[int] | None:
    """Each (prompt, negative) row's text length in tokens as a batched call of `text_kwargs` reads it, or None when
    no row needs `encode` (every row then passes as text, of one length). For a resumed batched run: the rows of
    another length ran in UNet calls of their own (`sdkit.load.rows.text_lengths`), so its plan needs them. Each
    distinct row is encoded once (one text-encoder pass; no denoising)."""
    inner = getattr(pipe, "pipeline", pipe)
    if not (takes_embeddings(inner) and needs_embeddings(inner, [*prompts, *negatives])):
        return None
    found = {}
    for row in zip(prompts, negatives):
        if row not in found:
            found[row] = encode(inner, [row[0]], None if row[1] is None else [row[1]])[1][0]
    return [found[row] for row in zip(prompts, negatives)]
