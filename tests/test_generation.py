"""`generate()` with the recurrent cache (issue 3): greedy, sampling, beam search, `num_return_sequences`,
`max_new_tokens`, streaming, padded batches and bf16 loading, on both mixers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, TextStreamer

from hope_hf import HopeCache, HopeConfig, HopeForCausalLM, cache_argument, output_cache

from conftest import tiny_config_kwargs, tiny_tokenizer

MIXERS = {"hope": {}, "hope-attention": {"mixer": "attention", "num_key_value_heads": 2}}
# eos_token_id=None: a random tiny model emits EOS early, and sequences of different lengths are hard to compare
NO_EOS = {"eos_token_id": None, "pad_token_id": 0}


def build(mixer: str) -> HopeForCausalLM:
    return HopeForCausalLM(HopeConfig(**tiny_config_kwargs(**MIXERS[mixer]))).eval()


def prompt(batch=2, length=9, seed=1):
    return torch.randint(3, 99, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_greedy_with_and_without_cache_are_identical(mixer):
    model = build(mixer)
    x = prompt()
    out = model.generate(x, max_new_tokens=12, do_sample=False, return_dict_in_generate=True, **NO_EOS)
    assert isinstance(output_cache(out), HopeCache)
    assert output_cache(out).get_seq_length() == 9 + 12 - 1        # the last token is not fed back
    assert out.sequences.shape == (2, 21)
    uncached = model.generate(x, max_new_tokens=12, do_sample=False, use_cache=False, **NO_EOS)
    assert torch.equal(out.sequences, uncached)


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_continuing_from_a_returned_cache_and_from_embeddings(mixer):
    """`generate` resumes from the cache it returned (feeding only the new columns), and starts from
    `inputs_embeds`; both equal the un-cached reference."""
    model = build(mixer)
    x = prompt()
    first = model.generate(x, max_new_tokens=5, do_sample=False, return_dict_in_generate=True, **NO_EOS)
    resumed = model.generate(first.sequences, **cache_argument(output_cache(first)), max_new_tokens=6,
                             do_sample=False, **NO_EOS)
    reference = model.generate(x, max_new_tokens=11, do_sample=False, use_cache=False, **NO_EOS)
    assert torch.equal(resumed, reference)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(x), max_new_tokens=5, do_sample=False,
                                 **NO_EOS)
    assert torch.equal(from_embeds, reference[:, 9:14])


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_sampling_with_and_without_cache_are_identical(mixer):
    model = build(mixer)
    x = prompt()
    kwargs = dict(max_new_tokens=10, do_sample=True, top_k=20, temperature=0.9, num_return_sequences=3, **NO_EOS)
    torch.manual_seed(3)
    cached = model.generate(x, **kwargs)
    torch.manual_seed(3)
    uncached = model.generate(x, use_cache=False, **kwargs)
    assert cached.shape == (6, 19)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :9], x.repeat_interleave(3, dim=0))


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_beam_search_reorders_the_cache_like_the_uncached_reference(mixer):
    """Beam search reorders the cache every step (`HopeCache.reorder_cache`); the un-cached run recomputes
    every beam from its tokens, so equal outputs mean the reordered states are right."""
    model = build(mixer)
    x = prompt()
    kwargs = dict(max_new_tokens=8, num_beams=4, num_return_sequences=2, do_sample=False, output_scores=True,
                  return_dict_in_generate=True, **NO_EOS)
    cached = model.generate(x, **kwargs)
    uncached = model.generate(x, use_cache=False, **kwargs)
    assert cached.sequences.shape == (4, 17)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.allclose(cached.sequences_scores, uncached.sequences_scores, atol=1e-5)


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_left_padded_generation_equals_each_prompt_alone(mixer):
    """`generate` left-pads; a 3-token and a 40-token prompt in one batch continue as they do alone."""
    model = build(mixer).double()
    short, long = prompt(1, 3, seed=5), prompt(1, 40, seed=6)
    batch = torch.cat([torch.cat([torch.zeros(1, 37, dtype=torch.long), short], 1), long])
    mask = (batch != 0).long()
    together = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False, **NO_EOS)
    assert torch.equal(together[0, 37:], model.generate(short, max_new_tokens=10, do_sample=False, **NO_EOS)[0])
    assert torch.equal(together[1], model.generate(long, max_new_tokens=10, do_sample=False, **NO_EOS)[0])


def test_streaming_with_text_streamer(capsys):
    model, tokenizer = build("hope"), tiny_tokenizer()
    inputs = tokenizer("w5 w17 w42 w8", return_tensors="pt")
    streamer = TextStreamer(tokenizer, skip_prompt=True)
    out = model.generate(**inputs, streamer=streamer, max_new_tokens=6, do_sample=False, **NO_EOS)
    printed = capsys.readouterr().out
    assert out.shape == (1, 10)
    assert printed.strip() == tokenizer.decode(out[0, 4:]).strip() and printed.strip()


def test_bfloat16_loading_and_generation(tmp_path):
    build("hope").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    out = model.generate(prompt(), max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
                         output_logits=True, **NO_EOS)
    assert all(torch.isfinite(step).all() for step in out.logits)
    state = output_cache(out).layers[0].state
    assert state.memory.w_in.dtype == torch.float32 and state.conv.dtype == torch.float32
