"""Constrained writing (RL-Poet at toy scale): short poems with a form a program can check.

A problem asks for N lines, an acrostic (line i starts with letter i of a word, so N is the
word's length) and, from difficulty 2, a syllable count per line, from difficulty 3 a rhyme
scheme (AABB / ABAB). Syllables and rhymes come from the CMU Pronouncing Dictionary through
`pronouncing`: a word it does not know is not a word here.

Degenerate text satisfies nothing: every form term and the verdict are 0 unless the poem is
well formed — every word in the dictionary, at least MIN_WORDS words per line, no line
repeated, and at most a third of a line's words repeats. A rhyme needs two different words.

Reward terms (registered here), one per constraint, each the fraction of it that holds:
`poem_lines`, `poem_acrostic`, `poem_syllables`, `poem_rhyme`; a constraint the problem does not
ask for scores like a satisfied one (1 for a well-formed poem) so that totals compare across
difficulties. The verifier ("poem") says correct iff every asked constraint holds in full.

The teacher builds lines from a small word bank: a starter for the acrostic letter, fillers
to reach the syllable count, an end word from the rhyme group the scheme needs.
"""

from __future__ import annotations

import functools
import random
import re

from r1lab.records import Problem, Verdict
from r1lab.reward_registry import register_reward
from r1lab.tasks.base import TaskFamily, extract_answer, format_trace, register_task
from r1lab.verify.registry import register_verifier

MIN_WORDS = 3
MAX_LINES = 12
_WORD = re.compile(r"[A-Za-z']+")

ACROSTICS = ("SUN", "SEA", "SKY", "DAY", "OWL", "ELM", "FOG", "MOON", "STAR", "WIND", "RAIN", "TREE", "BIRD",
             "LEAF", "HOME", "GLOW", "DAWN", "SNOW", "MIST", "TIDE", "WAVE", "STORM", "RIVER", "LIGHT", "SPRING")
TOPICS = ("the sea", "the night", "a river", "the wind", "spring", "a garden", "the moon", "winter", "home", "a bird",
          "the rain", "a forest", "the dawn", "autumn", "summer", "a city", "the stars", "a mountain", "the snow",
          "a lake", "the road", "a friend", "the fire", "a storm", "the sky", "a field", "the hills", "a ship",
          "the clouds", "a song", "the morning", "the evening", "a flower", "the desert", "an island", "a bridge",
          "the harbor", "a valley", "the wolves", "a candle")
STARTERS = {
    "A": ["all", "above", "across"], "B": ["bright", "blue", "birds"], "C": ["cold", "clear", "clouds"],
    "D": ["deep", "down", "dark"], "E": ["every", "each", "even"], "F": ["far", "falling", "fields"],
    "G": ["green", "gentle", "golden"], "H": ["high", "how", "hills"], "I": ["in", "into", "ice"],
    "L": ["lights", "long", "low"], "M": ["my", "morning", "many"], "N": ["now", "near", "never"],
    "O": ["over", "old", "on"], "P": ["past", "pale", "pines"], "R": ["rivers", "red", "round"],
    "S": ["soft", "slow", "silver"], "T": ["the", "through", "tall"], "U": ["under", "upon", "until"], "Y": ["yellow", "young", "yet"],
    "K": ["kind", "keen", "kings"],
    "V": ["vast", "violet", "valleys"], "W": ["where", "warm", "wild"],
}
FILLERS = ["sun", "wind", "sea", "red", "blue", "soft", "cold", "we", "and", "the", "dream", "sing", "grass", "stone",
           "river", "golden", "gentle", "morning", "silver", "yellow", "quiet", "shadow", "water", "over"]
RHYMES = [["day", "way", "say", "play", "stay", "gray"], ["night", "light", "bright", "sight", "white"],
          ["sea", "free", "tree", "me", "be"], ["rain", "plain", "chain", "main", "lane"],
          ["sky", "high", "fly", "by", "sigh"], ["song", "long", "strong", "along", "belong"],
          ["home", "roam", "foam", "dome"], ["gold", "old", "cold", "bold", "hold"]]


