"""The names `reward.terms` may weight, for its config domain: the registered reward terms and the
terms the registered environments declare they produce (`Environment.reward_terms`, e.g. the tool
environment's tool_calls and tool_errors)."""

from __future__ import annotations

from r1lab.envs.base import ENVS


class _RewardTermNames:
    def __iter__(self):
        import r1lab.rewards  # noqa: F401  (registers every reward term)
        from r1lab.reward_registry import REWARDS

        produced = {t for f in ENVS.factories.values() for t in getattr(f, "reward_terms", ())}
        return iter(sorted(set(REWARDS) | produced))


REWARD_TERMS = _RewardTermNames()
