"""Prompts (`sdkit.prompts`): A1111's attention syntax read as A1111 reads it, weighted and long prompts equal to
plain diffusers fed compel's embeddings, unweighted prompts on the old path, batch invariance with prompts of any
length, `<lora:>` tags, and bad weights refused before any denoising."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("compel")

from sdkit.generation import generate  # noqa: E402
from sdkit.load.invariance import own_memory  # noqa: E402
from sdkit.load.pipeline import load_pipeline  # noqa: E402
from sdkit.models.builtin import builtin_pipeline_path  # noqa: E402
from sdkit.prompts import encode, parse  # noqa: E402
from sdkit.save import read_metadata, read_parameters  # noqa: E402

STEPS = 3
LONG = "a red circle on a blue square, " * 12  # 97 words: two chunks


def image(pipe, prompt, seed=1, **kw):
    return np.asarray(generate(pipe, prompt, n=1, seeds=[seed], num_inference_steps=STEPS, progress=False, **kw)[0].image)


def plain(model):
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(builtin_pipeline_path(model), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    own_memory(pipe)  # weights in fresh memory, as sdkit holds them (CPU kernels' last bits depend on addresses)
    return pipe


def plain_image(pipe, seed=1, **kw):
    out = pipe(num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator().manual_seed(seed), **kw)
    return np.asarray(out.images[0])


@pytest.mark.parametrize("prompt, fragments", [
    ("a red circle", [("a red circle", 1.0)]),
    ("a (red) circle", [("a ", 1.0), ("red", 1.1), (" circle", 1.0)]),
    ("a ((red)) circle", [("a ", 1.0), ("red", 1.1 * 1.1), (" circle", 1.0)]),
    ("a [red] circle", [("a ", 1.0), ("red", 1 / 1.1), (" circle", 1.0)]),
    ("a (red:1.3) circle", [("a ", 1.0), ("red", 1.3), (" circle", 1.0)]),
    ("a (red: 0.5 ) circle", [("a ", 1.0), ("red", 0.5), (" circle", 1.0)]),
    ("(a (red:1.5) circle:1.2)", [("a ", 1.2), ("red", 1.5 * 1.2), (" circle", 1.2)]),
    (r"a \(red\) circle", [("a (red) circle", 1.0)]),
    ("a (red circle", [("a ", 1.0), ("red circle", 1.1)]),  # unclosed: to the end, as A1111
    ("a red) circle", [("a red) circle", 1.0)]),
    ("time: 5pm", [("time: 5pm", 1.0)]),
    ("a <lora:style:0.5> (cat:1.2)", [("a  ", 1.0), ("cat", 1.2)]),
])
def test_parse_reads_a1111s_attention_syntax(prompt, fragments):
    """The table is A1111's own `parse_prompt_attention` docstring's rules (modules/prompt_parser.py)."""
    got = parse(prompt).fragments
    assert [t for t, _ in got] == [t for t, _ in fragments]
    assert np.allclose([w for _, w in got], [w for _, w in fragments])


def test_lora_tags_are_read_and_taken_out():
    p = parse("a cat <lora:style:0.5> <lora:detail>")
    assert p.loras == (("style", 0.5), ("detail", 1.0)) and "lora" not in p.text


@pytest.mark.parametrize("model", ["sdkit:tiny", "sdkit:tiny-xl"])
def test_a_weighted_prompt_equals_plain_diffusers_fed_compels_embeddings(model):
    """The reference: compel's own parser and its `Compel` (compel's syntax `(red)1.3` for A1111's `(red:1.3)`),
    its embeddings passed to plain diffusers (SDXL's pooled embedding: diffusers' own, of the text)."""
    from compel import Compel, ReturnedEmbeddingsType

    ref = plain(model)
    xl = model.endswith("xl")
    kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if xl else
            ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    pairs = [(ref.tokenizer, ref.text_encoder)] + ([(ref.tokenizer_2, ref.text_encoder_2)] if xl else [])
    compels = [Compel(tokenizer=t, text_encoder=e, returned_embeddings_type=kind, truncate_long_prompts=False)
               for t, e in pairs]
    embeds = torch.cat([c("a (red)1.3 circle, (blue)0.6 square") for c in compels], dim=-1)
    neg = torch.cat([c("") for c in compels], dim=-1)
    kw = dict(prompt_embeds=embeds, negative_prompt_embeds=neg)
    if xl:
        pooled = ref.encode_prompt("a red circle, blue square", device="cpu", do_classifier_free_guidance=False)[2]
        kw.update(pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(embeds),
                  negative_pooled_prompt_embeds=torch.zeros_like(pooled))  # SDXL's zeros for no negative prompt
    expected = plain_image(ref, **kw)
    pipe = load_pipeline(model, safety_checker=False)
    ours = image(pipe, "a (red:1.3) circle, (blue:0.6) square")
    assert np.array_equal(ours, expected)
    assert not np.array_equal(ours, image(pipe, "a red circle, blue square"))


@pytest.mark.parametrize("model", ["sdkit:tiny", "sdkit:tiny-xl"])
def test_weight_one_and_lora_tags_alone_give_the_plain_prompts_pixels(model, tmp_path):
    """Verified, not assumed: `(red:1.0)` goes through compel's embeddings, and they equal diffusers' own for the
    text (the same tokens; compel leaves weight-1 embeddings untouched); a plain prompt stays on the old path."""
    pipe = load_pipeline(model)
    base = image(pipe, "a red circle")
    assert np.array_equal(image(pipe, "a (red:1.0) circle"), base)
    assert np.array_equal(image(pipe, "a (red circle:1.0)"), base)
    ref = plain(model)
    assert np.array_equal(base, plain_image(ref, prompt="a red circle"))


def test_long_prompts_are_chunked_not_truncated():
    pipe = load_pipeline("sdkit:tiny")
    embeds, lengths = encode(pipe, [LONG, "a red circle"], None)
    assert embeds["prompt_embeds"].shape[1] == 2 * 77 and lengths == [154, 77]
    assert embeds["negative_prompt_embeds"].shape[1] == 154
    # The first chunk is the truncated prompt's embedding (start, 75 tokens, end), the second the rest.
    truncated = pipe.encode_prompt(LONG, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
    assert torch.equal(embeds["prompt_embeds"][:1, :77], truncated)
    assert not torch.equal(embeds["prompt_embeds"][:1, 77:], embeds["prompt_embeds"][1:, :77])
    ours = image(pipe, LONG)
    assert not np.array_equal(ours, plain_image(plain("sdkit:tiny"), prompt=LONG))  # diffusers truncates


@pytest.mark.parametrize("model", ["sdkit:tiny", "sdkit:tiny-xl"])
def test_a_long_prompt_equals_plain_diffusers_fed_compels_chunks(model):
    from compel import Compel, ReturnedEmbeddingsType
    from compel.embeddings_provider import SplitLongTextMode

    ref = plain(model)
    xl = model.endswith("xl")
    kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if xl else
            ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    pairs = [(ref.tokenizer, ref.text_encoder)] + ([(ref.tokenizer_2, ref.text_encoder_2)] if xl else [])
    compels = [Compel(tokenizer=t, text_encoder=e, returned_embeddings_type=kind, truncate_long_prompts=False,
                      split_long_text_mode=SplitLongTextMode.BRUTAL) for t, e in pairs]
    embeds = torch.cat([c(LONG) for c in compels], dim=-1)
    assert embeds.shape[1] == 154
    neg = torch.cat([c("a green triangle") for c in compels], dim=-1)
    neg = torch.cat([neg, torch.cat([c("") for c in compels], dim=-1)], dim=1)  # padded with an empty chunk
    kw = dict(prompt_embeds=embeds, negative_prompt_embeds=neg)
    if xl:
        enc = ref.encode_prompt(LONG, device="cpu", negative_prompt="a green triangle")
        kw.update(pooled_prompt_embeds=enc[2], negative_pooled_prompt_embeds=enc[3])
    ours = image(load_pipeline(model, safety_checker=False), LONG, negative_prompt="a green triangle")
    assert np.array_equal(ours, plain_image(ref, **kw))


@pytest.mark.parametrize("batch_invariant", [True, False])
def test_a_candidate_is_the_same_in_any_batch_with_prompts_of_any_length(batch_invariant):
    """Plain, weighted and long prompts in one batch: each candidate equals itself alone (the CPU's per-candidate
    path), or its regenerate (the GPU's batched path, forced on the CPU: rows recorded and replayed)."""
    from sdkit.search.replay import regenerate

    pipe = load_pipeline("sdkit:tiny", scheduler="Euler a", batch_invariant=batch_invariant)
    prompts = ["a red circle", LONG, "a (blue:1.2) square"]
    run = generate(pipe, prompts, n=2, seed=5, batch_size=6, num_inference_steps=STEPS, progress=False,
                   negative_prompt=["", "[green]", "a " + LONG])
    for c in run:
        if batch_invariant:
            alone = generate(pipe, c.prompt, n=1, seeds=[c.seed], negative_prompt=c.negative_prompt or None,
                             num_inference_steps=STEPS, progress=False)[0]
        else:
            # rows of one length run together: the two 77-token candidates, the four of 154 (prompt or negative)
            assert c.arithmetic["unet"][0][1] == (2 if c.prompt == "a red circle" else 4)
            alone = regenerate(c.params(), pipe=pipe)
        assert np.array_equal(np.asarray(c.image), np.asarray(alone.image)), c.prompt[:20]


def test_a_weighted_negative_prompt_counts():
    pipe = load_pipeline("sdkit:tiny")
    a = image(pipe, "a red circle", negative_prompt="blue")
    b = image(pipe, "a red circle", negative_prompt="(blue:1.6)")
    assert not np.array_equal(a, b)


def test_the_png_keeps_the_prompt_as_typed_and_regenerate_remakes_it(tmp_path):
    from sdkit.search.replay import regenerate

    prompt, neg = r"a (red:1.3) \(circle\), " + LONG, "[blue]"
    c = generate(load_pipeline("sdkit:tiny"), prompt, n=1, seed=2, negative_prompt=neg, num_inference_steps=STEPS,
                 progress=False, output_dir=tmp_path)[0]
    assert read_metadata(c.path)["prompt"] == prompt
    assert read_parameters(c.path).startswith(prompt + "\nNegative prompt: [blue]\n")
    assert np.array_equal(np.asarray(regenerate(c.path).image), np.asarray(c.image))


@pytest.mark.parametrize("prompt, match", [
    ("a (red:abc) circle", r"weight in ':abc\)' is not a number"),
    ("a (red:1.2.3) circle", r"weight in ':1.2.3\)' is not a number"),
    ("a <lora:style:x> circle", r"'<lora:style:x>' in the prompt: its weight 'x' is not a number"),
])
def test_a_malformed_weight_is_refused_before_any_denoising(prompt, match, tmp_path):
    pipe = load_pipeline("sdkit:tiny")
    calls = []
    with pytest.raises(ValueError, match=match):
        generate(pipe, ["a red circle", prompt], n=1, seed=0, num_inference_steps=STEPS, progress=False,
                 output_dir=tmp_path, callback=calls.append)
    assert calls == [] and not list(tmp_path.glob("*.png"))


# ------------------------------------------------------------------------------------------- <lora:> tags


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    pytest.importorskip("peft")
    from loras import make_lora

    root = tmp_path_factory.mktemp("lora_dir")
    made = make_lora(builtin_pipeline_path("sdkit:tiny"), root / "made")
    (root / "styles").mkdir()
    (root / "styles" / "style.safetensors").write_bytes(made.read_bytes())
    return root


def test_a_lora_tag_loads_the_lora_from_the_folder_as_load_pipeline_would(lora_dir, tmp_path):
    file = lora_dir / "styles" / "style.safetensors"
    expected = image(load_pipeline("sdkit:tiny", loras={str(file): 0.5}), "a red circle")
    pipe = load_pipeline("sdkit:tiny", lora_dir=lora_dir)
    c = generate(pipe, "a red circle <lora:style:0.5>", n=1, seeds=[1], num_inference_steps=STEPS, progress=False,
                 output_dir=tmp_path)[0]
    assert np.array_equal(np.asarray(c.image), expected)
    assert [(r["path"], r["weight"]) for r in c.loras] == [(str(file), 0.5)]
    assert read_metadata(c.path)["prompt"] == "a red circle <lora:style:0.5>"
    text = read_parameters(c.path)
    assert text.startswith("a red circle <lora:style:0.5>\n") and "Lora hashes: " in text  # the tag once
    assert not np.array_equal(image(pipe, "a red circle"), expected)  # the pipeline given is unchanged
    from sdkit.search.replay import regenerate

    assert np.array_equal(np.asarray(regenerate(c.path).image), expected)  # no folder needed: the file is recorded


def test_a_missing_lora_tag_names_it_and_the_folder_before_any_denoising(lora_dir, tmp_path, monkeypatch):
    calls = []
    with pytest.raises(FileNotFoundError, match=f"no gone.safetensors in the LoRA folder '{lora_dir}'"):
        generate(load_pipeline("sdkit:tiny", lora_dir=lora_dir), "a cat <lora:gone:1>", n=1, callback=calls.append,
                 progress=False)
    monkeypatch.delenv("SDKIT_LORA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="no LoRA folder is set.*SDKIT_LORA_DIR"):
        generate(load_pipeline("sdkit:tiny"), "a cat <lora:style:1>", n=1, callback=calls.append, progress=False)
    monkeypatch.setenv("SDKIT_LORA_DIR", str(lora_dir))
    assert len(generate(load_pipeline("sdkit:tiny"), "a cat <lora:style:1>", n=1, num_inference_steps=1,
                        progress=False)[0].loras) == 1
    with pytest.raises(ValueError, match="negative_prompt .* has <lora:> tags"):
        generate(load_pipeline("sdkit:tiny"), "a cat", negative_prompt="<lora:style:1>", n=1, progress=False)
    assert calls == []
