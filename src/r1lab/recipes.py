"""The recipe catalogue: every YAML under recipes/ with its one-line description and paper; a
multi-stage recipe (`r1lab pipeline`) also with its stages."""

from __future__ import annotations

from pathlib import Path

from r1lab.config import read_recipe
from r1lab.pipeline import is_pipeline, stage_kinds


def recipes_dir() -> Path:
    """recipes/ of the working directory, else of the source checkout r1lab runs from."""
    here = Path.cwd() / "recipes"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "recipes"


def list_recipes(root: Path | None = None) -> list[dict[str, str]]:
    root = root or recipes_dir()
    out = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name.startswith("_"):  # shared fragments, not recipes
            continue
        raw = read_recipe(path)
        out.append({
            "name": str(path.relative_to(root).with_suffix("")),
            "path": str(path),
            "description": str(raw.get("description", "")),
            "paper": str(raw.get("paper", "")),
            "stages": " > ".join(stage_kinds(raw)) if is_pipeline(raw) else "",  # "" = a one-stage recipe
        })
    return out


def format_recipes(rows: list[dict[str, str]]) -> str:
    width = max((len(r["name"]) for r in rows), default=0)
    lines = []
    for r in rows:
        lines.append(f"{r['name']:<{width}}  {r['description']}")
        if r.get("stages"):
            lines.append(f"{'':<{width}}    pipeline (r1lab pipeline): {r['stages']}")
        if r["paper"]:
            lines.append(f"{'':<{width}}    [{r['paper']}]")
    return "\n".join(lines)
