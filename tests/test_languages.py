"""The language-consistency reward and the language-mixing metric (r1lab/languages.py): shares
counted by hand, and model output built to fool a language detector."""

import pytest

from r1lab.config import load_config
from r1lab.errors import ConfigError
from r1lab.languages import (
    consistency,
    language_consistency,
    language_metrics,
    language_shares,
    reasoning_text,
    segments,
)
from r1lab.records import Problem
from r1lab.rewards import REWARDS


def _problem(lang: str | None = None) -> Problem:
    return Problem(id="p", prompt="x", answer="1", metadata={"language": lang} if lang else {})


def test_reasoning_text_is_the_thinking_block_or_the_whole_response():
    assert reasoning_text("<think>a b</think><answer>1</answer>") == "a b"
    assert reasoning_text("pre-filled a b</think><answer>1</answer>") == "pre-filled a b"  # template opened <think>
    assert reasoning_text("<think>cut off mid") == "cut off mid"
    assert reasoning_text("no tags at all") == "no tags at all"
    assert reasoning_text(None) == ""


def test_one_language_reasoning_has_share_one():
    en = "<think>First add three and four. Then multiply the sum by five.</think><answer>35</answer>"
    zh = "<think>首先把三和四相加。然后把和乘以五。</think><answer>35</answer>"
    assert language_shares(en) == {"en": 1.0}
    assert language_shares(zh) == {"zh": 1.0}
    assert consistency(en, "en") == 1.0 and consistency(zh, "en") == 0.0 and consistency(zh, "zh") == 1.0


def test_mixed_script_sentence_counts_each_script_by_hand():
    # English words: first, add, three, and, four (5 distinct); Chinese characters: 然 后 乘 以 五 (5)
    text = "<think>First add three and four 然后乘以五</think>"
    assert segments(reasoning_text(text)) == [("latin", ["First", "add", "three", "and", "four"]),
                                               ("cjk", ["然", "后", "乘", "以", "五"])]
    assert language_shares(text) == {"en": 0.5, "zh": 0.5}
    assert consistency(text, "zh") == 0.5


def test_code_numbers_and_latex_carry_no_language():
    only_symbols = ("<think>```python\ndef solve(x):\n    return x * 5\n```\n12 + 34 = 46, 3.5e10 "
                    "$\\frac{a}{b}$ \\(x^2\\) x2 3x var_name `print(total)` <br/></think>")
    assert segments(reasoning_text(only_symbols)) == []
    assert language_shares(only_symbols) == {}
    assert consistency(only_symbols, "en") is None
    # Chinese reasoning with an English code block and formula inside: the code does not count
    zh = "<think>我们写一个函数。```python\ndef add_numbers(first, second):\n    return first + second\n```$a + b = c$ 结果是七。</think>"
    assert language_shares(zh) == {"zh": 1.0}


def test_repeating_one_target_word_counts_once():
    # the hack: English reasoning for a Chinese prompt, padded with one Chinese character 500 times
    padded = "<think>" + "的" * 500 + " Add three and four to get seven then multiply by five</think>"
    # distinct units: 的 (zh) against add three and four to get seven then multiply by five (11 en)
    assert language_shares(padded) == pytest.approx({"zh": 1 / 12, "en": 11 / 12})
    plain = "<think>Add three and four to get seven then multiply by five</think>"
    gain = consistency(padded, "zh") - consistency(plain, "zh")
    assert gain == pytest.approx(1 / 12)


def test_empty_or_wordless_reasoning_earns_nothing():
    problems = [_problem("en")] * 4
    texts = ["<think></think><answer>7</answer>", "<think>3 + 4 = 7</think><answer>7</answer>", "", "<think>   "]
    assert language_consistency(problems, texts, [None] * 4, None) == [0.0, 0.0, 0.0, 0.0]
    assert language_metrics(problems, texts) == {"lang/consistency": pytest.approx(float("nan"), nan_ok=True),
                                                 "lang/mixed": pytest.approx(float("nan"), nan_ok=True),
                                                 "lang/no_words": 1.0}


