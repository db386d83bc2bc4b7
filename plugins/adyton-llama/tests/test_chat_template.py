from __future__ import annotations

import pytest

from adyton.chat_template import CHATML_TEMPLATE, ChatTemplate, ChatTemplateError, render_chat

USER = [{"role": "user", "content": "hi"}]


def test_reference_prompts(smol_meta, reference):
    tpl = ChatTemplate.from_metadata(smol_meta)
    assert not tpl.is_fallback
    assert tpl.bos_token == "<|im_start|>" and tpl.eos_token == "<|im_end|>"
    for chat in reference["chat_greedy"]:
        assert tpl.render(chat["messages"]) == chat["prompt"]


def test_reference_prompts_tokenize(smol_meta, smol_tokenizer, reference):
    tpl = ChatTemplate.from_metadata(smol_meta)
    for chat in reference["chat_greedy"]:
        assert smol_tokenizer.encode(tpl.render(chat["messages"])) == chat["prompt_ids"]


def test_chatml_fallback(tiny_gpt2):
    from adyton_llama.gguf import read_gguf

    tpl = ChatTemplate.from_metadata(read_gguf(tiny_gpt2))
    assert tpl.is_fallback and tpl.source == CHATML_TEMPLATE
    out = tpl.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert tpl.render(USER, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_template_features():
    src = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'skip' %}{% continue %}{% endif %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}[{{ m['role'] }}:{{ m['content'] | tojson }}]"
        "{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}{% if add_generation_prompt %}>{% endif %}"
    )
    msgs = [{"role": "user", "content": "é\"<"}, {"role": "skip", "content": "x"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    out = render_chat(src, msgs, bos_token="<s>", tools=[{"name": "f"}])
    assert out == '<s>[user:"é\\"<"][assistant:"b"][{"name": "f"}]>'


def test_trim_and_lstrip_blocks():
    src = "{% for m in messages %}\n    {{ m['content'] }}\n{% endfor %}"
    assert render_chat(src, USER) == "    hi\n"  # trim_blocks eats the newline after a block tag


@pytest.mark.parametrize(
    "src, match",
    [
        ("{{ raise_exception('bad role') }}", "bad role"),
        ("{{ ().__class__.__mro__ }}", "unsafe"),
        ("{{ messages.append(1) }}", "unsafe"),
        ("{% for i in range(10**9) %}{% endfor %}", "range"),
        ("{% for %}", "invalid chat template"),
        ("{{ messages[5]['content'] + 1 }}", "failed"),
    ],
)
def test_untrusted_templates_fail_cleanly(src, match):
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate(src).render(USER)


def test_messages_are_not_mutated():
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages[0].update({'content': 'x'}) }}", msgs)
    assert msgs == [{"role": "user", "content": "hi"}]