@functools.lru_cache(maxsize=None)
def _cmu():
    import pronouncing

    pronouncing.init_cmu()
    return pronouncing


@functools.lru_cache(maxsize=65536)
def phones(word: str) -> str | None:
    """The word's first CMU pronunciation, or None when the dictionary does not know it."""
    found = _cmu().phones_for_word(word.lower().strip("'"))
    return found[0] if found else None


def syllables(word: str) -> int | None:
    p = phones(word)
    return None if p is None else _cmu().syllable_count(p)


def rhyme(a: str, b: str) -> bool:
    """Two different dictionary words with the same rhyming part."""
    pa, pb = phones(a), phones(b)
    if pa is None or pb is None or a.lower() == b.lower():
        return False
    return _cmu().rhyming_part(pa) == _cmu().rhyming_part(pb)


def poem_lines(text: str) -> list[list[str]]:
    """The answer's non-empty lines, each as its words."""
    return [_WORD.findall(line) for line in text.splitlines() if line.strip()]


def degenerate(lines: list[list[str]]) -> str | None:
    """Why the poem is degenerate, or None when it is well formed (see the module docstring)."""
    if not lines or len(lines) > MAX_LINES:
        return f"a poem needs 1 to {MAX_LINES} lines"
    seen = set()
    for words in lines:
        if len(words) < MIN_WORDS:
            return f"a line has fewer than {MIN_WORDS} words"
        if len(words) > 20:
            return "a line has more than 20 words"
        low = [w.lower() for w in words]
        if 3 * (len(low) - len(set(low))) > len(low):
            return "a line repeats its words"
        key = " ".join(low)
        if key in seen:
            return "a line is repeated"
        seen.add(key)
        unknown = [w for w in words if phones(w) is None]
        if unknown:
            return f"not a dictionary word: {unknown[0][:30]!r}"
    return None


def scheme_pairs(scheme: str, n: int) -> list[tuple[int, int]]:
    """Line pairs that must rhyme: each line with the next line of the same letter."""
    out = []
    for i in range(min(n, len(scheme))):
        later = [j for j in range(i + 1, min(n, len(scheme))) if scheme[j] == scheme[i]]
        if later:
            out.append((i, later[0]))
    return out


def constraint_scores(text: str, problem: Problem) -> dict[str, float] | None:
    """Fraction satisfied per constraint ('lines', 'acrostic', 'syllables', 'rhyme'); None when the
    response has no answer or the poem is degenerate."""
    answer = extract_answer(text) if isinstance(text, str) else None
    if answer is None or len(answer) > 2000:
        return None
    lines = poem_lines(answer)
    if degenerate(lines) is not None:
        return None
    meta = problem.metadata or {}
    word = str(meta.get("acrostic", ""))
    n = len(word)
    scores = {"lines": float(len(lines) == n)}
    scores["acrostic"] = sum(i < len(lines) and lines[i][0][0].upper() == c for i, c in enumerate(word)) / n
    k = meta.get("syllables")
    scores["syllables"] = 1.0 if not k else sum(
        i < len(lines) and sum(syllables(w) or 0 for w in lines[i]) == k for i in range(n)) / n
    scheme = str(meta.get("rhyme") or "")
    pairs = scheme_pairs(scheme, n)
    scores["rhyme"] = 1.0 if not pairs else sum(
        j < len(lines) and rhyme(lines[i][-1], lines[j][-1]) for i, j in pairs) / len(pairs)
    return scores


