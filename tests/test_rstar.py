"""rStar-Math: UCT selection and back-up on a fixed tree, the PPM's pairwise loss (hand-computed,
float64), the step format on adversarial model output (the sandbox contains it), teacher traces,
the PPM's save/load and scoring, and one tiny self-evolution round end to end."""

import json
import math
from pathlib import Path

import pytest
import torch

from r1lab.algos.mcts import backup, node_q, ppm_pairwise_loss, select_child, uct_score
from r1lab.records import Completion, Problem
from r1lab.rollout.base import Engine
from r1lab.tasks import generate_splits
from r1lab.tasks.steps import (
    STEP_END,
    StepRunner,
    answer_step,
    code_step,
    parse_step,
    split_steps,
    step_result,
    step_trace,
)
from r1lab.train.mcts import MCTS, SearchSettings, Tree, best_trajectories, preference_pairs, tree_stats
from r1lab.verify import verify_batch

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "rstar_math.yaml")

# --- selection and back-up on a fixed tree ----------------------------------------------------------
#
#            root (N=10, W=2)
#           /        |        \
#      a (N=6, W=4)  b (N=3, W=-1)  c (N=1, W=-1)       W = sum of backed-up returns
#
# Q = W / N: a 0.6667, b -0.3333, c -1. With c = 2 and ln 10 = 2.302585092994046:
#   a: 0.666667 + 2 * sqrt(2.302585 / 6) = 0.666667 + 1.238974 = 1.905641
#   b: -0.333333 + 2 * sqrt(2.302585 / 3) = -0.333333 + 1.752174 = 1.418841
#   c: -1 + 2 * sqrt(2.302585 / 1) = -1 + 3.034854 = 2.034854   -> c is selected


def test_uct_scores_on_a_fixed_tree_match_hand_computation():
    ln10 = 2.302585092994046
    assert uct_score(4 / 6, 6, 10, 2.0) == pytest.approx(4 / 6 + 2 * math.sqrt(ln10 / 6), abs=1e-12)
    assert uct_score(4 / 6, 6, 10, 2.0) == pytest.approx(1.905641, abs=1e-6)
    assert uct_score(-1 / 3, 3, 10, 2.0) == pytest.approx(1.418841, abs=1e-6)
    assert uct_score(-1.0, 1, 10, 2.0) == pytest.approx(2.034854, abs=1e-6)
    assert select_child([4 / 6, -1 / 3, -1.0], [6, 3, 1], 10, 2.0) == 2
    # with little exploration the best mean wins: c = 0.5 -> a 0.976410, b 0.104710, c -0.241286
    assert uct_score(-1 / 3, 3, 10, 0.5) == pytest.approx(0.104710, abs=1e-6)
    assert select_child([4 / 6, -1 / 3, -1.0], [6, 3, 1], 10, 0.5) == 0
    assert uct_score(0.3, 0, 10, 2.0) == math.inf


def test_unvisited_children_go_first_ordered_by_prior():
    assert select_child([0.9, 0.0, 0.0], [5, 0, 0], 5, 2.0, priors=[0.0, -0.2, 0.4]) == 2
    assert select_child([0.0, 0.0], [0, 0], 0, 2.0) == 0  # ties: the earlier child


def test_node_q_is_the_mean_of_returns_with_the_prior_as_extra_returns():
    assert node_q(4.0, 6) == pytest.approx(4 / 6)
    assert node_q(0.0, 0) == 0.0
    # prior 0.5 counted as one return: (1 * 0.5 + (-1)) / (1 + 1) = -0.25
    assert node_q(-1.0, 1, prior=0.5, prior_weight=1.0) == pytest.approx(-0.25)
    assert node_q(0.0, 0, prior=0.5, prior_weight=1.0) == pytest.approx(0.5)


def test_backup_adds_one_visit_and_the_reward_along_the_path():
    visits, sums = backup([10, 1], [2.0, -1.0], 1.0)  # root -> c, a correct terminal under c
    assert visits == [11, 2] and sums == [3.0, 0.0]
    assert node_q(sums[1], visits[1]) == 0.0
    # c now: 0 + 2 * sqrt(ln 11 / 2) = 2 * sqrt(2.397895 / 2) = 2.189929
    assert uct_score(0.0, 2, 11, 2.0) == pytest.approx(2.189929, abs=1e-6)
    with pytest.raises(ValueError):
        backup([1, 2], [0.0], 1.0)


