"""Data curation: import, dedup, decontaminate, verify, reject-sample, filter, select, inspect.

Each step is a function over a stream of `Problem`s and a subcommand (`r1lab data <step>`); a
pipeline YAML chains them and writes a manifest of what each step kept and dropped, and why.
Heavy dependencies (torch, transformers, datasketch) load only when a step needs them.
"""

from r1lab.data.decontam import BenchmarkIndex, DecontamSettings, Hit, decontaminate
from r1lab.data.dedup import DedupSettings, dedup, shingles, tokens
from r1lab.data.filter import FilterSettings, difficulty_filter, in_window
from r1lab.data.inspect import InspectSettings, Inspector, inspect_datasets
from r1lab.data.io import ImportSettings, import_problems, parse_mapping, read_problems, read_rows
from r1lab.data.pipeline import STEPS, Pipeline, load_pipeline, parse_pipeline, run_pipeline
from r1lab.data.reject import POLICIES, RejectSettings, SampleSettings, Sampler, reject_sample, select
from r1lab.data.subset import SelectSettings, select_examples
from r1lab.data.verify_traces import VerifySettings, verify_traces

__all__ = [
    "BenchmarkIndex", "DecontamSettings", "DedupSettings", "FilterSettings", "Hit", "ImportSettings", "InspectSettings",
    "Inspector", "POLICIES", "Pipeline", "RejectSettings", "STEPS", "SampleSettings", "Sampler", "SelectSettings", "VerifySettings",
    "decontaminate", "dedup", "difficulty_filter", "import_problems", "in_window", "inspect_datasets", "load_pipeline",
    "parse_mapping", "parse_pipeline", "read_problems", "read_rows", "reject_sample", "run_pipeline", "select", "select_examples", "shingles",
    "tokens", "verify_traces",
]
