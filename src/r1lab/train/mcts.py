"""Step-level MCTS over code-augmented reasoning steps (rStar-Math's data synthesis, at r1lab's scale).

A tree per problem; a node is a partial solution (the steps so far). Each rollout descends from the
root by UCT (algos/mcts.py) to a node not yet expanded, then expands its way down to a terminal:
expansion samples `candidates` next steps from the policy (the engine stops at the end of a step),
runs each code step in the sandbox after the steps before it and drops the ones that fail, time out
or print no result, verifies answer steps with the task's verifier (+1 correct, -1 otherwise), and
goes on from the best-ranked new child. The terminal's reward is backed up along the path. A node
whose candidates were all dropped, or that has no room left, is a terminal with reward -1.

With a process preference model, each new node's score is its prior: it counts as `prior_weight`
returns in Q and orders unvisited siblings. Rollouts of all trees advance together, so one engine
call samples the expansions of every tree at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from r1lab.algos.mcts import backup, node_q, select_child
from r1lab.records import Problem, prompt_text
from r1lab.rollout.base import Engine, SamplingParams, encode_prompts
from r1lab.tasks.steps import STOP_STRINGS, THINK_OPEN, StepRunner, parse_step, result_line
from r1lab.verify import verify_batch


class Scorer(Protocol):
    def score(self, prompts: list[str], partials: list[str]) -> list[float]: ...


@dataclass
class Node:
    parent: int  # -1 for the root
    depth: int  # code steps from the root to here
    step: str = ""  # this step's text in the solution (a code step with its result line, or the answer)
    program: str = ""  # the code of the steps root..here, in order
    stdout: str = ""  # what that program printed
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    prior: float = 0.0
    expanded: bool = False
    terminal: bool = False
    reward: float = 0.0  # a terminal's outcome: +1 verified correct, -1 otherwise
    correct: bool = False  # a terminal whose answer verified
    reached_correct: bool = False  # a correct terminal was backed up through this node


@dataclass
class Tree:
    problem: Problem
    nodes: list[Node] = field(default_factory=lambda: [Node(parent=-1, depth=0)])

    def path(self, i: int) -> list[int]:
        """Node indices root..i."""
        out = []
        while i >= 0:
            out.append(i)
            i = self.nodes[i].parent
        return out[::-1]

    def partial(self, i: int) -> str:
        """The response text up to and including node i: `<think>` and the steps on its path."""
        return THINK_OPEN + "".join(self.nodes[j].step for j in self.path(i))

    def q(self, i: int, prior_weight: float = 0.0) -> float:
        n = self.nodes[i]
        return node_q(n.value_sum, n.visits, n.prior, prior_weight)


@dataclass(frozen=True)
class SearchSettings:
    rollouts: int = 8  # rollouts per tree
    candidates: int = 4  # next steps sampled per expansion
    max_depth: int = 6  # code steps at most on a path; a node this deep may only answer
    c: float = 2.0  # UCT exploration constant
    prior_weight: float = 1.0  # returns the PPM's score of a node counts as (with a PPM)
    temperature: float = 1.0
    top_p: float = 1.0
    step_max_new_tokens: int = 48
    max_positions: int = 0  # prompt + partial + step tokens at most (0 = no limit)
    verify_timeout: float = 5.0
    verify_workers: int = 2
    seed: int = 0


@dataclass
class SearchStats:
    expansions: int = 0
    candidates: int = 0
    duplicates: int = 0
    unparsable: int = 0
    code_failed: int = 0
    no_room: int = 0
    dead_ends: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class MCTS:
    """Runs the rollouts of a batch of trees with one policy engine (needs `generate_ids`), one
    sandbox runner and, optionally, a PPM that scores new nodes."""

    def __init__(self, engine: Engine, tokenizer, runner: StepRunner, settings: SearchSettings,
                 ppm: Scorer | None = None):
        if not engine.continues_ids:
            raise ValueError(f"MCTS needs an engine that continues token-id prefixes (generate_ids); "
                             f"{type(engine).__name__} has none")
        self.engine, self.tok, self.runner, self.s, self.ppm = engine, tokenizer, runner, settings, ppm
        self.stats = SearchStats()
        self._calls = 0

    def _prior_weight(self) -> float:
        return self.s.prior_weight if self.ppm is not None else 0.0

    def select_leaf(self, tree: Tree) -> int:
        """Descend by UCT from the root to a terminal or a node not yet expanded."""
        i = 0
        while tree.nodes[i].expanded and not tree.nodes[i].terminal:
            i = self.pick_child(tree, i)
        return i

    def pick_child(self, tree: Tree, i: int) -> int:
        kids = tree.nodes[i].children
        w = self._prior_weight()
        j = select_child([tree.q(k, w) for k in kids], [tree.nodes[k].visits for k in kids], tree.nodes[i].visits,
                         self.s.c, [tree.nodes[k].prior for k in kids])
        return kids[j]

    def search(self, trees: list[Tree], on_rollout: Callable[[int], None] | None = None) -> None:
        """`settings.rollouts` rollouts on every tree, the trees advancing together."""
        for _ in range(self.s.rollouts):
            cursor = [self.select_leaf(t) for t in trees]
            while True:
                todo = [k for k, t in enumerate(trees) if not t.nodes[cursor[k]].terminal]
                if not todo:
                    break
                self.expand([(trees[k], cursor[k]) for k in todo])
                for k in todo:
                    t, i = trees[k], cursor[k]
                    if not t.nodes[i].terminal:  # expanded with children: go on from the best-ranked one
                        cursor[k] = self.pick_child(t, i)
            for t, i in zip(trees, cursor):
                self.backup(t, i)
            if on_rollout:
                on_rollout(1)

    def backup(self, tree: Tree, leaf: int) -> None:
        path = tree.path(leaf)
        nodes = [tree.nodes[j] for j in path]
        reward = nodes[-1].reward
        visits, sums = backup([n.visits for n in nodes], [n.value_sum for n in nodes], reward)
        for n, v, s in zip(nodes, visits, sums):
            n.visits, n.value_sum = v, s
            n.reached_correct = n.reached_correct or nodes[-1].correct

    def _prompt_ids(self, trees_nodes: list[tuple[Tree, int]]) -> list[list[int]]:
        encoded = encode_prompts(self.tok, [t.problem for t, _ in trees_nodes])
        out = []
        for enc, (t, i) in zip(encoded, trees_nodes):
            partial = t.partial(i)
            if enc.prefill and partial.startswith(enc.prefill):
                partial = partial[len(enc.prefill):]
            out.append(enc.ids + self.tok(partial, add_special_tokens=False)["input_ids"])
        return out

    def expand(self, trees_nodes: list[tuple[Tree, int]]) -> None:
        """Expand each (tree, node): sample, parse, run and verify its candidate next steps, add the
        survivors as children (scored by the PPM if there is one); a node left without children
        becomes a terminal with reward -1."""
        s = self.s
        ids = self._prompt_ids(trees_nodes)
        live = []
        for (t, i), p in zip(trees_nodes, ids):
            t.nodes[i].expanded = True
            if s.max_positions and len(p) + s.step_max_new_tokens > s.max_positions:
                self.stats.no_room += 1
                self._dead(t.nodes[i])
            else:
                live.append((t, i, p))
        if not live:
            return
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.step_max_new_tokens,
                                stop=STOP_STRINGS)
        prompts = [p for _, _, p in live for _ in range(s.candidates)]
        self._calls += 1
        comps = self.engine.generate_ids(prompts, params, seed=s.seed * 1_000_003 + self._calls)
        self.stats.expansions += len(live)
        self.stats.candidates += len(comps)

        code_jobs: list[tuple[Tree, int, str, str]] = []  # (tree, parent, step text, program)
        answers: list[tuple[Tree, int, str]] = []  # (tree, parent, step text)
        for k, (t, i, _) in enumerate(live):
            seen: set[str] = set()
            node = t.nodes[i]
            for c in comps[k * s.candidates:(k + 1) * s.candidates]:
                text = c.text
                if text in seen:
                    self.stats.duplicates += 1
                    continue
                seen.add(text)
                step = parse_step(text)
                if step is None or (step.kind == "code" and node.depth >= s.max_depth):
                    self.stats.unparsable += 1
                elif step.kind == "answer":
                    answers.append((t, i, text))
                else:
                    code_jobs.append((t, i, text, node.program + step.code + "\n"))

        runs = self.runner.run([(prog, t.nodes[i].stdout) for t, i, _, prog in code_jobs])
        new: list[tuple[Tree, int]] = []
        for (t, i, text, prog), r in zip(code_jobs, runs):
            if not r.ok:
                self.stats.code_failed += 1
                continue
            parent = t.nodes[i]
            t.nodes.append(Node(parent=i, depth=parent.depth + 1, step=text + result_line(r.result), program=prog,
                                stdout=r.stdout))
            parent.children.append(len(t.nodes) - 1)
            new.append((t, len(t.nodes) - 1))

        if answers:
            texts = [t.partial(i) + text for t, i, text in answers]
            verdicts = verify_batch([t.problem for t, _, _ in answers], texts, timeout=s.verify_timeout,
                                    workers=s.verify_workers)
            for (t, i, text), v in zip(answers, verdicts):
                t.nodes.append(Node(parent=i, depth=t.nodes[i].depth, step=text, program=t.nodes[i].program,
                                    stdout=t.nodes[i].stdout, expanded=True, terminal=True,
                                    reward=1.0 if v.correct else -1.0, correct=v.correct))
                t.nodes[i].children.append(len(t.nodes) - 1)
                new.append((t, len(t.nodes) - 1))

        if self.ppm is not None and new:
            scores = self.ppm.score([prompt_text(t.problem.prompt) for t, _ in new], [t.partial(j) for t, j in new])
            for (t, j), v in zip(new, scores):
                t.nodes[j].prior = float(v)
        for t, i, _ in live:
            if not t.nodes[i].children:
                self.stats.dead_ends += 1
                self._dead(t.nodes[i])

    @staticmethod
    def _dead(node: Node) -> None:
        node.terminal, node.reward, node.correct = True, -1.0, False


# --- what the trees give ---------------------------------------------------------------------------


def tree_stats(trees: list[Tree]) -> dict[str, float]:
    """Sizes and outcomes of a batch of trees."""
    nodes = sum(len(t.nodes) for t in trees)
    answers = [n for t in trees for n in t.nodes if n.terminal and n.step.lstrip().startswith("</think>")]
    correct = sum(n.correct for n in answers)
    return {
        "search/problems": len(trees),
        "search/nodes": nodes,
        "search/nodes_per_tree": nodes / max(1, len(trees)),
        "search/answers": len(answers),
        "search/terminal_correct_rate": correct / max(1, len(answers)),
        "search/solved_rate": sum(t.nodes[0].reached_correct for t in trees) / max(1, len(trees)),
        "search/max_depth": max((n.depth for t in trees for n in t.nodes), default=0),
    }


def best_trajectories(tree: Tree, k: int, prior_weight: float = 0.0) -> list[tuple[str, float]]:
    """Up to k distinct correct solutions of the tree, (text, mean Q of its steps), highest first."""
    seen: dict[str, float] = {}
    for j, n in enumerate(tree.nodes):
        if n.correct:
            steps = tree.path(j)[1:]
            mean_q = sum(tree.q(s, prior_weight) for s in steps) / len(steps)
            text = tree.partial(j)
            seen[text] = max(mean_q, seen.get(text, -float("inf")))
    return sorted(seen.items(), key=lambda kv: -kv[1])[:k]


def preference_pairs(tree: Tree, per_side: int = 2, prior_weight: float = 0.0) -> list[dict]:
    """Step pairs for the PPM: at every node, its visited children with Q > 0 that reached a correct
    answer (highest Q first) against those with Q < 0 that never did (lowest first), `per_side` of
    each, every positive against every negative. Each pair shares the steps before it."""
    prompt = prompt_text(tree.problem.prompt)
    out = []
    for i, n in enumerate(tree.nodes):
        kids = [k for k in n.children if tree.nodes[k].visits > 0]
        pos = sorted((k for k in kids if tree.q(k, prior_weight) > 0 and tree.nodes[k].reached_correct),
                     key=lambda k: -tree.q(k, prior_weight))[:per_side]
        neg = sorted((k for k in kids if tree.q(k, prior_weight) < 0 and not tree.nodes[k].reached_correct),
                     key=lambda k: tree.q(k, prior_weight))[:per_side]
        for a in pos:
            for b in neg:
                out.append({"problem_id": tree.problem.id, "prompt": prompt, "pos": tree.partial(a),
                            "neg": tree.partial(b), "q_pos": tree.q(a, prior_weight), "q_neg": tree.q(b, prior_weight)})
    return out