def test_reward_target_is_configured_else_the_problem_language_else_english():
    fr = "<think>On additionne trois et quatre puis on multiplie par cinq.</think>"
    assert language_consistency([_problem("fr")], [fr], [None], None) == [1.0]
    assert language_consistency([_problem()], [fr], [None], None) == [0.0]  # no language: English
    assert language_consistency([_problem("fr")], [fr], [None], None, language="de") == [0.0]
    assert "language_consistency" in REWARDS


def test_language_metrics_mixing_and_mean():
    problems = [_problem("zh"), _problem("zh"), _problem("zh"), _problem()]
    texts = ["<think>首先把三和四相加。然后乘以五。</think>",
             "<think>First add three and four 然后乘以五</think>",  # 0.5 / 0.5: mixed
             "<think>First add three and four then multiply by five.</think>",  # all English
             "<think>ignored: this problem has no language</think>"]
    got = language_metrics(problems, texts)
    assert got["lang/consistency"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert got["lang/mixed"] == pytest.approx(1 / 3)
    assert got["lang/no_words"] == 0.0
    assert language_metrics([_problem()], ["text"]) == {}  # nothing carries a language: no metrics


def test_hostile_text_never_raises():
    for text in ["\x00\ufffd" * 50, "<think>" * 100, "$" * 1000, "```" * 333, "a-" * 5000, "\u200b\u202e abc",
                 "Ω" * 300, "<think>🙂🙂🙂 👍</think>"]:
        shares = language_shares(text)
        assert all(0.0 <= v <= 1.0 for v in shares.values())
        assert sum(shares.values()) == pytest.approx(1.0) or shares == {}


def test_config_language_domain(tmp_path):
    cfg = load_config(None, ["reward.language=zh", "reward.languages=[en,zh,ko]"])
    assert cfg.reward.language == "zh" and cfg.reward.languages == ["en", "zh", "ko"]
    with pytest.raises(ConfigError, match="reward.language"):
        load_config(None, ["reward.language=klingon"])
    with pytest.raises(ConfigError, match="reward.languages"):
        load_config(None, ["reward.languages=[]"])


def test_every_rl_step_logs_language_mixing_when_problems_carry_a_language():
    """collect() with a scripted rollout: the consistency term is a reward like any other, and the
    lang/* metrics sit in the step's info; a run whose problems carry no language logs none."""
    from r1lab.config import RunConfig
    from r1lab.records import Completion
    from r1lab.rollout.base import SamplingParams
    from r1lab.tasks import generate_splits
    from r1lab.train.collect import collect
    from r1lab.train.sampler import PromptSampler

    cfg = RunConfig()
    cfg.train.prompts_per_step, cfg.train.group_size = 2, 2
    cfg.reward.terms = {"accuracy": 1.0, "language_consistency": 0.5}
    cfg.reward.verify_workers = 0
    zh_text = "<think>我们一步一步地计算。</think>\n<answer>{}</answer>"
    en_text = "<think>Let us work it out step by step.</think>\n<answer>{}</answer>"

    def rollout(prompts, seed):
        return [Completion(p.id, [1], [2, 3], (zh_text if i == 0 else en_text).format(p.answer), [0.0, 0.0], "stop")
                for p in prompts for i in range(2)]

    _, zh = generate_splits(["arithmetic_zh"], 0, 4, 1, seed=0)
    col = collect(cfg, PromptSampler(zh, seed=0), SamplingParams(), rollout, seed=0)
    assert col.terms["language_consistency"] == [1.0, 0.0, 1.0, 0.0]
    assert [c.reward for c in col.completions] == [1.5, 1.0, 1.5, 1.0]
    assert col.info["lang/consistency"] == 0.5 and col.info["lang/mixed"] == 0.0
    _, plain = generate_splits(["arithmetic"], 0, 4, 1, seed=0)
    cfg.reward.terms = {"accuracy": 1.0}
    col = collect(cfg, PromptSampler(plain, seed=0), SamplingParams(), rollout, seed=0)
    assert not any(k.startswith("lang/") for k in col.info)