def test_ppm_pairwise_loss_matches_float64_hand_values():
    pos = torch.tensor([0.5, -0.2, 3.0, 0.0], dtype=torch.float64)
    neg = torch.tensor([-0.5, 0.3, -40.0, 0.0], dtype=torch.float64)
    # -log sigmoid(d) = log(1 + exp(-d)): d = 1 -> 0.313262; d = -0.5 -> 0.974077; d = 43 -> 2.1e-19; 0 -> ln 2
    expected = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5)), math.log1p(math.exp(-43.0)), math.log(2)]
    got = ppm_pairwise_loss(pos, neg)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert got[0].item() == pytest.approx(0.3132616875182228, abs=1e-15)
    big = ppm_pairwise_loss(torch.tensor([-500.0]), torch.tensor([500.0]))  # finite, not inf
    assert big.item() == pytest.approx(1000.0)


def test_ppm_loss_gradient_pushes_the_scores_apart():
    pos = torch.tensor([0.1], dtype=torch.float64, requires_grad=True)
    neg = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    ppm_pairwise_loss(pos, neg).sum().backward()
    # d = pos - neg = -0.2; d loss / d pos = -(1 - sigmoid(d)) = -sigmoid(0.2) = -0.549834
    assert pos.grad.item() == pytest.approx(-0.549834, abs=1e-6)
    assert neg.grad.item() == pytest.approx(0.549834, abs=1e-6)


# --- the step format ----------------------------------------------------------------------------------


def test_parse_step_accepts_exactly_one_step():
    assert parse_step(code_step("add 7 and 3", "print(7 + 3)")).code == "print(7 + 3)"
    assert parse_step(answer_step("10")).answer == "10"
    bad = [
        "add 7 and 3",  # no code
        "add 7 and 3\n```python\nprint(7 + 3)\n",  # cut off before the fence closes
        "two\nlines\n```python\nprint(1)" + STEP_END,  # thought of two lines
        "x\n```python\n\n" + STEP_END,  # empty code
        "x\n```python\n" + "print(1)\n" * 200 + "```\n",  # overlong code
        "</think>\n<answer>1</answer> and more",  # text after the answer
        "x\n```python\nprint(1)\n```\n```python\nprint(2)" + STEP_END,  # two blocks
        None,
    ]
    for text in bad:
        assert parse_step(text) is None, text
    import time

    t0 = time.time()  # megabytes of output without a closing fence are refused in linear time
    assert parse_step("x\n```python\n" + "print(1)\n" * 200_000) is None
    assert parse_step("\n" * 10**6 + answer_step("1")) is None
    assert time.time() - t0 < 2


def test_step_result_is_the_last_line_the_step_printed():
    assert step_result("10\n40\n", "10\n").result == "40"
    assert step_result("10\n40\nfoo  \n\n", "10\n").result == "foo"
    assert not step_result("10\n", "10\n").ok  # printed nothing of its own
    assert not step_result("10\n" + "9" * 100 + "\n", "10\n").ok


@pytest.mark.parametrize("family", ["arithmetic", "countdown"])
def test_teacher_step_traces_verify_and_split_into_steps(family):
    train, _ = generate_splits([family], 30, 1, 3, 7)
    texts = [step_trace(p) for p in train]
    assert all(v.correct for v in verify_batch(train, texts, workers=0))
    runner = StepRunner(workers=2)
    for p, text in zip(train[:3], texts[:3]):
        parts = split_steps(text)
        assert "<think>" + "".join(parts) == text
        assert parts[-1].startswith("</think>\n<answer>")
        program, stdout = "", ""
        for part in parts[:-1]:  # every code step, run in the sandbox, prints the result the trace shows
            gen, shown = part.rsplit(">>> ", 1)
            step = parse_step(gen)
            program += step.code + "\n"
            (r,) = runner.run([(program, stdout)])
            assert r.ok and r.result == shown.strip(), (p.prompt, part, r)
            stdout = r.stdout


