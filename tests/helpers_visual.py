"""Hand-made scenes of the visual families and their teacher traces, shared by the tests of the
`visual_readings` reward term and of the span credit terms; the expected values there are computed
by hand from these scenes."""

from r1lab.records import Problem

# heights 5, 4, 5, 3; asked bar 2 (0-based 1), answer 4
BAR = Problem(id="bar_value-0", prompt="What is the height of bar 2 from the left?", answer="4", task="math",
              metadata={"family": "bar_value", "scene": {"heights": [5, 4, 5, 3], "bar": 1}})
# circles in cells 0, 2 (row 0), 9 (row 2) and a square in cell 5 (row 1): rows 2, 0, 1, 0; answer 3
COUNT = Problem(id="count_shapes-0", prompt="How many circles are in the picture?", answer="3", task="math",
                metadata={"family": "count_shapes", "scene": {"kind": "circle", "shapes": [
                    [0, "circle", "red", 7], [2, "circle", "blue", 11], [5, "square", "red"], [9, "circle", "green", 7]]}})
DIGITS = Problem(id="digit_sum-0", prompt="What is the sum of the digits in the picture?", answer="12", task="math",
                 metadata={"family": "digit_sum", "scene": {"digits": [3, 0, 9], "shifts": [[0, 0]] * 3}})
MATH = Problem(id="arith-0", prompt="What is 2 + 2?", answer="4", task="math", metadata={"family": "arith"})

BAR_TEACHER = "<think>From left to right: bar 1 is 5, bar 2 is 4.\nSo bar 2 is 4.</think>\n<answer>4</answer>"
COUNT_TEACHER = ("<think>I count the circles in each row: row 1 has 2, row 2 has 0, row 3 has 1, row 4 has 0.\n"
                 "2 + 0 + 1 + 0 = 3</think>\n<answer>3</answer>")
