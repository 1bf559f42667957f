"""Multi-hop question answering over generated worlds of facts, with the search tool.

Each problem has its own invented world (people, cities, countries and companies, each named by
one made-up word drawn from the problem's seed out of a closed set), so no model knows it and
nothing learnt on one problem answers another: the answer has to be looked up. The same question
text recurs across worlds with another answer each time: a problem is its world (`dedupe_key`),
so train and held-out problems never share one (the data stage still drops every training problem
whose question text equals a held-out one). Each entity has one document in the world's corpus:

    Varnek is an engineer. Varnek was born in Quenford in 1961 and works for Zorblax.
    Zorblax is a shipping company founded in 1987 by Orelli. Its headquarters are in Brasklow.
    Quenford is a city in Velmar. Its river is the Sul.

and every question needs two look-ups, the second depending on what the first found: "In which
city was the founder of Zorblax born?" (the company's document names its founder, the founder's
document the city; the first document alone never shows the answer). Difficulty d: 12*d people,
4*d companies, 6*d cities, 2+d countries per world (more distractors for the search). A problem
names its world in metadata["world"] ({"seed", "difficulty"}), so a problem read back from a file
finds the same corpus.

The environment "multihop_qa" (registered here) is the tool environment with one tool, search
(BM25, envs/tools.py) over the problem's world; `corpus_documents` gives a world's corpus to
anyone else.

The teacher writes one of two traces, chosen by the world's seed (metadata["teacher"]), in the
environment's tags format with its default settings (k=1: one passage a search, so the bridge and
the answer each stand in the one document shown), the search outputs exactly as the environment
writes them (SFT replays the trace as an episode and trains only the model's turns):
- "search" (three in four): `<search> ENTITY</search>`, the output, `<search> BRIDGE</search>`
  (the entity the first output names), the output, then the answer the second output shows
  (`<answer> ANSWER</answer>`);
- "one" (one in four): the first search, then the answer from memory.
Every trace is right (the teacher knows the world); a student that imitates the second cannot be,
as it does not know the world: the mixture leaves RL the choice of searching twice to learn. A
problem without the metadata a search trace needs (one read from an older file) gets "none": the
two facts and the answer, no search.

Verifier ("multihop_qa"): correct iff the last <answer> equals the gold answer after SQuAD's
normalisation (lowercase, no punctuation, no articles a/an/the, single spaces). Reward terms
(registered here, for any problem with a text answer): `exact_match` (that, as 0/1) and
`token_f1` (SQuAD's token F1 of the normalised answer against the gold).
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections import Counter
from dataclasses import dataclass

from r1lab.envs import SearchIndex, SearchTool, ToolEnvironment, register_env
from r1lab.errors import ConfigError
from r1lab.records import Problem, Verdict
from r1lab.reward_registry import register_reward
from r1lab.tasks.base import TaskFamily, extract_answer, format_trace, register_task
from r1lab.verify.registry import register_verifier

MAX_ANSWER_CHARS = 1000

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "sk", "t", "tr",
           "v", "w", "z", "th", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "k", "m"]
_INDUSTRIES = ["shipping", "software", "mining", "textile", "brewing", "robotics", "insurance", "glassware"]
_PROFESSIONS = ["engineer", "chemist", "pilot", "lawyer", "teacher", "architect", "nurse", "painter"]


def _syllables(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))


def _name_pools() -> dict[str, tuple[str, ...]]:
    """The invented words that name things, one disjoint pool per kind of entity, each name one
    word: a closed set, so each word recurs across worlds (a tokenizer trained on the data gives it
    one token, with or without a leading space) while what it names changes with every world.
    One-token names make every look-up and the answer a copy of one token from the text shown; a
    two-token name asks the tiny model to copy a span, which it does not learn in a short SFT (its
    second token comes out wrong). The pools are small so that each name recurs often enough for
    the tiny model to learn its token (BENCHMARKS.md, "Multi-hop QA"); each holds as many names as
    a difficulty-4 world uses."""
    rng = random.Random("r1lab/multihop/names")
    sizes = {"person": 48, "company": 16, "city": 24, "country": 12, "river": 16}
    words: list[str] = []
    while len(words) < sum(sizes.values()):
        w = _syllables(rng, 1 if len(words) >= sum(sizes.values()) - sizes["river"] else 2).capitalize()
        if w not in words and len(w) >= 3:
            words.append(w)
    pools, at = {}, 0
    for part, n in sizes.items():
        pools[part], at = tuple(words[at: at + n]), at + n
    return pools


_NAMES = _name_pools()


@dataclass(frozen=True)
class World:
    people: dict[str, dict[str, object]]  # name -> {birthplace, born, employer, profession}
    companies: dict[str, dict[str, object]]  # name -> {founder, founded, headquarters, industry}
    cities: dict[str, dict[str, object]]  # name -> {country, river}
    countries: list[str]


@functools.lru_cache(maxsize=256)
def build_world(seed: int, difficulty: int) -> World:
    """The invented world of a seed and difficulty: deterministic, every name distinct across all entities."""
    rng = random.Random(f"r1lab/multihop/{seed}/{difficulty}")
    used: set[str] = set()

    def fresh(make) -> str:
        while True:
            name = make()
            if name.lower() not in used:
                used.add(name.lower())
                return name

    countries = [fresh(lambda: rng.choice(_NAMES["country"])) for _ in range(2 + difficulty)]
    rivers = [fresh(lambda: rng.choice(_NAMES["river"])) for _ in range(3 * difficulty)]
    cities = {fresh(lambda: rng.choice(_NAMES["city"])): {"country": rng.choice(countries), "river": rng.choice(rivers)}
              for _ in range(6 * difficulty)}
    people_names = [fresh(lambda: rng.choice(_NAMES["person"])) for _ in range(12 * difficulty)]
    company_names = [fresh(lambda: rng.choice(_NAMES["company"])) for _ in range(4 * difficulty)]
    city_names = list(cities)
    companies = {c: {"founder": rng.choice(people_names), "founded": rng.randrange(1900, 2020),
                     "headquarters": rng.choice(city_names), "industry": rng.choice(_INDUSTRIES)} for c in company_names}
    people = {p: {"birthplace": rng.choice(city_names), "born": rng.randrange(1930, 2000),
                  "employer": rng.choice(company_names), "profession": rng.choice(_PROFESSIONS)} for p in people_names}
    return World(people, companies, cities, countries)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def document(w: World, name: str) -> str:
    """The text of an entity's document."""
    if name in w.people:
        a = w.people[name]
        return (f"{name} is {_article(str(a['profession']))} {a['profession']}. "
                f"{name} was born in {a['birthplace']} in {a['born']} and works for {a['employer']}.")
    if name in w.companies:
        a = w.companies[name]
        return (f"{name} is {_article(str(a['industry']))} {a['industry']} company founded in {a['founded']} by {a['founder']}. "
                f"Its headquarters are in {a['headquarters']}.")
    a = w.cities[name]
    return f"{name} is a city in {a['country']}. Its river is the {a['river']}."


