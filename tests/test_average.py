"""`taskrouter average`: the soup's weights are the exact mean of its adapters', it routes, bad inputs are named."""
import json
import shlex
from pathlib import Path

import pytest
import torch

from taskrouter.cli import main, parse_args
from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.schema import parse_request


def make_adapter(base_dir: Path, out: Path, seed: int, r: int = 4, alpha: int = 8, **manifest) -> Path:
    """A random (non-zero) LoRA on q_proj/v_proj with a router.json, as `taskrouter train` writes them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(out)
    (out / "router.json").write_text(json.dumps({
        "base_model": base_dir.name, "prompt_format": "adapter", "quantization": "none",
        "hyper_parameters": {"history_tokens": 96}, "train_command": f"taskrouter train --seed {seed}",
        "none_bias": {"value": -1.0}, **manifest}))
    return out


def merged(base_dir: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """The base's weights with the adapter folded in: what the adapter does to the model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter))
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def ingredients(tiny_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ingredients")
    return [make_adapter(tiny_dir, root / f"run{i}", seed=i) for i in range(3)]


def test_soup_is_the_exact_mean_of_its_adapters_and_routes(tiny_dir, ingredients, tmp_path):
    out = tmp_path / "soup"
    main(["average", *[a for p in ingredients for a in ("--adapter", str(p))], "--out", str(out)])

    each = [merged(tiny_dir, p) for p in ingredients]
    soup = merged(tiny_dir, out)
    changed = [k for k in soup if not torch.equal(each[0][k], each[1][k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    for key in soup:
        mean = sum(w[key] for w in each) / len(each)
        torch.testing.assert_close(soup[key], mean, rtol=1e-5, atol=1e-6)

    manifest = json.loads((out / "router.json").read_text())
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card and manifest["average_command"] in card
    assert manifest["hyper_parameters"]["rank"] == 12 and manifest["hyper_parameters"]["history_tokens"] == 96
    assert "none_bias" not in manifest  # the soup's bias must be tuned again
    assert [a["train_command"] for a in manifest["average_of"]] == [f"taskrouter train --seed {i}" for i in range(3)]
    again = parse_args(shlex.split(manifest["average_command"])[1:])
    assert again.adapter == [str(p) for p in ingredients] and again.out == str(out)

    router = Router(load_model(str(tiny_dir), {"soup": out}), default_adapter="soup")
    answer = router.route(parse_request({"messages": [{"role": "user", "content": "Recap the ACME meeting."}],
                                         "tasks": [{"name": "meeting_recap"}, {"name": "follow_up_email"}]}))
    assert answer.task in {"meeting_recap", "follow_up_email", "none"}


def test_runs_of_other_scales_and_ranks_average_exactly(tiny_dir, ingredients, tmp_path):
    other = make_adapter(tiny_dir, tmp_path / "scale", seed=5, r=2, alpha=16)
    main(["average", "--adapter", str(ingredients[0]), "--adapter", str(other), "--out", str(tmp_path / "soup")])
    each, soup = [merged(tiny_dir, p) for p in (ingredients[0], other)], merged(tiny_dir, tmp_path / "soup")
    for key in soup:
        torch.testing.assert_close(soup[key], (each[0][key] + each[1][key]) / 2, rtol=1e-5, atol=1e-6)


def test_soup_may_overwrite_one_of_its_adapters(tiny_dir, ingredients, tmp_path):
    import shutil

    first = shutil.copytree(ingredients[0], tmp_path / "first")
    expected = tmp_path / "expected"
    main(["average", "--adapter", str(ingredients[0]), "--adapter", str(ingredients[1]), "--out", str(expected)])
    main(["average", "--adapter", str(first), "--adapter", str(ingredients[1]), "--out", str(first)])
    assert (first / "adapter_model.safetensors").read_bytes() == (expected / "adapter_model.safetensors").read_bytes()


def test_bad_adapters_are_named(tiny_dir, ingredients, tmp_path):
    def average(*folders: Path):
        main(["average", *[a for p in folders for a in ("--adapter", str(p))], "--out", str(tmp_path / "out")])

    with pytest.raises(SystemExit, match="at least two"):
        average(ingredients[0])
    other_base = make_adapter(tiny_dir, tmp_path / "base", seed=6, base_model="gemma-3-270m")
    with pytest.raises(SystemExit, match=r"--adapter .*base: base_model 'gemma-3-270m' differs"):
        average(ingredients[0], other_base)
    with pytest.raises(SystemExit, match=r"--adapter .*nowhere: not a directory"):
        average(ingredients[0], tmp_path / "nowhere")
    unlabelled = make_adapter(tiny_dir, tmp_path / "unlabelled", seed=7)
    (unlabelled / "router.json").unlink()
    with pytest.raises(SystemExit, match=r"--adapter: adapter .*unlabelled has no router.json"):
        average(ingredients[0], unlabelled)
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_a_warm_start_from_a_soup_keeps_the_runs_it_is_the_mean_of(ingredients, tmp_path):
    from taskrouter.training.train import init_provenance

    out = tmp_path / "soup"
    main(["average", *[a for p in ingredients for a in ("--adapter", str(p))], "--out", str(out)])
    provenance = init_provenance(str(out))  # what a `train --init-adapter SOUP` records
    assert [run["train_command"] for run in provenance["average_of"]] == [f"taskrouter train --seed {i}"
                                                                          for i in range(3)]
    assert provenance["average_command"] == json.loads((out / "router.json").read_text())["average_command"]
