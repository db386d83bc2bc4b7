import numpy as np
import pytest

from adyton import DefaultSampler, GenerationRequest, StopMatcher


def req(**kw):
    return GenerationRequest(prompt="x", **kw)


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1], dtype=np.float32)
    assert DefaultSampler(req(temperature=0)).choose(logits) == 1


def test_seed_reproducible_and_seeds_differ():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)
    a = DefaultSampler(req(temperature=1.0, seed=7))
    b = DefaultSampler(req(temperature=1.0, seed=7))
    c = DefaultSampler(req(temperature=1.0, seed=8))
    sa = [a.choose(logits) for _ in range(50)]
    sb = [b.choose(logits) for _ in range(50)]
    sc = [c.choose(logits) for _ in range(50)]
    assert sa == sb
    assert sa != sc


def test_top_k_restricts_candidates():
    logits = np.arange(100, dtype=np.float32) / 10
    s = DefaultSampler(req(temperature=2.0, top_k=3, seed=1))
    assert {s.choose(logits) for _ in range(200)} <= {97, 98, 99}


def test_top_p_keeps_the_nucleus():
    logits = np.full(50000, -10.0, dtype=np.float32)
    logits[[5, 6]] = [5.0, 4.9]
    s = DefaultSampler(req(temperature=1.0, top_p=0.5, seed=3))
    assert {s.choose(logits) for _ in range(100)} == {5}


def test_top_p_wider_than_head_uses_the_whole_vocabulary():
    # a flat distribution: the nucleus needs far more than the head
    logits = np.zeros(5000, dtype=np.float32)
    s = DefaultSampler(req(temperature=1.0, top_p=0.9, seed=3))
    picks = {s.choose(logits) for _ in range(300)}
    assert len(picks) > 200


def test_min_p_filters_unlikely_tokens():
    logits = np.array([5.0, 4.0, 0.0, -5.0], dtype=np.float32)
    s = DefaultSampler(req(temperature=1.0, min_p=0.2, seed=0))
    assert {s.choose(logits) for _ in range(300)} <= {0, 1}


def test_logit_bias_and_penalties():
    logits = np.array([1.0, 2.0, 0.0], dtype=np.float32)
    s = DefaultSampler(req(temperature=0, logit_bias={1: -100}))
    x = logits.copy()
    s.adjust(x)
    assert s.choose(x) == 0
    s = DefaultSampler(req(temperature=0, frequency_penalty=2.0))
    x = logits.copy()
    s.adjust(x)
    assert s.choose(x) == 1
    x = logits.copy()
    s.adjust(x)
    assert s.choose(x) == 0  # 1 was penalised


@pytest.mark.parametrize("pieces,stops,expected", [
    (["Hel", "lo ST", "OP more"], ["STOP"], ("Hello ", True)),
    (["a", "S", "T", "O", "P"], ["STOP"], ("a", True)),
    (["S", "T", "x"], ["STOP"], ("STx", False)),
    (["ab", "c"], ["bc", "abcd"], ("a", True)),
    (["x\n", "\nUser:"], ["\n\n"], ("x", True)),
])
def test_stop_matcher_never_emits_a_partial_stop(pieces, stops, expected):
    m = StopMatcher(stops)
    out, hit = [], False
    for p in pieces:
        text, hit = m.feed(p)
        out.append(text)
        for s in stops:  # nothing emitted so far ends with a stop's prefix that later completes
            assert s not in "".join(out)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    assert ("".join(out), hit) == expected


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    s = DefaultSampler(req(temperature=0, repetition_penalty=2.0))
    assert s.modifies_logits
    x = np.array([1.0, 3.0, -1.0], dtype=np.float32)
    s.adjust(x)
    assert s.choose(x) == 1  # nothing generated yet: unchanged
    s._counts[2] = 1  # token 2 was generated too
    x = np.array([1.0, 3.0, -1.0], dtype=np.float32)
    s.adjust(x)
    assert x.tolist() == [1.0, 1.5, -2.0]
    assert s.choose(x) == 1
    x = np.array([1.0, 3.0, -1.0], dtype=np.float32)
    s.adjust(x)
    assert x.tolist() == [1.0, 1.5, -2.0]  # a count does not compound the penalty
    assert not DefaultSampler(req()).modifies_logits