def corpus_documents(seed: int, difficulty: int) -> list[dict[str, str]]:
    """One document per person, company and city of a world: {"title", "text"}."""
    w = build_world(seed, difficulty)
    return [{"title": name, "text": document(w, name)} for name in [*w.people, *w.companies, *w.cities]]


@functools.lru_cache(maxsize=256)
def world_index(seed: int, difficulty: int) -> SearchIndex:
    return SearchIndex(corpus_documents(seed, difficulty))


# the question kinds: (template, first hop, second hop), each hop (kind of entity, attribute)
QUESTIONS = {
    "founder_birthplace": "In which city was the founder of {x} born?",
    "employer_headquarters": "In which city are the headquarters of the company {x} works for?",
    "employer_founded": "In what year was the company {x} works for founded?",
    "employer_founder": "Who founded the company {x} works for?",
    "birth_country": "In which country was {x} born?",
    "birth_river": "Which river flows through the city where {x} was born?",
    "founder_born": "In what year was the founder of {x} born?",
}
COMPANY_QUESTIONS = ("founder_birthplace", "founder_born")  # about a company; the others about a person
TEACHERS = ("search", "search", "search", "one")  # the teacher of a world seed s is TEACHERS[s % 4]


def _bridge(w: World, kind: str, x: str) -> str:
    """The entity the first look-up finds and the second looks up."""
    if kind in COMPANY_QUESTIONS:
        return str(w.companies[x]["founder"])
    if kind in ("birth_country", "birth_river"):
        return str(w.people[x]["birthplace"])
    return str(w.people[x]["employer"])


