"""Build a CLIP BPE tokenizer offline, for the tiny models.

Real checkpoints ship their tokenizer; tiny ones need one that the same
`CLIPTokenizer.from_pretrained` path reads. We write `vocab.json` and
`merges.txt` in the format OpenAI's CLIP uses: every byte as a symbol (and as
an end-of-word symbol), plus merges that make each word of a small word list a
single token, so short toy prompts stay short.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

# Words of the toy world and of the tutorials' prompts: one token each.
DEFAULT_WORDS = (
    "a an the of on in and with at by photo photograph picture painting drawing "
    "red green blue yellow white black orange purple "
    "circle square triangle shape small big large "
    "horse moon dog cat sitting field autumn leaves frog throne iron kermit "
    "style art portrait landscape city night day"
).split()

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _vocab_and_merges(words) -> tuple[dict[str, int], list[str]]:
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    seen = set(vocab)
    for word in dict.fromkeys(w.lower() for w in words):
        chars = [bytes_to_unicode()[b] for b in word.encode("utf-8")]
        if len(chars) < 2:
            continue
        # Merge left to right: ((w o) r) d</w> ... so the word becomes one token.
        left = chars[0]
        for i, c in enumerate(chars[1:], start=1):
            right = c + "</w>" if i == len(chars) - 1 else c
            merged = left + right
            if merged not in seen:
                merges.append(f"{left} {right}")
                vocab.append(merged)
                seen.add(merged)
            left = merged
    vocab += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def save_clip_tokenizer(save_directory: str | os.PathLike, words=DEFAULT_WORDS, model_max_length: int = 77):
    """Write a CLIP tokenizer (vocab.json, merges.txt, configs) that `CLIPTokenizer` loads."""
    os.makedirs(save_directory, exist_ok=True)
    vocab, merges = _vocab_and_merges(words)
    with open(os.path.join(save_directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(save_directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    # model_max_length must be set: without it encoding overflows (see NOTES.md).
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    with open(os.path.join(save_directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(save_directory, "special_tokens_map.json"), "w") as f:
        json.dump({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, f, indent=2)
    return len(vocab)


def load_clip_tokenizer(path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(path)
