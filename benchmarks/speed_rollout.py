"""Rollout speed on this CPU: HF `generate` against r1lab's FastEngine at identical settings, next
to the measured matmul roofline. fp32 always; bf16 too where the CPU multiplies bf16 natively
(AVX-512 BF16 / AMX), since elsewhere torch emulates it far slower than fp32 (`--bf16 yes` forces it).

Settings: SmolLM2-135M-Instruct, 16 chat prompts, sampling at T=1 (no top-k / top-p), every row
forced to the full `max_new_tokens` (HF: min_new_tokens; FastEngine: no stop ids), so both decode
exactly batch x max_new_tokens tokens. The headline runs the contenders interleaved, one run of each
per round for `--repeats` rounds, and reports medians and the median per-round ratio; the sweeps
time each point on its own. Torch's default threads. Run under the shared lock:

    flock /tmp/r1lab-cpu.lock .venv/bin/python benchmarks/speed_rollout.py

Writes benchmarks/results/speed_rollout.json and speed_rollout.png (tokens/s against batch size and
against max new tokens).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from r1lab.models import load_model, render_prompt
from r1lab.records import Problem
from r1lab.rollout import FastEngine, SamplingParams
from r1lab.rollout.fast import cpu_has_native_bf16

RESULTS = Path(__file__).parent / "results"
TOPICS = ["the sea", "a robot", "prime numbers", "a lighthouse", "autumn", "a bakery", "the moon", "a train",
          "chess", "a garden", "rain", "a library", "mountains", "a violin", "friendship", "a desert"]


def prompts(k: int) -> list[Problem]:
    return [Problem(id=f"q{i}", prompt=f"Write a short story about {TOPICS[i % len(TOPICS)]}.", answer="")
            for i in range(k)]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 20) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    t = median_time(lambda: a @ b, repeats)
    return 2 * m * k * n / t


def hf_generate_runner(model, tok, batch: int, new: int):
    """A warmed-up callable that runs HF generate once at the settings and returns the tokens made."""
    texts = [render_prompt(tok, p.prompt) for p in prompts(batch)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
              pad_token_id=tok.pad_token_id)

    def run() -> int:
        with torch.inference_mode():
            out = model.generate(**enc, **kw)
        assert out.shape[1] - enc["input_ids"].shape[1] == new
        return batch * new

    with torch.inference_mode():
        model.generate(**enc, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    return run


def fast_runner(engine: FastEngine, batch: int, new: int):
    ps = prompts(batch)
    params = SamplingParams(temperature=1.0, max_new_tokens=new)
    engine.generate(ps[:2], SamplingParams(max_new_tokens=4), seed=0)  # warm-up (packs the weights)
    seeds = iter(range(1_000_000))

    def run() -> int:
        cs = engine.generate(ps, params, seed=next(seeds))
        made = sum(len(c.response_ids) for c in cs)
        assert made == batch * new, made  # every row ran to the full length
        return made

    return run


def tokens_per_s(run, repeats: int) -> float:
    made = []
    t = median_time(lambda: made.append(run()), repeats)
    return made[0] / t


def hf_generate_tokens_per_s(model, tok, batch: int, new: int, repeats: int) -> float:
    return tokens_per_s(hf_generate_runner(model, tok, batch, new), repeats)


def fast_tokens_per_s(engine: FastEngine, batch: int, new: int, repeats: int) -> float:
    return tokens_per_s(fast_runner(engine, batch, new), repeats)


def interleaved(runners: dict, repeats: int) -> dict[str, list[float]]:
    """tokens/s of each runner, `repeats` rounds, one run of each per round: this VM's speed drifts
    by up to 2x within minutes, so contenders measured minutes apart are not comparable."""
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            made = run()
            rates[name].append(made / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--news", default="32,64,128,256,512")
    ap.add_argument("--hf-batches", default="1,4,16,64")
    ap.add_argument("--hf-news", default="32,128,256")
    ap.add_argument("--quick", action="store_true", help="headline only, no sweeps")
    ap.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                    help="measure the bf16 contenders: auto = only on CPUs with native bf16 matmuls (AVX-512 BF16 / AMX); "
                         "elsewhere bf16 is emulated, tens of times slower than fp32, and not worth minutes of benchmark")
    args = ap.parse_args()
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and cpu_has_native_bf16())
    best = "bf16" if bf16 else "fp32"
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model32, tok = load_model("smollm2-135m-instruct")
    model32.eval()
    model16 = copy.deepcopy(model32).to(torch.bfloat16).eval() if bf16 else None
    params = sum(p.numel() for p in model32.parameters())
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                            f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}",
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "params": params,
                 "settings": {"batch": args.batch, "max_new_tokens": args.new, "temperature": 1.0, "repeats": args.repeats}}
    # the matmul peak, and a decode-shaped (batch x hidden x intermediate) product
    res["native_bf16"] = cpu_has_native_bf16()
    res["matmul_gflops"] = {
        "square_2048_fp32": matmul_flops(2048, 2048, 2048, torch.float32) / 1e9,
        f"decode_{args.batch}x576x1536_fp32": matmul_flops(args.batch, 576, 1536, torch.float32, 200) / 1e9,
    }
    if bf16:
        res["matmul_gflops"]["square_2048_bf16"] = matmul_flops(2048, 2048, 2048, torch.bfloat16) / 1e9
        res["matmul_gflops"][f"decode_{args.batch}x576x1536_bf16"] = matmul_flops(args.batch, 576, 1536, torch.bfloat16, 200) / 1e9
    else:  # one small product, to state how slow emulated bf16 is here
        res["matmul_gflops"]["square_512_bf16_emulated"] = matmul_flops(512, 512, 512, torch.bfloat16, 3) / 1e9
    # the roofline: the measured matmul peak of the best precision this CPU has, 2 FLOPs per parameter per token
    roofline = res["matmul_gflops"][f"square_2048_{best}"] * 1e9 / (2 * params)
    res["roofline"] = {"precision": best, "tokens_per_s": roofline}
    print(json.dumps(res, indent=1), flush=True)

    fast16 = FastEngine(model32, tok, dtype="bfloat16", batch_size=256) if bf16 else None
    fast32 = FastEngine(model32, tok, dtype="float32", batch_size=256)
    # the same engine with its decode step in torch operators: what the fused C kernels buy
    fast_ops = FastEngine(model32, tok, dtype="bfloat16" if bf16 else "float32", batch_size=256, kernels="torch")
    res["kernels"] = "c" if (fast16 or fast32)._kernels is not None else "torch (the C kernels did not build)"
    for e in filter(None, (fast16, fast32, fast_ops)):
        e.stop_ids = []  # force the full length, as min_new_tokens does for HF
    B, N, R = args.batch, args.new, args.repeats
    runners = {"hf_generate_fp32": hf_generate_runner(model32, tok, B, N), "fast_engine_fp32": fast_runner(fast32, B, N)}
    if bf16:
        runners["hf_generate_bf16"] = hf_generate_runner(model16, tok, B, N)
        runners["fast_engine_bf16"] = fast_runner(fast16, B, N)
    runners[f"fast_engine_{best}_torch_ops"] = fast_runner(fast_ops, B, N)
    rates = interleaved(runners, R)
    head = {name: statistics.median(r) for name, r in rates.items()}
    res["headline_tokens_per_s"] = head
    res["headline_rounds_tokens_per_s"] = rates
    fast_best = head[f"fast_engine_{best}"]
    per_round = [f / h for f, h in zip(rates[f"fast_engine_{best}"], rates["hf_generate_fp32"])]
    res["speedup_vs_hf_fp32"] = statistics.median(per_round)
    res["speedup_vs_hf_fp32_per_round"] = per_round
    res["speedup_same_precision"] = {p: statistics.median(f / h for f, h in zip(rates[f"fast_engine_{p}"], rates[f"hf_generate_{p}"]))
                                     for p in ("fp32", "bf16") if f"hf_generate_{p}" in rates}
    res["fraction_of_roofline"] = fast_best / roofline
    res["speedup_of_kernels"] = statistics.median(
        f / o for f, o in zip(rates[f"fast_engine_{best}"], rates[f"fast_engine_{best}_torch_ops"]))
    print(json.dumps({k: res[k] for k in ("headline_tokens_per_s", "speedup_vs_hf_fp32", "speedup_vs_hf_fp32_per_round",
                                          "speedup_same_precision", "speedup_of_kernels", "fraction_of_roofline")},
                     indent=1), flush=True)
    if not args.quick:
        sweep: dict = {"batch": {}, "new": {}}
        fast = fast16 if bf16 else fast32
        hf_models = {"fp32": model32, **({"bf16": model16} if bf16 else {})}
        for b in map(int, args.batches.split(",")):
            sweep["batch"].setdefault(f"fast_engine_{best}", {})[b] = fast_tokens_per_s(fast, b, N, 1 if b >= 64 else R)
            print("batch", b, sweep["batch"][f"fast_engine_{best}"][b], flush=True)
        for b in map(int, args.hf_batches.split(",")):
            for p, m in hf_models.items():
                sweep["batch"].setdefault(f"hf_generate_{p}", {})[b] = hf_generate_tokens_per_s(m, tok, b, N, 1)
                print("hf", p, "batch", b, sweep["batch"][f"hf_generate_{p}"][b], flush=True)
        for n in map(int, args.news.split(",")):
            sweep["new"].setdefault(f"fast_engine_{best}", {})[n] = fast_tokens_per_s(fast, B, n, 1)
            print("new", n, sweep["new"][f"fast_engine_{best}"][n], flush=True)
        for n in map(int, args.hf_news.split(",")):
            for p, m in hf_models.items():
                sweep["new"].setdefault(f"hf_generate_{p}", {})[n] = hf_generate_tokens_per_s(m, tok, B, n, 1)
                print("hf", p, "new", n, sweep["new"][f"hf_generate_{p}"][n], flush=True)
        res["sweep_tokens_per_s"] = sweep
        plot(sweep, roofline, best, B, N, RESULTS / "speed_rollout.png")
    (RESULTS / "speed_rollout.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {RESULTS / 'speed_rollout.json'}")


def plot(sweep: dict, roofline: float, precision: str, B: int, N: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"fast_engine_bf16": ("r1lab FastEngine bf16", "o-"), "fast_engine_fp32": ("r1lab FastEngine fp32", "o-"),
              "hf_generate_bf16": ("HF generate bf16", "s--"), "hf_generate_fp32": ("HF generate fp32", "^--")}
    for ax, key, xlabel, title in ((axes[0], "batch", "batch size", f"{N} new tokens"),
                                   (axes[1], "new", "max new tokens", f"batch {B}")):
        for name, pts in sweep[key].items():
            xs = sorted(pts)
            label, style = styles[name]
            ax.plot(xs, [pts[x] for x in xs], style, label=label)
        ax.axhline(roofline, color="gray", linestyle=":", label=f"{precision} matmul roofline ({roofline:.0f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("generated tokens / s")
        ax.set_title(f"SmolLM2-135M, sampling T=1, {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
