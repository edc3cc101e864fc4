"""Tiny random-weight models with an offline byte-level BPE tokenizer, for fast tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "Route the latest user message to a task. Tasks: Conversation: User: Assistant: Current task: Task: none",
    "meeting_recap follow_up_email prepare_a_quote qualify_leads answer_to_a_prospect respond_to_customer_request",
    "Please write a recap of the meeting with ACME. Send a follow-up email to the prospect. Thanks, that's all.",
    "book a flight, weather forecast, reserve a restaurant, find a hotel, play music, set a timer",
]


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.Replace("\u2581", " ")  # as SentencePiece vocabularies (Gemma) read their space mark
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, arch: str = "gemma3", seed: int = 0) -> Path:
    """Save a tiny `arch` model (gemma3 with a sliding window of 8 tokens, or falcon) plus tokenizer to `out`.

    Every linear layer is at least 64 wide: bitsandbytes' CPU 4-bit kernels on AVX-512/AMX CPUs repack
    weights in blocks of 64 input columns and fail on narrower rows.
    """
    from transformers import AutoModelForCausalLM, FalconConfig, Gemma3TextConfig

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if arch == "gemma3":
        config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=32, sliding_window=8, max_position_embeddings=2048,
                                  layer_types=["sliding_attention", "full_attention"], **common)
    else:
        config = FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False,
                              multi_query=True, parallel_attn=True, bias=False, alibi=False, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    (out / "taskrouter.json").write_text(json.dumps({"base_model": out.name}))
    return out


def build_adapter(base_dir: Path, out: Path, history_tokens: int = 96) -> Path:
    """Save a random LoRA adapter of the tiny model with its router.json manifest to `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    (out / "router.json").write_text(json.dumps({"name": out.name, "base_model": base_dir.name,
                                                 "prompt_format": "adapter",
                                                 "hyper_parameters": {"history_tokens": history_tokens}}))
    return out
