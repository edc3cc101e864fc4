"""NF4 is really applied to every supported base, Falcon included: bitsandbytes' 4-bit layers, counted after loading.

bitsandbytes runs 4-bit on CPU too, so the same loading path that CUDA takes is exercised here.
"""
import json
import shutil
from collections import Counter

import pytest
import torch

from taskrouter.loading import load_base

pytest.importorskip("bitsandbytes")


def linear_kinds(model) -> Counter:
    """Linear layers of the decoder (the LM head is left in bf16 by design; LoRA's own layers are not counted),
    by class name."""
    return Counter(type(m).__name__ for name, m in model.get_decoder().named_modules()
                   if isinstance(m, torch.nn.Linear) and "lora_" not in name)


@pytest.mark.parametrize("base", ["tiny_dir", "tiny_falcon_dir"])
def test_every_decoder_linear_is_4bit(base, request):
    model, *_ = load_base(str(request.getfixturevalue(base)), quantize="nf4")
    kinds = linear_kinds(model)
    assert set(kinds) == {"Linear4bit"} and kinds["Linear4bit"] >= 8, kinds


def falcon_adapter(base_dir, out, base_model: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(out)
    (out / "router.json").write_text(json.dumps({"base_model": base_model, "quantization": "nf4"}))
    return out


def test_falcon_trains_on_its_4bit_base(tiny_falcon_dir, request_payload):
    """One QLoRA step on the 4-bit Falcon (what `taskrouter train` does on CUDA): the LoRA weights move."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from taskrouter.training.examples import Plan, Query, encode_pack
    from taskrouter.training.train import pack_loss

    model, tokenizer, *_ = load_base(str(tiny_falcon_dir), quantize="nf4")
    model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    assert set(linear_kinds(model.get_base_model())) == {"Linear4bit"}
    tasks, messages = request_payload["tasks"], request_payload["messages"]
    pack = encode_pack(tokenizer, Plan(tuple(tasks), (Query(tuple(messages), None, "meeting_recap", "x"),)), 1024)
    lora = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in lora]
    optimizer = torch.optim.AdamW(lora, lr=1e-2)
    loss = pack_loss(model, pack, torch.device("cpu"))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, lora))


def test_falcon_nf4_artifact_serves_in_4bit(tiny_falcon_dir, tmp_path, request_payload):
    from taskrouter import handler
    from taskrouter.packaging.build import build
    from taskrouter.packaging.verify import unpack

    base = tmp_path / "falcon-7b"  # a local copy of the hub base, named as the hub names it, no taskrouter.json
    shutil.copytree(tiny_falcon_dir, base)
    (base / "taskrouter.json").unlink()
    adapters = tmp_path / "adapters"
    falcon_adapter(base, adapters / "falcon-lora", "tiiuae/falcon-7b")
    result = build(["falcon-lora"], tmp_path / "dist", base=str(base), adapters_dir=adapters)
    assert result.manifest["base_model"] == "tiiuae/falcon-7b" and result.manifest["quantization"] == "nf4"
    unpack(result.archive, tmp_path / "model")
    router = handler.model_fn(str(tmp_path / "model"))
    assert set(linear_kinds(router.loaded.model)) == {"Linear4bit"}
    answer = json.loads(handler.output_fn(handler.predict_fn(
        handler.input_fn(json.dumps({**request_payload, "adapter": "falcon-lora"})), router)))
    assert answer["adapter"] == "falcon-lora" and answer["model"] == "tiiuae/falcon-7b"
    assert answer["task"] in {t["name"] for t in request_payload["tasks"]} | {"none"}