@register_task("poem")
class Poem(TaskFamily):
    task = "poem"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        word = rng.choice(ACROSTICS)
        topic = rng.choice(TOPICS)
        meta: dict = {"acrostic": word, "syllables": None, "rhyme": None, "topic": topic}
        asks = [f"Write a poem of {len(word)} lines about {topic}. Acrostic: {word}."]
        if difficulty >= 2:
            meta["syllables"] = rng.choice((5, 6, 7))
            asks.append(f"{meta['syllables']} syllables per line.")
        if difficulty >= 3:
            meta["rhyme"] = rng.choice(("AABB", "ABAB", "AABBA"))[: len(word)]
            asks.append(f"Rhyme: {meta['rhyme']}.")
        return Problem(id="", prompt=" ".join(asks), answer=f"a poem with acrostic {word}", task=self.task, metadata=meta)

    def teacher_trace(self, problem: Problem) -> str:
        meta = problem.metadata or {}
        word, k, scheme = str(meta["acrostic"]), meta.get("syllables"), str(meta.get("rhyme") or "")
        rng = random.Random(f"r1lab/poem/{problem.prompt}")
        groups = {letter: rng.sample(rng.choice(RHYMES), 2) for letter in sorted(set(scheme))}  # sorted: set order varies per process
        used: dict[str, int] = {}
        for _ in range(100):
            lines = [self._line(rng, c, k, groups, scheme, i, used) for i, c in enumerate(word)]
            if degenerate([ln.split() for ln in lines]) is None:
                break
        steps = [f"{len(word)} lines, starting {', '.join(word)}"] + ([f"{k} syllables each"] if k else []) + (
            [f"rhyme {scheme}"] if scheme else [])
        return format_trace(["; ".join(steps)], "\n".join(lines))

    @staticmethod
    def _line(rng: random.Random, letter: str, k: int | None, groups: dict, scheme: str, i: int, used: dict) -> str:
        if i < len(scheme):
            group = groups[scheme[i]]
            end = group[used.get(scheme[i], 0) % 2]
            used[scheme[i]] = used.get(scheme[i], 0) + 1
        else:
            end = rng.choice(rng.choice(RHYMES))
        target = k or rng.randint(5, 7)
        # a starter that leaves room for at least one filler (MIN_WORDS)
        fits = [w for w in STARTERS[letter] if (syllables(w) or 9) + (syllables(end) or 9) < target]
        starter = rng.choice(fits or STARTERS[letter])
        middle: list[str] = []
        left = target - (syllables(starter) or 1) - (syllables(end) or 1)
        while left > 0:
            options = [w for w in FILLERS if (syllables(w) or 9) <= left and w not in middle and w != end]
            w = rng.choice(options)
            middle.append(w)
            left -= syllables(w) or 1
        if len(middle) == 0:  # MIN_WORDS: a short line still needs a third word
            middle.append("the")
        return " ".join([starter.capitalize(), *middle, end])


@register_verifier("poem")
def check_poem(response: str, problem: Problem) -> Verdict:
    """Correct iff the poem is well formed and meets every constraint the problem asks for."""
    if not isinstance(response, str) or extract_answer(response) is None:
        return Verdict("unparsable", "no <answer>...</answer> in the response")
    scores = constraint_scores(response, problem)
    if scores is None:
        why = degenerate(poem_lines(extract_answer(response) or "")) or "answer too long"
        return Verdict("wrong", f"degenerate poem: {why}")
    missed = [name for name, s in scores.items() if s < 1.0]
    if missed:
        return Verdict("wrong", "constraints missed: " + ", ".join(f"{m} {scores[m]:.2f}" for m in missed))
    return Verdict("correct")


def _term(name: str):
    def term(problems, texts, verdicts, completions=None) -> list[float]:
        out = []
        for p, t in zip(problems, texts):
            scores = constraint_scores(t, p)
            out.append(0.0 if scores is None else scores[name])
        return out

    term.__doc__ = f"Fraction of the poem's {name} constraint that holds; 0 for a degenerate poem or no answer."
    return term


for _name in ("lines", "acrostic", "syllables", "rhyme"):
    register_reward(f"poem_{_name}")(_term(_name))
