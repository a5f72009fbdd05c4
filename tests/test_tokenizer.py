"""sdkit.models.tokenizer: transformers' CLIPTokenizer over a small vocabulary, one token per word."""

from __future__ import annotations

import shutil

import pytest

from sdkit.models.tokenizer import BOS, EOS, clip_tokenizer, save_clip_tokenizer

# What the tokenizer files written by hand (sdkit before it built transformers' CLIPTokenizer) gave.
OLD_IDS = {
    "a red circle": [690, 320, 555, 589, 691],
    "A photo of a horse on the moon": [690, 320, 528, 515, 320, 71, 575, 82, 324, 516, 514, 620, 516, 691],
    "zebra über café 😀 123": [690, 89, 68, 65, 81, 320, 127, 120, 65, 68, 337, 625, 69, 127, 358, 172, 253, 246, 478,
                                272, 273, 274, 691],
    "": [690, 691],
}


def test_ids_are_the_ones_the_hand_written_files_gave():
    tok = clip_tokenizer()
    assert len(tok) == 692 and tok.convert_ids_to_tokens([690, 691]) == [BOS, EOS]
    assert {p: tok(p).input_ids for p in OLD_IDS} == OLD_IDS
    toy = clip_tokenizer(["yellow", "circle", "red", "a"], model_max_length=8)
    assert toy("a red circle", padding="max_length", max_length=8).input_ids == [
        toy.bos_token_id, *toy.convert_tokens_to_ids(["a</w>", "red</w>", "circle</w>"]), *[toy.eos_token_id] * 4]


def test_each_word_is_one_token():
    words = ["triangle", "circle", "yellow", "green", "red", "a"]  # longest first: see vocab_and_merges
    tok = clip_tokenizer(words)
    for word in words:
        assert tok.tokenize(word.upper()) == [word + "</w>"], word
    assert len(tok.tokenize("zebra")) > 1  # a word outside the list is spelled out


@pytest.mark.parametrize("files", [None, ("vocab.json", "merges.txt", "tokenizer_config.json")])
def test_saved_tokenizer_tokenizes_the_same(tmp_path, files):
    """Loaded from its folder (from tokenizer.json, or as a Hub SD checkpoint ships it: vocab.json + merges.txt)."""
    from transformers import CLIPTokenizer

    made = save_clip_tokenizer(tmp_path / "tok", model_max_length=77)
    assert {p.name for p in (tmp_path / "tok").iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    folder = tmp_path / "tok"
    if files:
        folder = tmp_path / "hub"
        folder.mkdir()
        for f in files:
            shutil.copy(tmp_path / "tok" / f, folder)
    loaded = CLIPTokenizer.from_pretrained(folder)
    assert loaded.model_max_length == 77 and len(loaded) == len(made)
    prompts = [*OLD_IDS, "Alice in  Wonderland, 8k!", "<|startoftext|> hi"]
    assert [loaded(p).input_ids for p in prompts] == [made(p).input_ids for p in prompts]
    assert {p: loaded(p).input_ids for p in OLD_IDS} == OLD_IDS
