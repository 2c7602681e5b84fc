from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config_kwargs(**overrides):
    """The odd tiny sizes that catch shape mix-ups (vocab 99, hidden 32, intermediate 37)."""
    kwargs = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=4,
        memory_expansion=2,
        projection_chunk_size=4,
        memory_chunk_size=8,
        cms_levels=[
            {"intermediate_size": 37, "update_period": 1},
            {"intermediate_size": 19, "update_period": 4},
        ],
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return kwargs


def move_input_projection_off_identity(model):
    """Add noise to every layer's W_x (a model with `input_projection=True`): at its identity initialisation a path that
    skipped W_x would pass every equality test. Returns the model."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.model.layers:
            weight = layer.mixer.input_proj.weight
            weight.add_(0.3 * torch.randn(weight.shape, generator=generator, dtype=weight.dtype))
    return model


@pytest.fixture
def tiny_kwargs():
    return tiny_config_kwargs


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_tokenizer():
    """A local word-level tokenizer over the tiny vocabulary ("w4" … "w98"; ids 0-3 are special): no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, 99)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")           # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of many tiny forwards: tiny models gain nothing from threads, and on a
    busy shared machine the thread barriers cost up to 100x (measured: 4 s vs 0.05 s a forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
