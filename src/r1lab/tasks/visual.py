"""Visual task families: the question is text, the facts are only in a picture rendered offline with
Pillow, and the answer is a number the "math" verifier checks exactly.

- `count_shapes`: how many circles (squares, triangles) a picture holds. Shapes sit in the cells of
  a 4 x 4 grid (one per cell, so none overlap and the count is well defined), each in a colour
  drawn from four. Difficulty 1: 1-3 circles of two sizes and nothing else (one layout of one circle
  has 8 pictures, so the held-out answers are not mostly 3); 2: 1-4 of the asked kind among up to 3
  of one other kind; 3 and up: 1-6 of the asked kind among up to 4 of the two others.
- `bar_value`: the height of the k-th bar from the left of a bar chart with gridlines at every unit.
  Difficulty 1: 4 bars of heights 1..5; 2: 4 bars, 1..7; 3 and up: 5 bars, 1..9.
- `digit_sum`: the sum of the digits drawn in the picture (a fixed 3 x 5 dot font, scaled up, so the
  glyphs are the same on every machine and need no font file). Difficulty 1: 3 digits at fixed
  slots; 2: 3 digits, each shifted by up to 3 px across and 6 px down or up; 3 and up: 4 shifted digits.

Reward term, registered here: `visual_readings` pays the share of the picture's quantities a
response reads right (see `readings_score`), so GRPO can credit a right reading even when the
answer is wrong, and does not let the readings drift while it pays only the answer. Span credit
term, registered here under the same name: `reading_spans` lists each reading where it is written,
so `reward.token_credit: {visual_readings: c}` pays the tokens of each reading, not the response.

Every picture is SIZE x SIZE RGB; the scene (what was drawn, where) is kept in metadata["scene"]:
it is what the teacher trace reads, and its picture part is what makes two problems the same
(`dedupe_key`), so no held-out picture appears in training, whatever question it is asked with.
"""

from __future__ import annotations

import json
import random
import re

from r1lab.images import png_bytes, to_data_url
from r1lab.records import Problem
from r1lab.reward_registry import Span, register_reward, register_span_credit
from r1lab.tasks.base import TaskFamily, format_trace, register_task

SIZE = 64  # pixels a side: 4 x 4 cells of 16 px, one merged vision token each in the tiny VLM
CELL = SIZE // 4
SIZES = (7, 11)  # the two circle diameters of count_shapes at difficulty 1, in pixels
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (30, 160, 60), "orange": (240, 140, 20)}
KINDS = ("circle", "square", "triangle")
# a 3 x 5 dot font: each digit is 5 rows of 3 bits, top row first
DIGIT_ROWS = {
    0: ("111", "101", "101", "101", "111"), 1: ("010", "110", "010", "010", "111"),
    2: ("111", "001", "111", "100", "111"), 3: ("111", "001", "111", "001", "111"),
    4: ("101", "101", "111", "001", "001"), 5: ("111", "100", "111", "001", "111"),
    6: ("111", "100", "111", "101", "111"), 7: ("111", "001", "010", "010", "010"),
    8: ("111", "101", "111", "101", "111"), 9: ("111", "101", "111", "001", "111"),
}
DOT = 3  # pixels per font dot: a digit is 9 x 15 px


def _canvas():
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    return img, ImageDraw.Draw(img)


def _picture(img) -> str:
    return to_data_url(png_bytes(img))


class VisualFamily(TaskFamily):
    task = "math"

    def render(self, scene: dict) -> str:
        """The picture of a scene, as the PNG data URL a Problem keeps."""
        raise NotImplementedError

    picture_keys: tuple[str, ...] = ()  # the scene entries that decide the picture

    def dedupe_key(self, problem: Problem) -> str:
        # the picture alone: a held-out problem never shows a picture seen in training, whatever it asks of it
        scene = problem.metadata["scene"]
        return json.dumps({k: scene[k] for k in self.picture_keys}, sort_keys=True)

    def _problem(self, question: str, answer: int, scene: dict) -> Problem:
        return Problem(id="", prompt=question, answer=str(answer), task=self.task, metadata={"scene": scene},
                       images=[self.render(scene)])


