"""RL on environments: with `env.name` other than one_turn, every rollout of a step is an episode.

`EpisodeRollout` plugs episodes into the one-turn seam (`collect(cfg, sampler, params, rollout,
seed, score)`): its `rollout` runs the episodes (rollout/episodes.run_episodes over the engine's
`generate_ids`), its `score` scores them with `score_episodes` (the task's verifier on the answer,
the environment's own reward terms beside it), and `metrics` reports the step's env/* numbers.
One is made per collection, so a background (off-policy) collection holds its own. The env
section's checks (check_env) and limits (limits_of) live in rollout/episodes.py, where evaluation
can use them too.

A one-turn run never comes here: its rollouts are `engine.generate`, exactly as before.
"""

from __future__ import annotations

from statistics import mean
from typing import Any, Callable

from r1lab.config import RunConfig
from r1lab.errors import ConfigError
from r1lab.records import Completion, Problem
from r1lab.rollout.base import Engine, SamplingParams
from r1lab.rollout.episodes import Episode, episode_metrics, is_episodic, limits_of, run_episodes, score_episodes


def response_budget(cfg: RunConfig, max_new_tokens: int) -> int:
    """The most tokens the model itself can write in one rollout: max_new_tokens per turn, over at
    most env.max_turns turns, within env.max_tokens (model and environment tokens together). The
    length rewards' default L_max and Dr. GRPO's constant are this, not one turn's limit."""
    if not is_episodic(cfg):
        return max_new_tokens
    return min(cfg.env.max_tokens, cfg.env.max_turns * max_new_tokens)


class EpisodeRollout:
    """One collection's episodes (see the module docstring). `score` is the reward scorer of the
    run (compute_rewards in this process, or a Ray reward group)."""

    def __init__(self, cfg: RunConfig, engine: Engine, params: SamplingParams,
                 score: Callable[..., Any] | None = None):
        self.cfg, self.engine, self.params, self.inner_score = cfg, engine, params, score
        self.of: dict[int, Episode] = {}  # id(completion) -> its episode

    def rollout(self, prompts: list[Problem], seed: int) -> list[Completion]:
        episodes = run_episodes(self.engine, prompts, self.params, n=self.cfg.train.group_size, seed=seed,
                                env=self.cfg.env.name, env_settings=self.cfg.env.settings, limits=limits_of(self.cfg))
        for ep in episodes:
            self.of[id(ep.completion)] = ep
        return [ep.completion for ep in episodes]  # type: ignore[misc]

    def score(self, problems: list[Problem], completions: list[Completion], terms: dict[str, float],
              timeout: float = 5.0, workers: int = 2, settings: dict | None = None) -> dict[str, list[float]]:
        settings = {**(settings or {}), "max_new_tokens": response_budget(self.cfg, self.params.max_new_tokens)}
        return score_episodes([self.of[id(c)] for c in completions], terms, timeout=timeout, workers=workers,
                              settings=settings, score=self.inner_score)

    def metrics(self, completions: list[Completion]) -> dict[str, float]:
        """env/* over the episodes the step trains on."""
        return episode_metrics([self.of[id(c)] for c in completions])


def episode_eval(cfg: RunConfig, engine: Engine, problems: list[Problem], seed: int = 0) -> dict[str, float]:
    """Held-out episodes (eval.n per problem at eval.temperature, eval.max_new_tokens per turn):
    the mean correctness as eval/avg, with the episodes' tool calls, tool errors and turns."""
    e = cfg.eval
    params = SamplingParams(temperature=e.temperature, top_p=e.top_p,
                            max_new_tokens=e.max_new_tokens or cfg.sampling.max_new_tokens)
    episodes = run_episodes(engine, problems, params, n=e.n, seed=seed, env=cfg.env.name,
                            env_settings=cfg.env.settings, limits=limits_of(cfg))
    score_episodes(episodes, {"accuracy": 1.0}, timeout=cfg.reward.verify_timeout, workers=cfg.reward.verify_workers)
    m = episode_metrics(episodes)
    return {"eval/avg": mean(bool(ep.completion.verdict and ep.completion.verdict.correct) for ep in episodes),
            "eval/tool_calls": m["env/tool_calls"], "eval/tool_errors": m["env/tool_errors"],
            "eval/turns": m["env/turns"],
            "eval/used_tool": mean(any(t.tool_calls for t in ep.turns) for ep in episodes)}


def check_episode_engine(cfg: RunConfig, engine: Engine) -> None:
    """Episodes continue token ids: an engine that cannot (an endpoint) is refused in one line."""
    if is_episodic(cfg) and not engine.continues_ids:
        raise ConfigError(f"env.name={cfg.env.name}: multi-turn episodes need an engine that continues token ids "
                          f"(fast, hf, vllm); {type(engine).__name__} cannot")