def _hops(w: World, kind: str, x: str) -> tuple[list[str], str]:
    """The facts that answer question `kind` about `x`, in the order they are looked up, and the answer."""
    if kind == "founder_birthplace":
        f = str(w.companies[x]["founder"])
        city = str(w.people[f]["birthplace"])
        return [f"{x} was founded by {f}.", f"{f} was born in {city}."], city
    if kind == "founder_born":
        f = str(w.companies[x]["founder"])
        year = str(w.people[f]["born"])
        return [f"{x} was founded by {f}.", f"{f} was born in {year}."], year
    if kind in ("birth_country", "birth_river"):
        city = str(w.people[x]["birthplace"])
        if kind == "birth_river":
            river = str(w.cities[city]["river"])
            return [f"{x} was born in {city}.", f"The river of {city} is the {river}."], river
        country = str(w.cities[city]["country"])
        return [f"{x} was born in {city}.", f"{city} is a city in {country}."], country
    employer = str(w.people[x]["employer"])
    first = f"{x} works for {employer}."
    if kind == "employer_headquarters":
        hq = str(w.companies[employer]["headquarters"])
        return [first, f"The headquarters of {employer} are in {hq}."], hq
    if kind == "employer_founded":
        year = str(w.companies[employer]["founded"])
        return [first, f"{employer} was founded in {year}."], year
    founder = str(w.companies[employer]["founder"])
    return [first, f"{employer} was founded by {founder}."], founder


@register_task("multihop_qa")
class MultihopQA(TaskFamily):
    task = "multihop_qa"
    tools = ("search",)  # the only tool its questions need (what an environment of it may offer)

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        while True:
            seed = rng.randrange(2**31)
            w = build_world(seed, difficulty)
            for _ in range(50):  # a question whose answer the first look-up alone does not show (nor the question)
                kind = rng.choice(sorted(QUESTIONS))
                x = rng.choice(sorted(w.companies) if kind in COMPANY_QUESTIONS else sorted(w.people))
                facts, answer = _hops(w, kind, x)
                if answer not in document(w, x) and answer not in QUESTIONS[kind].format(x=x):
                    break
            else:
                continue  # no such question in this world: another world
            break
        return Problem(id="", prompt=QUESTIONS[kind].format(x=x), answer=answer, task=self.task,
                       metadata={"world": {"seed": seed, "difficulty": difficulty}, "kind": kind, "entity": x,
                                 "bridge": _bridge(w, kind, x), "facts": facts, "teacher": TEACHERS[seed % 4]})

    def dedupe_key(self, problem: Problem) -> str:
        """The world: a question about another world is another problem (the same words, another
        answer), and train and held-out problems never share a world. A problem without one (read
        from an older file): its prompt."""
        world = (problem.metadata or {}).get("world")
        if isinstance(world, dict) and "seed" in world:
            return f"world {world['seed']}/{world.get('difficulty')}"
        return super().dedupe_key(problem)

    def teacher_trace(self, problem: Problem) -> str:
        """The trace of the problem's teacher (the module docstring); "none" for a problem without
        the metadata a search trace needs (one read from an older file)."""
        meta = problem.metadata
        teacher = meta.get("teacher", "none") if meta.get("bridge") else "none"
        if teacher == "none":
            return format_trace(list(meta["facts"]), problem.answer)
        env = MultihopEnvironment()  # the default settings: what the recipe's environment writes
        env.reset(problem)
        # a space before each name: the query and the answer hold the name as the question and the
        # documents do (" Varnek"), so each is a copy of the same token, not of another one
        # ("Varnek") that the model would have to pair with it name by name
        calls = [f"<search> {meta['entity']}</search>"] + ([f"<search> {meta['bridge']}</search>"] if teacher == "search" else [])
        text = "<think>\n"
        for call in calls:
            text += call + str(env.step(call).observation)
        return f"{text}</think>\n<answer> {problem.answer}</answer>"


