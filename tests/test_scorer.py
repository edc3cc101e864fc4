"""The tree-attention scorer must equal brute-force constrained decoding, name by name."""
import pytest
import torch

from taskrouter.engine import Engine, Item
from taskrouter.kvcache import PrefixCache, prefix_keys
from taskrouter.prompts import answer_text, build_prompt, encode_prompt
from taskrouter.schema import Message, Task
from taskrouter.scorer import NameTrie

NAMES = ["meeting_recap", "meeting_recap_long", "follow_up_email", "prepare_a_quote", "a", "none"]


def _brute_force(model, tokenizer, prompt_ids, names):
    """Probability of each name under step-by-step constrained decoding with full forwards, no cache."""
    seqs = [tokenizer.encode(answer_text(n), add_special_tokens=False) for n in names]
    logps = []
    for seq in seqs:
        total = 0.0
        for step in range(len(seq)):
            ids = torch.tensor([prompt_ids + seq[:step]])
            logits = model(input_ids=ids).logits[0, -1]
            allowed = sorted({s[step] for s in seqs if s[:step] == seq[:step] and len(s) > step})
            sub = torch.log_softmax(logits[allowed], dim=0)
            total += float(sub[allowed.index(seq[step])])
        logps.append(total)
    return torch.softmax(torch.tensor(logps), dim=0)


@pytest.mark.parametrize("attention", ["blocks", "dense"])
def test_one_pass_scoring_matches_brute_force_beyond_the_sliding_window(tiny_router, attention):
    loaded = tiny_router.loaded
    tasks = [Task(name=n, description=f"do {n}") for n in NAMES[:-1]]
    messages = [Message(role="user", content="please write the recap of the meeting " * 3),
                Message(role="assistant", content="sure"), Message(role="user", content="and the follow up")]
    segments = encode_prompt(loaded.tokenizer, build_prompt("zero_shot", tasks, messages, None)).segments
    ids = [t for seg in segments for t in seg]
    assert len(ids) > 3 * loaded.model.config.sliding_window  # the sliding masks matter
    trie = NameTrie.build(loaded.tokenizer, NAMES)
    assert trie.internal  # names that share tokens: trie nodes ride in the prompt's forward pass
    engine = Engine(loaded.model, PrefixCache(), attention)
    with torch.inference_mode():
        expected = _brute_force(loaded.model, loaded.tokenizer, ids, NAMES)
        cold, = engine.run([Item(segments, trie)], "m")
        # again: the prefix up to the last message is cached now, only the tail and the trie are computed
        warm, = engine.run([Item(segments, trie)], "m")
        # a batch: the cached prompt next to a fresh shorter one, both in one pass
        short = segments[:2] + segments[-1:]
        batch = engine.run([Item(short, trie), Item(segments, trie)], "m")
    assert cold.computed == len(ids) + len(trie.internal) and warm.computed == len(segments[-1]) + len(trie.internal)
    for outcome in (cold, warm, batch[1]):
        torch.testing.assert_close(outcome.probs, expected, atol=1e-4, rtol=1e-3)
    short_ids = [t for seg in short for t in seg]
    torch.testing.assert_close(batch[0].probs, _brute_force(loaded.model, loaded.tokenizer, short_ids, NAMES),
                               atol=1e-4, rtol=1e-3)
    assert abs(float(cold.probs.sum()) - 1) < 1e-5
    # an item's own cache holds its prompt alone (no trie node), extendable without touching the stored one
    own = batch[1].own_cache()
    covered, stored = engine.cache.longest(prefix_keys("m", segments[:-1]))
    assert covered == len(segments) - 1 and own.get_seq_length() == len(ids)
    before = stored.layers[0].keys.clone()
    with torch.inference_mode():
        engine.extend(own, ids[:3])
    assert own.get_seq_length() == len(ids) + 3 and stored.get_seq_length() == len(ids) - len(segments[-1])
    torch.testing.assert_close(stored.layers[0].keys, before)


def test_trie_shares_prefixes(tiny_router):
    trie = NameTrie.build(tiny_router.loaded.tokenizer, ["meeting_recap", "meeting_recap_long"])
    a, b = (tiny_router.loaded.tokenizer.encode(answer_text(n), add_special_tokens=False)
            for n in ("meeting_recap", "meeting_recap_long"))
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert common > 0
    assert len(trie.tokens) - 1 == len(a) + len(b) - common  # the common tokens appear once
    assert sorted(trie.leaf_of.values()) == [0, 1]


def test_forced_tokens_are_never_computed(tiny_router):
    tok = tiny_router.loaded.tokenizer
    distinct = [n for n in ["meeting_recap", "follow_up_email", "prepare_a_quote", "none"]]
    firsts = {tok.encode(answer_text(n), add_special_tokens=False)[0] for n in distinct}
    assert len(firsts) == len(distinct)  # the names differ in their first token
    assert NameTrie.build(tok, distinct).internal == []  # the choice is made at the root, nothing more to feed
    shared = NameTrie.build(tok, ["meeting_recap", "meeting_recap_long"])
    a = tok.encode(answer_text("meeting_recap"), add_special_tokens=False)
    # the shared prefix up to the branching point is fed, the forced tail of the longer name is not
    assert 0 < len(shared.internal) <= len(a) and len(shared.internal) < len(shared.tokens) - 1
