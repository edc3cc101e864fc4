"""The tree-attention scorer must equal brute-force constrained decoding, name by name."""
import torch

from taskrouter.kvcache import clone_cache
from taskrouter.prompts import answer_text, build_prompt, encode_prompt
from taskrouter.schema import Message, Task
from taskrouter.scorer import Anchor, NameTrie, score_names
from taskrouter.treeattention import Layout
from transformers import DynamicCache

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


def test_tree_scoring_matches_brute_force_beyond_the_sliding_window(tiny_router):
    loaded = tiny_router.loaded
    tasks = [Task(name=n, description=f"do {n}") for n in NAMES[:-1]]
    messages = [Message(role="user", content="please write the recap of the meeting " * 3)]
    prompt = build_prompt("zero_shot", tasks, messages, None)
    ids = encode_prompt(loaded.tokenizer, prompt).ids
    assert len(ids) > 3 * loaded.model.config.sliding_window  # the sliding masks matter
    with torch.inference_mode():
        cache = DynamicCache()
        hidden = loaded.model.get_decoder()(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        before = clone_cache(cache)
        anchor = Anchor(NameTrie.build(loaded.tokenizer, NAMES), 0, hidden.last_hidden_state[0, -1])
        probs, = score_names(loaded.model, cache, Layout([len(ids)], [-1]), [anchor])
        expected = _brute_force(loaded.model, loaded.tokenizer, ids, NAMES)
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=1e-3)
    assert abs(float(probs.sum()) - 1) < 1e-5
    # the cache is restored to the prompt alone
    assert cache.get_seq_length() == before.get_seq_length()
    torch.testing.assert_close(cache.layers[0].keys, before.layers[0].keys)


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