def test_step_trace_refuses_families_without_a_teacher():
    with pytest.raises(ValueError, match="no step-format teacher"):
        step_trace(Problem(id="k", prompt="Who is a knight?", answer="x", metadata={"family": "knights"}))


def test_hostile_step_code_is_contained_by_the_sandbox():
    """Code that tries to escape, loops forever, floods its output, eats memory or forks is
    dropped (ok=False) within its limits; the runner never raises and the host is untouched."""
    import os
    import tempfile
    import time

    target = os.path.join(tempfile.gettempdir(), "r1lab-rstar-escape-probe")
    if os.path.exists(target):
        os.remove(target)
    hostile = [
        "while True:\n    pass",
        "print('x' * 10**7)",
        "while True:\n    print('flood' * 1000)",
        f"open({target!r}, 'w').write('pwned')\nprint(1)",
        "import os\nos.system('echo hi')\nprint(1)",
        "import socket\nsocket.create_connection(('1.1.1.1', 80))\nprint(1)",
        "import os\nos.kill(os.getppid(), 9)\nprint(1)",
        "x = bytearray(2 * 1024**3)\nprint(1)",
        "import subprocess\nprint(subprocess.run(['ls'], capture_output=True).stdout)",
        "raise SystemExit(0)",
        "1/0",
    ]
    runner = StepRunner(timeout=1.0, memory_mb=128, max_output=10_000, workers=2)
    t0 = time.time()
    results = runner.run([(code, "") for code in hostile])
    assert time.time() - t0 < 60
    for code, r in zip(hostile, results):
        assert not r.ok, (code, r)
    assert not os.path.exists(target)
    assert runner.run([("print(6 * 7)", "")])[0].result == "42"


# --- the search ----------------------------------------------------------------------------------------


class ScriptedEngine(Engine):
    """For each prompt, the next text of the script keyed by the prompt's last result line (None
    before the first step), cycling through its options."""

    continues_ids = True

    def __init__(self, tok, scripts):
        self.tok, self.scripts, self.calls = tok, scripts, 0

    def generate_ids(self, prompts, params, seed=None, on_batch=None):
        self.calls += 1
        assert params.stop == ("\n```\n", "</answer>")
        out = []
        for i, ids in enumerate(prompts):
            text = self.tok.decode(ids)
            last = text.rsplit(">>> ", 1)[1].split("\n")[0] if ">>> " in text else None
            options = self.scripts.get(last, self.scripts[None])
            out.append(Completion(str(i), list(ids), [], options[(self.calls + i) % len(options)], [], "stop"))
        return out


def test_mcts_on_a_scripted_policy_builds_values_pairs_and_trajectories(tiny):
    _, tok = tiny
    problem = Problem(id="p", prompt="Compute (7 + 3) * 4.", answer="40", task="math", metadata={"family": "arithmetic"})
    scripts = {  # the right first step leads to 40 (or a wrong answer), the wrong one only to 36
        None: [code_step("add 7 and 3", "print(7 + 3)"), code_step("add 7 and 2", "print(7 + 2)"),
               code_step("oops", "print(undefined_name)"), "no code here",
               code_step("loop", "while True:\n    pass"), code_step("flood", "print('x' * 10**6)")],
        "10": [answer_step("40"), answer_step("41"), code_step("multiply 10 and 4", "print(10 * 4)")],
        "9": [answer_step("36"), code_step("multiply 9 and 4", "print(9 * 4)")],
        "40": [answer_step("40")],
        "36": [answer_step("36")],
    }
    engine = ScriptedEngine(tok, scripts)
    settings = SearchSettings(rollouts=6, candidates=6, max_depth=3, c=2.0, verify_workers=0)
    mcts = MCTS(engine, tok, StepRunner(timeout=0.5, workers=2), settings)
    tree = Tree(problem)
    mcts.search([tree])
    root = tree.nodes[0]
    assert root.visits == 6 and root.expanded
    assert mcts.stats.code_failed >= 3 and mcts.stats.unparsable >= 1  # name error, endless loop, flood
    assert all("while True" not in n.step and "10**6" not in n.step for n in tree.nodes)
    # every node's visits = sum over its children's visits (+1 per rollout that ended there)
    for n in tree.nodes:
        if n.children and not n.terminal:
            assert n.visits == sum(tree.nodes[k].visits for k in n.children)
    assert abs(root.value_sum) <= 6
    stats = tree_stats([tree])
    assert stats["search/answers"] >= 2 and 0 < stats["search/terminal_correct_rate"] < 1
    assert stats["search/solved_rate"] == 1.0
    best = best_trajectories(tree, 2)
    assert best and all(verify_batch([problem] * len(best), [t for t, _ in best], workers=0)[i].correct
                        for i in range(len(best)))
    assert best[0][0].startswith("<think>add") and ">>> 10\n" in best[0][0]
    pairs = preference_pairs(tree, 2)
    assert pairs and all(p["q_pos"] > 0 > p["q_neg"] for p in pairs)
    assert any(">>> 10" in p["pos"] and ">>> 9" in p["neg"] for p in pairs)  # the first steps are ranked
    assert all(p["pos"] != p["neg"] for p in pairs)


