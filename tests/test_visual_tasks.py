"""The visual task families: pictures that show the answer (read back from the pixels by code
independent of the renderer), held-out splits, exact verification of teacher traces and of hostile
answers."""

from __future__ import annotations

import pytest

from r1lab.images import decode_image
from r1lab.tasks import generate_splits, get_task
from r1lab.tasks.visual import DIGIT_ROWS, DOT, SIZE
from r1lab.verify.batch import verify_batch

FAMILIES = ("count_shapes", "bar_value", "digit_sum")


def _ink(img, x: int, y: int) -> bool:
    return img.getpixel((x, y)) != (255, 255, 255)


def _count_filled_cells(img) -> int:
    return sum(any(_ink(img, cx * 16 + x, cy * 16 + y) for x in range(16) for y in range(16))
               for cx in range(4) for cy in range(4))


def _bar_height(img, bars: int, which: int) -> int:
    x = which * (SIZE // bars) + SIZE // bars // 2
    blue = sum(1 for y in range(SIZE) if img.getpixel((x, y)) == (40, 80, 220))
    return round(blue / ((SIZE - 4) // 9))


def _read_digits(img, count: int) -> list[int]:
    slot, glyphs = SIZE // count, {rows: d for d, rows in DIGIT_ROWS.items()}
    out = []
    for i in range(count):
        x0, y0 = i * slot + (slot - 3 * DOT) // 2, (SIZE - 5 * DOT) // 2
        rows = tuple("".join("1" if _ink(img, x0 + c * DOT + 1, y0 + r * DOT + 1) else "0" for c in range(3)) for r in range(5))
        out.append(glyphs[rows])
    return out


def test_pictures_show_the_answer():
    shapes, _ = generate_splits(["count_shapes"], 40, 0, 1, seed=3)  # difficulty 1: every shape is a circle
    for p in shapes:
        assert _count_filled_cells(decode_image(p.images[0])) == int(p.answer)
    bars, _ = generate_splits(["bar_value"], 40, 0, 2, seed=3)
    for p in bars:
        scene = p.metadata["scene"]
        assert _bar_height(decode_image(p.images[0]), len(scene["heights"]), scene["bar"]) == int(p.answer)
    digits, _ = generate_splits(["digit_sum"], 40, 0, 1, seed=3)
    for p in digits:
        assert sum(_read_digits(decode_image(p.images[0]), 3)) == int(p.answer)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_splits_are_disjoint_deterministic_and_rendered_from_their_scene(family, difficulty):
    train, held = generate_splits([family], 60, 20, difficulty, seed=5)
    fam = get_task(family)
    assert not {fam.dedupe_key(p) for p in train} & {fam.dedupe_key(p) for p in held}
    assert not {p.images[0] for p in train} & {p.images[0] for p in held}  # no held-out picture in training
    again, _ = generate_splits([family], 60, 20, difficulty, seed=5)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in train]
    for p in train[:5]:
        assert decode_image(p.images[0]).size == (SIZE, SIZE)
        assert fam.render(p.metadata["scene"]) == p.images[0]


def test_count_trace_reads_the_rows_the_picture_shows():
    # row by row, each count named by its row ("row 2 has 0"), then their sum
    fam = get_task("count_shapes")
    for p in generate_splits(["count_shapes"], 30, 0, 1, seed=4)[0]:
        img = decode_image(p.images[0])
        rows = [sum(any(_ink(img, cx * 16 + x, cy * 16 + y) for x in range(16) for y in range(16)) for cx in range(4))
                for cy in range(4)]
        trace = fam.teacher_trace(p)
        assert "each row: " + ", ".join(f"row {r + 1} has {n}" for r, n in enumerate(rows)) + ".\n" in trace
        assert f"{' + '.join(map(str, rows))} = {p.answer}</think>" in trace


def test_bar_trace_names_the_bars_up_to_the_asked_one_and_repeats_its_height():
    # "bar i is h" for bars 1..k, then the asked bar's reading repeated just after it
    fam = get_task("bar_value")
    for p in generate_splits(["bar_value"], 30, 0, 2, seed=4)[0]:
        img, scene = decode_image(p.images[0]), p.metadata["scene"]
        bars, k = len(scene["heights"]), scene["bar"] + 1
        seen = [_bar_height(img, bars, i) for i in range(bars)]
        trace = fam.teacher_trace(p)
        assert "From left to right: " + ", ".join(f"bar {i + 1} is {h}" for i, h in enumerate(seen[:k])) + ".\n" in trace
        assert f"So bar {k} is {seen[k - 1]}.</think>\n<answer>{p.answer}</answer>" in trace


def test_teacher_traces_verify_and_hostile_answers_do_not():
    problems = [p for f in FAMILIES for p in generate_splits([f], 6, 0, 2, seed=1)[0]]
    traces = [get_task(p.metadata["family"]).teacher_trace(p) for p in problems]
    assert all(v.correct for v in verify_batch(problems, traces, workers=0))
    p = problems[0]
    n = int(p.answer)
    hostile = [f"<think>x</think>\n<answer>{n} or {n + 1}</answer>", f"<answer>{n + 1}</answer>", "<answer></answer>",
               "", "<answer>" + "9" * 5000 + "</answer>", "\x00" * 50, f"<answer>{n}/0</answer>",
               f"<answer>{n}</answer><answer>{n + 1}</answer>"]
    verdicts = verify_batch([p] * len(hostile), hostile, workers=0)
    assert not any(v.correct for v in verdicts), [(h[:30], v) for h, v in zip(hostile, verdicts)]


def test_difficulty_below_one_is_refused():
    from r1lab.errors import ConfigError

    with pytest.raises(ConfigError, match="difficulty must be an integer >= 1"):
        generate_splits(["digit_sum"], 4, 0, 0, seed=0)
