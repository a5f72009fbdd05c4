"""A CLIP BPE tokenizer built offline, for sdkit's own models.

Real checkpoints ship their tokenizer; sdkit's tiny and toy models need one that the same
`CLIPTokenizer.from_pretrained` path reads. `clip_tokenizer` builds transformers' own
`CLIPTokenizer` from a vocabulary and merges in OpenAI CLIP's format: every byte as a symbol
(and as an end-of-word symbol), plus merges that make each word of a small word list a single
token, so short prompts stay short. BPE applies merges by rank, so an early word's merge (the
"r e" of "red") can break a later word's chain ("g r e e n"): list long words first.
"""

from __future__ import annotations

import os

# Words of the toy world and of the tutorials' prompts (in this order a few, "green" among them, are 2-6 tokens).
DEFAULT_WORDS = (
    "a an the of on in and with at by photo photograph picture painting drawing "
    "red green blue yellow white black orange purple "
    "circle square triangle shape small big large "
    "horse moon dog cat sitting field autumn leaves frog throne iron kermit "
    "style art portrait landscape city night day"
).split()

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def vocab_and_merges(words) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols, end-of-word byte symbols, one merge chain per word, then BOS and EOS."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbol = bytes_to_unicode()
    symbols = list(byte_symbol.values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    seen = set(vocab)
    for word in dict.fromkeys(w.lower() for w in words):
        chars = [byte_symbol[b] for b in word.encode("utf-8")]
        if len(chars) < 2:
            continue
        # Merge left to right: ((w o) r) d</w> ... so the word becomes one token.
        left = chars[0]
        for i, c in enumerate(chars[1:], start=1):
            right = c + "</w>" if i == len(chars) - 1 else c
            merged = left + right
            if merged not in seen:
                merges.append((left, right))
                vocab.append(merged)
                seen.add(merged)
            left = merged
    vocab += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def clip_tokenizer(words=DEFAULT_WORDS, model_max_length: int = 77):
    """transformers' `CLIPTokenizer` over `words`' vocabulary; each word is one token."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges(words)
    # model_max_length must be set: without it encoding overflows (see NOTES.md).
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
                         model_max_length=model_max_length)


def save_clip_tokenizer(save_directory: str | os.PathLike, words=DEFAULT_WORDS, model_max_length: int = 77):
    """Save `clip_tokenizer(words, model_max_length)` to `save_directory` and return it."""
    tokenizer = clip_tokenizer(words, model_max_length)
    tokenizer.save_pretrained(save_directory)
    # transformers 5 saves tokenizer.json only; Hub CLIP and SD checkpoints also carry vocab.json + merges.txt.
    tokenizer.backend_tokenizer.model.save(str(save_directory))
    return tokenizer
