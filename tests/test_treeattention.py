from types import SimpleNamespace

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from taskrouter.treeattention import block_attention, query_blocks, tree_layout


def test_block_attention_computes_exactly_the_dense_masked_attention():
    # two cached prompts (0, 1); new tokens: two continue prompt 0 (one of them with a nested
    # continuation), one continues prompt 1, and one is a fresh prompt with no cached prefix
    lengths, parents, cached = [5, 7, 3, 4, 2, 1, 1, 6], [-1, -1, 0, 1, 0, 2, 5, -1], 2
    allowed, _ = tree_layout(lengths, parents)
    past, total = sum(lengths[:cached]), sum(lengths)
    mask = allowed[past:][None, None]
    torch.manual_seed(0)
    query = torch.randn(1, 4, total - past, 16)
    key, value = torch.randn(1, 1, total, 16), torch.randn(1, 1, total, 16)
    module = SimpleNamespace(num_key_value_groups=4, is_causal=True)
    blocks = query_blocks(lengths, parents, cached)
    # one block per cached prompt continued, one for the fresh prompt; no block sees the other prompt
    assert len(blocks) == 3
    assert all(not (set(cols.tolist()) & set(range(5))) or not (set(cols.tolist()) & set(range(5, 12)))
               for _, cols in blocks)
    dense, _ = sdpa_attention_forward(module, query, key, value, mask)
    blocked, _ = block_attention(module, query, key, value, mask, blocks=blocks)
    torch.testing.assert_close(blocked, dense)
