"""The tiny model is a real Qwen2 checkpoint with a trained tokenizer, cached by recipe hash."""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mindgap.models.config import TinyModelConfig
from mindgap.models.loading import load_causal_lm, load_tokenizer, stop_token_ids
from mindgap.models.tiny import build_tiny_model
from mindgap.prompts import standard_prompt


def test_built_once_and_reused(tiny_model_path: str, data_root: str) -> None:
    before = os.stat(os.path.join(tiny_model_path, "model.safetensors")).st_mtime_ns
    again = build_tiny_model(TinyModelConfig(), os.environ["MINDGAP_CACHE_DIR"], data_root)
    assert str(again) == tiny_model_path
    assert os.stat(again / "model.safetensors").st_mtime_ns == before


def test_other_recipe_gets_other_directory(tiny_model_path: str, data_root: str) -> None:
    other = build_tiny_model(TinyModelConfig(seed=1), os.environ["MINDGAP_CACHE_DIR"], data_root)
    assert str(other) != tiny_model_path
    first = AutoModelForCausalLM.from_pretrained(tiny_model_path).model.embed_tokens.weight
    second = AutoModelForCausalLM.from_pretrained(other).model.embed_tokens.weight
    assert not torch.equal(first, second)


def test_loads_as_qwen2_with_head_dim_64(tiny_model_path: str) -> None:
    config = AutoConfig.from_pretrained(tiny_model_path)
    assert config.model_type == "qwen2"
    assert config.hidden_size // config.num_attention_heads == 64
    model = load_causal_lm(tiny_model_path)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, config.vocab_size)


def test_tokenizer_is_trained_on_task_text(tiny_model_path: str) -> None:
    tokenizer = load_tokenizer(tiny_model_path)
    text = "Natalia sold 48/2 = 24 clips in May."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # Frequent words of the corpus are single tokens, so the vocabulary was learned, not bytes.
    for word in (" sold", " total", " each", " dollars"):
        assert len(tokenizer.tokenize(word)) == 1, word
    assert len(tokenizer) == 2048


def test_chat_template_and_special_tokens(tiny_model_path: str) -> None:
    tokenizer = load_tokenizer(tiny_model_path)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    prompt_ids = tokenizer(standard_prompt("What is 2+2?", "qwen-boxed"), add_special_tokens=False)["input_ids"]
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert prompt_ids.count(im_start) == 3 and prompt_ids.count(im_end) == 2
    assert tokenizer.eos_token == "<|im_end|>"
    assert im_end in stop_token_ids(tokenizer, load_causal_lm(tiny_model_path))
