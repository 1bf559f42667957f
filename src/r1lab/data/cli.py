"""`r1lab data <step>`: each curation step as a subcommand, and `r1lab data run PIPELINE.yaml`.

    r1lab data import raw.parquet -o problems.jsonl --map question->prompt --map final_answer->answer
    r1lab data import rg:leg_counting -o legs.jsonl size=2000 [held_out=true] [seed=1234]   (generated: reasoning-gym)
    r1lab data dedup problems.jsonl -o dedup.jsonl threshold=0.8 mask_numbers=false
    r1lab data decontaminate dedup.jsonl -o clean.jsonl --benchmark math500.jsonl --benchmark aime24.jsonl ngram=13
    r1lab data decontaminate raw.parquet -o clean.jsonl --benchmark gsm8k_test.jsonl --map question->prompt
    r1lab data verify traces.jsonl -o verified.jsonl field=solution
    r1lab data reject-sample clean.jsonl -o sampled.jsonl --model runs/x/checkpoints/sft k=8 policy=shortest-correct
    r1lab data pairs clean.jsonl -o pairs.jsonl --model runs/x/checkpoints/sft k=8 chosen=shortest rejected=confident
    r1lab data filter sampled.jsonl -o window.jsonl min_pass=0.0625 max_pass=0.9375
    r1lab data select window.jsonl -o limo.jsonl n=800 trace_field=responses cluster_by=minhash length_weight=0.5
    r1lab data inspect a.jsonl b.jsonl --out inspect/ tokenizer=path/to/model
    r1lab data run pipeline.yaml dedup.threshold=0.8 output=out.jsonl

A single-step command is a two-step pipeline (import, then the step), so it writes the same
manifest as `run`, and every step reads its inputs as import does: `--map`, `--format`, `--split`,
`--source`, `--task`, `--id-prefix`; a file whose problem column is named `problem` or `question`
needs no `--map`. `key=value` arguments set the step's settings (for `run`: `step.key=value`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from r1lab.config import apply_override
from r1lab.errors import ConfigError


def _split_inputs(args: argparse.Namespace) -> None:
    """argparse gives every positional to `inputs`; the `key=value` ones are settings, and the
    `PREFIX:NAME` ones (rg:leg_counting) task families whose problems are generated."""
    from r1lab.tasks import TASKS

    settings = [a for a in args.inputs if "=" in a and not Path(a).exists()]
    args.generate = [a for a in args.inputs if a not in settings and TASKS.makes(a) and not Path(a).exists()]
    args.inputs = [a for a in args.inputs if a not in settings and a not in args.generate]
    args.overrides = settings + list(args.overrides)
    if not args.inputs and not args.generate:
        raise ConfigError("no input files given")


def _settings_from(overrides: list[str], base: dict[str, Any]) -> dict[str, Any]:
    data = dict(base)
    for o in overrides:
        apply_override(data, o)
    return data


def _print_run(manifest: dict[str, Any], quiet: bool) -> None:
    from r1lab.data.pipeline import summary_table

    if not quiet:
        print(summary_table(manifest))
    print(f"wrote {manifest['output']} ({manifest['rows_out']} rows) in {manifest['seconds']:.1f}s, "
          f"peak memory {manifest['peak_rss_mb']:.0f} MB")


def _run(pipeline: Any, quiet: bool) -> int:
    from r1lab.data.pipeline import run_pipeline

    manifest = run_pipeline(pipeline)
    _print_run(manifest, quiet)
    print(f"manifest: {pipeline.paths()[1]}")
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    """import | dedup | ... : import the inputs, run the step, write output + manifest."""
    from r1lab.data.io import parse_mapping
    from r1lab.data.pipeline import Pipeline, build_step

    _split_inputs(args)
    step = args.step
    flags: dict[str, Any] = {}
    if step == "decontaminate" and args.benchmark:
        flags["benchmarks"] = args.benchmark
    if step in ("reject-sample", "filter", "pairs", "select") and args.model:
        flags["model"] = args.model
    imp: dict[str, Any] = {"paths": args.inputs, "lenient": args.lenient, "generate": args.generate}
    imp.update({k: v for k, v in (("format", args.format), ("split", args.split), ("source", args.source),
                                   ("task", args.task), ("id_prefix", args.id_prefix)) if v})
    imp["mapping"] = parse_mapping(args.map or [])
    if step == "import":
        imp = _settings_from(args.overrides, imp)
    steps = [build_step("import", imp, "import")]
    if step != "import":
        steps.append(build_step(step, _settings_from(args.overrides, flags), step))
    pipeline = Pipeline(output=args.output, steps=steps, manifest=args.manifest or "", source=f"r1lab data {step}")
    return _run(pipeline, args.quiet)


def cmd_run(args: argparse.Namespace) -> int:
    from r1lab.data.pipeline import load_pipeline

    overrides = list(args.overrides) + (["lenient=true"] if args.lenient else [])
    return _run(load_pipeline(args.pipeline, overrides), args.quiet)


def cmd_inspect(args: argparse.Namespace) -> int:
    from r1lab.config import build_section
    from r1lab.domains import check_fields
    from r1lab.data.inspect import InspectSettings, inspect_datasets
    from r1lab.data.io import read_problems

    from r1lab.data.io import parse_mapping

    _split_inputs(args)
    if args.generate:
        raise ConfigError(f"inspect reads files; write {args.generate[0]}'s problems first: r1lab data import "
                          f"{args.generate[0]} -o FILE.jsonl")
    settings = build_section(InspectSettings, _settings_from(args.overrides, {}), "inspect")
    check_fields(settings, "inspect", paths=True)
    names = [Path(p).stem for p in args.inputs]
    if len(set(names)) < len(names):
        names = [str(p) for p in args.inputs]
    mapping = parse_mapping(args.map or [])
    summary = inspect_datasets({n: read_problems(p, args.lenient, mapping) for n, p in zip(names, args.inputs)}, settings, args.out)
    for name, d in summary["datasets"].items():
        length = d["length"]
        print(f"{name}: {d['rows']} rows, {len(d['sources'])} sources, {summary['length_unit']} "
              f"p50 {length['p50']} p90 {length['p90']} max {length['max']}")
    print("overlap (rows of ROW found in COLUMN, " + summary["overlap_rule"] + "):")
    width = max(len(n) for n in summary["overlap"]) + 2
    print(" " * width + "".join(f"{n[:10]:>12}" for n in summary["overlap"]))
    for a, row in summary["overlap"].items():
        print(f"{a:<{width}}" + "".join(f"{v:>12}" for v in row.values()))
    print(f"wrote {', '.join(summary['plots'])} and {Path(args.out) / 'inspect.json'}")
    return 0


def register(subparsers: Any) -> None:
    """Add `r1lab data ...` to the top-level parser's subcommands."""
    from r1lab.data.pipeline import STEPS

    data = subparsers.add_parser("data", help="curate problems: import, dedup, decontaminate, verify, reject-sample, pairs, filter, select, inspect",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = data.add_subparsers(dest="data_command", required=True, metavar="STEP")

    def reading(p: argparse.ArgumentParser) -> None:
        """How input files are read: the same options for every step (a step imports its inputs first)."""
        p.add_argument("--map", action="append", metavar="COLUMN->FIELD", help="column mapping, e.g. question->prompt "
                       "(repeatable; a file without prompt/answer columns has its problem/question, final_answer, ... "
                       "columns found without one)")
        p.add_argument("--format", help="jsonl | json | parquet | csv | hf (default: from the extension)")
        p.add_argument("--split", help="split of a saved DatasetDict")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="print only the result line")
        p.add_argument("--lenient", action="store_true", help="skip and count unusable input rows instead of stopping")
        p.add_argument("overrides", nargs="*", default=[], help="key=value settings of the step")

    for name, kind in STEPS.items():
        if name == "inspect":
            continue
        p = sub.add_parser(name, help=kind.help, description=kind.help)
        p.add_argument("inputs", nargs="+", help="input files (JSONL/JSON/Parquet/CSV or saved HF dataset dirs)")
        p.add_argument("-o", "--output", required=True, help="output JSONL (written atomically)")
        p.add_argument("--manifest", help="manifest path (default: OUTPUT.manifest.json)")
        reading(p)
        p.add_argument("--source", help="source name for rows without one (default: file stem)")
        p.add_argument("--task", help="task for rows without one (default: math)")
        p.add_argument("--id-prefix", help="prefix for every id")
        if name == "decontaminate":
            p.add_argument("--benchmark", action="append", metavar="FILE", help="benchmark file (repeatable)")
        if name in ("reject-sample", "filter", "pairs", "select"):
            p.add_argument("--model", help="local Hugging Face model directory that samples")
        common(p)
        p.set_defaults(func=cmd_step, step=name)

    p = sub.add_parser("inspect", help=STEPS["inspect"].help, description=STEPS["inspect"].help)
    p.add_argument("inputs", nargs="+", help="datasets to compare (Problem-schema files)")
    p.add_argument("--out", required=True, help="directory for lengths.png, overlap.png, inspect.json")
    p.add_argument("--map", action="append", metavar="COLUMN->FIELD", help="column mapping, as for import (repeatable)")
    common(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="run a pipeline YAML (steps in order, one manifest)", description="run a pipeline YAML")
    p.add_argument("pipeline", help="pipeline YAML")
    common(p)
    p.set_defaults(func=cmd_run)
