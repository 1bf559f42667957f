"""Does the tiny VLM's vision tower learn in SFT? A cheap probe before a full `vlm_seeds.py` run.

For each vision setting given, SFT the tiny Qwen2-VL on the teacher traces of the visual families
twice from the same initial weights: once with the pictures, once with every picture (train and
held-out) replaced by a white one. Every `--every` steps it records, per family, the held-out
teacher-forced NLL of the whole teacher trace (its readings of the picture, then the answer) and
whether the trace is the greedy argmax at every position (a trace read right, teacher-forced). What the picture run gains over the blank
run is what the model reads from the pixels; the blank run is the answer prior from the question.
It also records the vision tower's share of the gradient norm at the first steps.

    OMP_NUM_THREADS=1 /work/bin/heavy python benchmarks/vlm_probe.py --families bar_value count_shapes \
        --steps 150 --variant patch8 --variant patch4:patch_size=4
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from r1lab.config import TinyModelConfig  # noqa: E402
from r1lab.images import decode_image, png_bytes, to_data_url  # noqa: E402
from r1lab.models import build_tiny_tokenizer, token_logprobs  # noqa: E402
from r1lab.records import Problem  # noqa: E402
from r1lab.tasks import generate_splits, get_task  # noqa: E402
from r1lab.train.common import pad_sequences  # noqa: E402
from r1lab.train.sft import sft_examples  # noqa: E402
from r1lab.vision import (add_vision_tokens, attach_image_processor, build_tiny_vlm, forward_inputs,  # noqa: E402
                          suppress_vision_tokens, tiny_image_processor)

RESULTS = ROOT / "benchmarks" / "results" / "vlm"


def blanked(problems: list[Problem]) -> list[Problem]:
    from PIL import Image

    out = []
    for p in problems:
        white = [to_data_url(png_bytes(Image.new("RGB", decode_image(u).size, (255, 255, 255)))) for u in p.images]
        out.append(Problem(**{**p.to_dict(), "images": white}))
    return out


def held_out_scores(model, tok, examples, spans, families) -> dict[str, dict[str, float]]:
    model.eval()
    nll: dict[str, list[float]] = {}
    hit: dict[str, list[float]] = {}
    with torch.no_grad():
        for b in range(0, len(examples), 64):
            chunk = examples[b: b + 64]
            batch = pad_sequences([p for p, _ in chunk], [r for _, r in chunk], tok.pad_token_id)
            extra = forward_inputs(model, batch["input_ids"], batch["attention_mask"], [e.vision for e in chunk])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
            logp = suppress_vision_tokens(logits, model).log_softmax(-1)
            for i, e in enumerate(chunk):
                fam = families[b + i]
                mask = batch["response_mask"][i].nonzero().squeeze(-1)  # column t scores token t+1
                cols = mask[torch.tensor(spans[b + i])]
                target = batch["input_ids"][i, cols + 1]
                nll[fam] = nll.get(fam, []) + [-float(logp[i, cols].gather(-1, target[:, None]).sum())]
                hit[fam] = hit.get(fam, []) + [float((logp[i, cols].argmax(-1) == target).all())]
    model.train()
    return {f: {"trace_nll": round(sum(nll[f]) / len(nll[f]), 3), "trace_acc": round(100 * sum(hit[f]) / len(hit[f]), 1)}
            for f in nll}


def train(variant: dict, blank: bool, args, corpus, train_set, held, seed: int) -> dict:
    cfg = TinyModelConfig(**{**dict(vision_width=128), **variant})
    tok = build_tiny_tokenizer(corpus)
    add_vision_tokens(tok)
    attach_image_processor(tok, tiny_image_processor(cfg.image_size, cfg.patch_size))
    model = build_tiny_vlm(tok, cfg, seed=seed)
    tr = blanked(train_set) if blank else train_set
    ho = blanked(held) if blank else held
    traces = [get_task(p.metadata["family"]).teacher_trace(p) for p in tr]
    ex = sft_examples(tok, list(zip(tr, traces)))
    held_traces = [get_task(p.metadata["family"]).teacher_trace(p) for p in ho]
    hex_ = sft_examples(tok, list(zip(ho, held_traces)))
    spans = [list(range(len(e[1]))) for e in hex_]  # the whole response: its picture-dependent readings and the answer
    fams = [p.metadata["family"] for p in ho]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))))
    rng = random.Random(seed)
    order: list[int] = []
    curve, vis_share = [], []
    t0 = time.time()
    for step in range(1, args.steps + 1):
        if len(order) < args.batch:
            order += rng.sample(range(len(ex)), len(ex))
        idx, order = order[: args.batch], order[args.batch:]
        chunk = [ex[i] for i in idx]
        batch = pad_sequences([p for p, _ in chunk], [r for _, r in chunk], tok.pad_token_id)
        lp, _ = token_logprobs(model, batch["input_ids"], batch["attention_mask"], vision=[e.vision for e in chunk])
        loss = -(lp * batch["response_mask"]).sum() / batch["response_mask"].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step <= 20:
            sq = {"vision": 0.0, "text": 0.0}
            for n, p in model.named_parameters():
                if p.grad is not None:
                    sq["vision" if ".visual." in f".{n}" else "text"] += float(p.grad.pow(2).sum())
            vis_share.append(math.sqrt(sq["vision"]) / max(math.sqrt(sq["vision"] + sq["text"]), 1e-12))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            curve.append({"step": step, "loss": round(loss.item(), 4), **held_out_scores(model, tok, hex_, spans, fams)})
            print(json.dumps({"blank": blank, **variant, **curve[-1]}), flush=True)
    return {"variant": variant, "blank": blank, "seconds": round(time.time() - t0, 1), "curve": curve,
            "vision_grad_share_first20": round(sum(vis_share) / len(vis_share), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=["bar_value", "count_shapes", "digit_sum"])
    ap.add_argument("--difficulty", type=int, default=1)
    ap.add_argument("--train", type=int, default=400, help="SFT traces per family")
    ap.add_argument("--held", type=int, default=60, help="held-out problems per family")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", default=[],
                    help="name:key=value,... (TinyModelConfig fields), e.g. patch4:patch_size=4")
    ap.add_argument("--out", default=str(RESULTS / "probe.json"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    k = len(args.families)
    train_set, held = generate_splits(args.families, args.train * k, args.held * k, args.difficulty, seed=args.seed)
    corpus = [f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n" for p in train_set]
    corpus += [get_task(p.metadata["family"]).teacher_trace(p) for p in train_set]
    variants = []
    for spec in args.variant or ["default:"]:
        name, _, kv = spec.partition(":")
        variants.append((name, {k2: int(v) for k2, v in (x.split("=") for x in kv.split(",") if x)}))
    runs = []
    for name, v in variants:
        for blank in (False, True):
            r = train(v, blank, args, corpus, train_set, held, args.seed)
            r["name"] = name
            runs.append(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