# --- the environment ---------------------------------------------------------------------------


class WorldSearch(SearchTool):
    """The search tool over the current problem's world; the environment points it at the world's
    index when an episode starts."""

    def __init__(self, k: int = 3, max_chars_per_doc: int = 400):
        self.index, self.k, self.max_chars_per_doc = None, k, max_chars_per_doc


class MultihopEnvironment(ToolEnvironment):
    """The tool environment with one tool, search over the problem's world (call_format tags:
    `<search>query</search>`, or hermes)."""

    name = "multihop_qa"

    def __init__(self, call_format: str = "tags", max_tool_calls: int = 4, k: int = 1, **limits):
        super().__init__(tools=(), call_format=call_format, max_tool_calls=max_tool_calls,
                         tool_objects=[WorldSearch(k=k)], **limits)

    def reset(self, problem: Problem):
        world = (problem.metadata or {}).get("world")
        if not isinstance(world, dict) or not all(isinstance(world.get(k), int) for k in ("seed", "difficulty")) \
                or world["difficulty"] < 1:
            raise ConfigError(f"multihop_qa environment: problem {problem.id!r} has no metadata.world "
                              "(a multihop_qa problem names the world its question is about)")
        self.tools["search"].index = world_index(world["seed"], world["difficulty"])
        return super().reset(problem)


register_env("multihop_qa")(MultihopEnvironment)


# --- scoring: SQuAD's normalisation, exact match, token F1 -------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD's: lowercase, punctuation removed, articles a/an/the removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's token F1: the harmonic mean of the precision and recall of the normalised tokens
    (a multiset overlap); 0 when the prediction has no tokens."""
    pred, ref = normalise_answer(prediction).split(), normalise_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _answer(text: str) -> str | None:
    answer = extract_answer(text) if isinstance(text, str) else None
    return None if answer is None or len(answer) > MAX_ANSWER_CHARS else answer


@register_verifier("multihop_qa", answer_only=True)
def check_multihop(response: str, problem: Problem) -> Verdict:
    """Correct iff the answer equals the gold one after SQuAD's normalisation."""
    answer = _answer(response)
    if answer is None:
        return Verdict("unparsable", f"no <answer>...</answer> (of at most {MAX_ANSWER_CHARS} characters) in the response")
    if exact_match(answer, str(problem.answer)):
        return Verdict("correct", extracted=answer)
    return Verdict("wrong", "not the answer", answer[:300])


def _terms(problems, texts, fn) -> list[float]:
    out = []
    for p, t in zip(problems, texts):
        answer = _answer(t)
        out.append(0.0 if answer is None else fn(answer, str(p.answer)))
    return out


@register_reward("exact_match")
def exact_match_term(problems, texts, verdicts, completions=None) -> list[float]:
    """1 when the answer equals the gold answer after SQuAD's normalisation, else 0."""
    return _terms(problems, texts, exact_match)


@register_reward("token_f1")
def token_f1_term(problems, texts, verdicts, completions=None) -> list[float]:
    """SQuAD's token F1 of the answer against the gold answer, in [0, 1]; 0 without an answer."""
    return _terms(problems, texts, token_f1)
