"""`bench latency --against-env`: the second router loads with the given settings, and only it does."""
import argparse
import os

import pytest

from evaluation.bench import _against


def _args(tiny_dir, *env, against=None) -> argparse.Namespace:
    return argparse.Namespace(against=against, against_env=list(env), model_dir=str(tiny_dir))


def test_the_other_router_loads_with_its_settings_and_this_process_keeps_its_own(tiny_dir):
    from taskrouter import settings

    assert _against(_args(tiny_dir)) == (None, None)
    router, name = _against(_args(tiny_dir, "TASKROUTER_PAD_ROWS=0", "TASKROUTER_CACHE_MB=7"))
    assert name == "this checkout TASKROUTER_PAD_ROWS=0 TASKROUTER_CACHE_MB=7"
    assert router.engine.pad_rows is False and router.cache.max_bytes == 7 * 2**20
    assert "TASKROUTER_PAD_ROWS" not in os.environ and settings.get().pad_rows is True


@pytest.mark.parametrize("bad", ["TASKROUTER_PAD_ROW=0", "PAD_ROWS=0", "TASKROUTER_PAD_ROWS"])
def test_a_variable_that_is_no_setting_is_refused_by_name(tiny_dir, bad):
    with pytest.raises(SystemExit, match=bad):
        _against(_args(tiny_dir, bad))