def test_a_node_without_room_or_candidates_is_a_losing_terminal(tiny):
    _, tok = tiny
    problem = Problem(id="p", prompt="Compute 1 + 1.", answer="2", task="math")
    engine = ScriptedEngine(tok, {None: ["garbage"]})
    mcts = MCTS(engine, tok, StepRunner(), SearchSettings(rollouts=2, candidates=2, verify_workers=0))
    tree = Tree(problem)
    mcts.search([tree])
    assert tree.nodes[0].terminal and tree.nodes[0].reward == -1 and tree.nodes[0].visits == 2
    short = MCTS(engine, tok, StepRunner(), SearchSettings(rollouts=1, max_positions=8, verify_workers=0))
    tree = Tree(problem)
    short.search([tree])
    assert short.stats.no_room == 1 and tree.nodes[0].terminal


# --- the PPM --------------------------------------------------------------------------------------------


def test_ppm_scores_saves_loads_and_learns_a_pair(tiny, tmp_path):
    from r1lab.train.ppm import ProcessPreferenceModel, pairwise_accuracy, train_ppm

    model, tok = tiny
    ppm = ProcessPreferenceModel.from_policy(model, tok)
    prompts = ["Compute 7 + 3.", "Compute 7 + 3."]
    partials = ["<think>add 7 and 3\n```python\nprint(7 + 3)\n```\n>>> 10\n", "<think>add 7 and 2\n"]
    assert ppm.score(prompts, partials) == [0.0, 0.0]  # zero head: every partial starts equal
    pairs = [{"prompt": prompts[0], "pos": partials[0], "neg": partials[1]}] * 4
    stats = train_ppm(ppm, pairs, lr=1e-2, epochs=5, batch_size=2, show_progress=False)
    assert math.isfinite(stats["ppm/loss"]) and pairwise_accuracy(ppm, pairs) == 1.0
    scores = ppm.score(prompts, partials)
    assert all(-1 <= s <= 1 for s in scores) and scores[0] > scores[1]
    ppm.save(tmp_path / "ppm")
    again = ProcessPreferenceModel.load(tmp_path / "ppm")
    assert again.score(prompts, partials) == pytest.approx(scores, abs=1e-5)
    info = json.loads((tmp_path / "ppm" / "scorer.json").read_text())
    assert info["kind"] == "rstar_ppm" and info["format"] == "r1lab-ppm/1"
    from r1lab.eval.scorers import load_scorer  # what `r1lab eval --search --prm DIR` loads

    scorer = load_scorer(tmp_path / "ppm", agg="sum", delimiter="\n")
    assert isinstance(scorer, ProcessPreferenceModel)
    assert scorer.score(prompts, partials) == pytest.approx(scores, abs=1e-5)