@register_task("count_shapes")
class CountShapes(VisualFamily):
    picture_keys = ("shapes",)

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        kind = "circle" if difficulty == 1 else rng.choice(KINDS)
        others = [k for k in KINDS if k != kind][: 0 if difficulty == 1 else 1 if difficulty == 2 else 2]
        n = rng.randint(1, 3 if difficulty == 1 else 4 if difficulty == 2 else 6)
        n_other = rng.randint(0, 3 if difficulty == 2 else 4) if others else 0
        cells = rng.sample(range(16), n + n_other)
        colour = lambda: rng.choice(sorted(COLOURS))  # noqa: E731
        shapes = [[cell, kind, colour()] for cell in cells[:n]] + [[cell, rng.choice(others), colour()] for cell in cells[n:]]
        if difficulty == 1:  # circles of two sizes: more distinct pictures of one or two circles
            shapes = [shape + [rng.choice(SIZES)] for shape in shapes]
        shapes.sort()
        return self._problem(f"How many {kind}s are in the picture?", n, {"kind": kind, "shapes": shapes})

    def render(self, scene: dict) -> str:
        img, draw = _canvas()
        for cell, kind, colour, *size in scene["shapes"]:
            side = size[0] if size else CELL - 5
            x, y = (cell % 4) * CELL + (CELL - side) // 2, (cell // 4) * CELL + (CELL - side) // 2
            box, fill = (x, y, x + side, y + side), COLOURS[colour]
            if kind == "circle":
                draw.ellipse(box, fill=fill)
            elif kind == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=fill)
        return _picture(img)

    def teacher_trace(self, problem: Problem) -> str:
        # row by row, each count named by its row ("row 2 has 0") as the bars are named: every reading
        # looks at one row of the picture (one row of image tokens), where a list of cells would scan
        scene = problem.metadata["scene"]
        rows = [sum(1 for cell, kind, *_ in scene["shapes"] if kind == scene["kind"] and cell // 4 == r) for r in range(4)]
        steps = [f"I count the {scene['kind']}s in each row: " + ", ".join(f"row {r + 1} has {n}" for r, n in enumerate(rows)) + ".",
                 " + ".join(map(str, rows)) + f" = {sum(rows)}"]
        return format_trace(steps, str(sum(rows)))


@register_task("bar_value")
class BarValue(VisualFamily):
    picture_keys = ("heights",)

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        bars = 4 if difficulty < 3 else 5
        top = min(3 + 2 * difficulty, 9)
        heights = [rng.randint(1, top) for _ in range(bars)]
        which = rng.randrange(bars)
        return self._problem(f"What is the height of bar {which + 1} from the left?", heights[which],
                             {"heights": heights, "bar": which})

    def render(self, scene: dict) -> str:
        img, draw = _canvas()
        unit = (SIZE - 4) // 9  # 9 units of 6 px fill the picture
        base = SIZE - 2
        for level in range(1, 10):  # gridlines at every unit
            draw.line((0, base - level * unit, SIZE - 1, base - level * unit), fill=(200, 200, 200))
        width = SIZE // len(scene["heights"])
        for i, h in enumerate(scene["heights"]):
            draw.rectangle((i * width + 3, base - h * unit, (i + 1) * width - 4, base), fill=COLOURS["blue"])
        draw.line((0, base, SIZE - 1, base), fill=(0, 0, 0))
        return _picture(img)

    def teacher_trace(self, problem: Problem) -> str:
        # bars read from the left, each named, up to the asked one, whose height the answer repeats:
        # the answer copies the reading just before it, where a small model does not look a named
        # reading up further back (BENCHMARKS.md, multimodal round 6)
        scene = problem.metadata["scene"]
        heights, which = scene["heights"], scene["bar"]
        steps = ["From left to right: " + ", ".join(f"bar {i + 1} is {h}" for i, h in enumerate(heights[: which + 1])) + ".",
                 f"So bar {which + 1} is {heights[which]}."]
        return format_trace(steps, str(heights[which]))


@register_task("digit_sum")
class DigitSum(VisualFamily):
    picture_keys = ("digits", "shifts")

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        digits = [rng.randint(0, 9) for _ in range(3 if difficulty < 3 else 4)]
        shifts = [[rng.randint(-3, 3), rng.randint(-6, 6)] if difficulty > 1 else [0, 0] for _ in digits]
        return self._problem("What is the sum of the digits in the picture?", sum(digits),
                             {"digits": digits, "shifts": shifts})

    def render(self, scene: dict) -> str:
        img, draw = _canvas()
        slot = SIZE // len(scene["digits"])
        for i, (d, (dx, dy)) in enumerate(zip(scene["digits"], scene["shifts"])):
            x0 = i * slot + (slot - 3 * DOT) // 2 + dx
            y0 = (SIZE - 5 * DOT) // 2 + dy
            for r, row in enumerate(DIGIT_ROWS[d]):
                for c, bit in enumerate(row):
                    if bit == "1":
                        draw.rectangle((x0 + c * DOT, y0 + r * DOT, x0 + (c + 1) * DOT - 1, y0 + (r + 1) * DOT - 1), fill=(0, 0, 0))
        return _picture(img)

    def teacher_trace(self, problem: Problem) -> str:
        digits = problem.metadata["scene"]["digits"]
        steps = ["The digits are " + ", ".join(map(str, digits)) + ".",
                 " + ".join(map(str, digits)) + f" = {sum(digits)}"]
        return format_trace(steps, str(sum(digits)))


# --------------------------------------------------------------------------------------------
# the readings reward

_BAR = re.compile(r"\bbar (\d+) is (\d+)\b", re.IGNORECASE)
_ROW = re.compile(r"\brow (\d+) has (\d+)\b", re.IGNORECASE)
_DIGITS = re.compile(r"\bThe digits are (\d(?:, \d)*)\.")


def picture_items(problem: Problem) -> list[int] | None:
    """The quantities a teacher trace reads off the picture, in its order: the heights of the bars
    up to the asked one, from the left (bar_value), the asked kind's count per row, top row first
    (count_shapes), the digits (digit_sum); None for a problem of any other family."""
    scene = (problem.metadata or {}).get("scene")
    fam = (problem.metadata or {}).get("family")
    if not scene:
        return None
    if fam == "bar_value":
        return list(scene["heights"][: scene["bar"] + 1])
    if fam == "count_shapes":
        return [sum(1 for cell, kind, *_ in scene["shapes"] if kind == scene["kind"] and cell // 4 == r) for r in range(4)]
    if fam == "digit_sum":
        return list(scene["digits"])
    return None


def readings_score(problem: Problem, text: str) -> float:
    """The share of the picture's items the response reads right, in [0, 1]; 0 without readings.

    An item is read right when the response gives it exactly one value and that value is the
    truth; the answer is not looked at. Per family:
    - bar_value: the items are the bars up to the asked one (what the teacher reads). Every `bar K is
      H` anywhere in the response claims H for bar K; bar K is right when all its claims give the one
      true height (the teacher repeats the asked one, "So bar 2 is 4.": the same value twice is one
      reading); two different heights for bar K is a guess and gets nothing. Claims for other bars
      (past the asked one, or not in the chart) are ignored.
    - count_shapes: every `row R has N` claims N for row R, paid as the bars are (rows 1-4).
    - digit_sum: the one `The digits are a, b, c.` list; digit i is right when its i-th entry is the
      truth. Entries past the last digit get nothing; two lists get 0.
    The score is (items right) / (items), so listing extra or repeated guesses never
    pays more than listing the right values once. Any other family: 0 (the term is absent there).
    Caveat (measured in round 5, BENCHMARKS.md): where most items share one value the share pays
    that prior; at count_shapes difficulty 1 most rows hold no circle, so claiming 0 for every row
    is paid 0.56 on average over held-out problems.
    """
    truth = picture_items(problem)
    if not truth:
        return 0.0
    # the claims of `reading_spans`, by item: an item is right when it has claims and every one is true
    claims: dict[str, list[float]] = {}
    for span in reading_spans(problem, text):
        claims.setdefault(span.key, []).append(span.value)
    return sum(1 for values in claims.values() if all(v == 1.0 for v in values)) / len(truth)


def reading_spans(problem: Problem, text: str) -> list[Span]:
    """Each reading of the picture in the response, where its value is written, keyed by the item
    it reads and valued 1.0 when true, 0.0 when not (the span credit of reward.token_credit:
    algos/credit.py). bar_value / count_shapes: every `bar K is H` / `row R has N` for an item of the
    picture (bars past the asked one, rows past the fourth: no claim); a repeat of the same reading
    is a second claim, and spraying guesses for one item makes one right claim and many wrong ones.
    digit_sum: the entries of the `The digits are ...` list, by position; with two lists, every
    entry is valued 0 (two guesses). Other families: none. `readings_score` is built on these claims."""
    truth = picture_items(problem)
    if not truth:
        return []
    fam = problem.metadata["family"]
    spans = []
    if fam in ("bar_value", "count_shapes"):
        for m in (_BAR if fam == "bar_value" else _ROW).finditer(text):
            k = int(m.group(1))
            if 1 <= k <= len(truth):
                spans.append(Span(m.start(2), m.end(2), str(k), float(int(m.group(2)) == truth[k - 1])))
        return spans
    lists = list(_DIGITS.finditer(text))
    for m in lists:
        for i, d in enumerate(re.finditer(r"\d", m.group(1))):
            if i < len(truth):
                right = len(lists) == 1 and int(d.group()) == truth[i]
                spans.append(Span(m.start(1) + d.start(), m.start(1) + d.end(), str(i + 1), float(right)))
    return spans


register_span_credit("visual_readings")(reading_spans)

_SUM = re.compile(r"\b(\d+(?: \+ \d+)+) = (\d+)\b")


@register_span_credit("visual_steps")
def step_spans(problem: Problem, text: str) -> list[Span]:
    """Every step of a visual trace checked where it is written: the readings (`reading_spans`,
    against the picture), and for count_shapes and digit_sum the sum line (`2 + 0 + 1 + 0 = 3`)
    against the response's own readings - term i (key `copy i`) is right when it is the one value
    the response read for item i (none read, two read, or a term past the items: wrong), the result
    (key `total`) when it is the sum of the terms as written. So a wrong reading copied faithfully
    costs only the reading, and a right reading miscopied costs only the copy. Other families: the
    readings only."""
    spans = reading_spans(problem, text)
    if (problem.metadata or {}).get("family") not in ("count_shapes", "digit_sum") or not spans:
        return spans
    read: dict[str, set[str]] = {}
    for sp in spans:
        read.setdefault(sp.key, set()).add(text[sp.start:sp.end])
    out = list(spans)
    for m in _SUM.finditer(text):
        terms = list(re.finditer(r"\d+", m.group(1)))
        for i, t in enumerate(terms):
            right = read.get(str(i + 1), set()) == {t.group()}
            out.append(Span(m.start(1) + t.start(), m.start(1) + t.end(), f"copy {i + 1}", float(right)))
        out.append(Span(m.start(2), m.end(2), "total", float(int(m.group(2)) == sum(int(t.group()) for t in terms))))
    return out


@register_reward("visual_readings")
def visual_readings(problems, texts, verdicts, completions=None) -> list[float]:
    """Per response, the share of its picture's quantities it reads right (`readings_score`);
    0 for problems that are not of a visual family."""
    return [readings_score(p, t) for p, t in zip(problems, texts)]