def test_ppm_load_names_what_is_wrong(tmp_path):
    from r1lab.errors import ModelError
    from r1lab.train.ppm import ProcessPreferenceModel

    with pytest.raises(ModelError, match="no scorer.json"):
        ProcessPreferenceModel.load(tmp_path)
    (tmp_path / "scorer.json").write_text('{"kind": "rstar_ppm", "format": "other"}')
    with pytest.raises(ModelError, match="format 'other'"):
        ProcessPreferenceModel.load(tmp_path)


# --- one tiny round end to end ---------------------------------------------------------------------------


RESUME_SETTINGS = [  # the smallest run whose warm start finds correct trajectories: round 2 is PPM-guided
    "data.train_size=400", "data.sft_size=600", "data.eval_size=4", "sft.epochs=4", "eval.n=1", "eval.ks=[1]",
    "reward.verify_workers=1", "rstar.rounds=2", "rstar.problems_per_round=12", "rstar.rollouts=4",
    "rstar.candidates=3", "rstar.max_depth=3", "rstar.ppm_epochs=1", "rstar.sft_epochs=1", "rstar.ppm_heldout=0.25"]


@pytest.mark.slow
def test_tiny_rstar_rounds_complete_and_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    """Three rounds end to end (the report, plot, checkpoints); then the run as an interruption
    during round 2 leaves it (round 2's marker and metrics line gone, its files half there),
    resumed: round 2, PPM-guided from round 1's checkpoints, logs and saves what the uninterrupted run did."""
    import shutil

    from safetensors.torch import load_file

    from r1lab.config import load_config
    from r1lab.rstar import run_rstar

    quiet = lambda *_: None  # noqa: E731
    history = run_rstar(load_config(RECIPE, [f"out_dir={tmp_path}", "name=r"] + RESUME_SETTINGS),
                        show_progress=False, log=quiet)
    assert [h["round"] for h in history] == [0, 1, 2]
    r1 = history[1]
    assert r1["search/problems"] == 12 and r1["search/nodes"] >= 12 and r1["search/expansions"] >= 12
    assert r1["search/candidates"] == 3 * r1["search/expansions"]
    assert 0.0 <= r1["eval/avg"] <= 1.0 and 0.0 <= r1["search/terminal_correct_rate"] <= 1.0
    assert r1["ppm/pairs_train"] > 0 and history[2]["search/ppm_guided"] is True  # what the resume must rebuild
    run = tmp_path / "r"
    assert (run / "plots" / "rstar.png").stat().st_size > 0 and "| round |" in (run / "report.md").read_text()
    assert (run / "checkpoints" / "ppm-round1" / "scorer.json").is_file()

    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    for marker in ("round-2", "report"):
        (cut / "stages" / f"{marker}.json").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines(keepends=True)
    (cut / "metrics.jsonl").write_text("".join(lines[:2]))
    resumed = run_rstar(load_config(RECIPE, [f"resume={cut}"] + RESUME_SETTINGS), show_progress=False, log=quiet)

    def same(a: dict, b: dict) -> dict:  # the differing values, times aside (NaN equals NaN: no held-out pairs)
        return {k: (a[k], b.get(k)) for k in a
                if "seconds" not in k and a[k] != b.get(k) and not (a[k] != a[k] and b.get(k) != b.get(k))}

    assert [same(a, b) for a, b in zip(history, resumed)] == [{}, {}, {}]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [same(a, b) for a, b in zip(rows, again)] == [{}, {}, {}] and len(again) == 3
    for name in ("policy-round2", "ppm-round2"):
        if not (run / "checkpoints" / name).is_dir():
            continue
        for f in (run / "checkpoints" / name).glob("*.safetensors"):
            a, b = load_file(f), load_file(cut / "checkpoints" / name / f.name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name}/{f.name} differs"


def test_bad_rstar_settings_exit_2_before_anything_is_written(tmp_path, capsys):
    from r1lab.cli import main

    code = main(["rstar", RECIPE, f"out_dir={tmp_path}", "rstar.rounds=0", "--quiet"])
    assert code == 2 and "rstar.rounds=0: expected an integer >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    code = main(["rstar", RECIPE, f"out_dir={tmp_path}", "data.tasks=[knights]", "--quiet"])
    assert code == 2 and "no step-format teacher" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
