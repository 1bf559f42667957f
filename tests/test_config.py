import subprocess
import sys

import pytest

from r1lab.config import RunConfig, load_config, save_config
from r1lab.cli import main
from r1lab.errors import ConfigError


def test_defaults_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("description: test\ntrain:\n  steps: 7\n  lr: 1e-5\nalgo:\n  policy_loss_args: {clip_eps_high: 0.28}\n")
    cfg = load_config(recipe, ["train.lr=3e-4", "data.tasks=[arithmetic, countdown]", "reward.terms={accuracy: 1}"])
    assert cfg.train.steps == 7
    assert cfg.train.lr == 3e-4  # the override wins over the recipe; "3e-4" read as a float
    assert cfg.algo.policy_loss_args == {"clip_eps_high": 0.28}
    assert cfg.data.tasks == ["arithmetic", "countdown"]
    assert cfg.reward.terms == {"accuracy": 1.0}
    assert cfg.model.tiny.hidden_size == RunConfig().model.tiny.hidden_size


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=3", "algo.loss_agg=token-mean"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
        ("train.steps=abc", "train.steps: expected an integer"),
        ("trian.steps=3", "did you mean 'train'"),
        ("train.steps", "not of the form key.sub=value"),
        ("algo.kl_coef=[1]", "algo.kl_coef: expected a number"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml:.*not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("sft:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'sft.epochz'"):
        load_config(wrong)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 3\n")
    # one case through a real process: the exit status and stderr of `python -m r1lab.cli` itself
    r = run_cli("rl", str(bad))
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "unknown config key 'train.stepz'" in lines[0], r.stderr
    # the rest through main(), the same code path without paying a fresh interpreter's imports each time
    for args, needle in [
        (("rl", str(tmp_path / "nope.yaml")), "recipe file not found"),
        (("eval", str(tmp_path / "no-model")), "model path does not exist"),
        (("sft", "recipes/tiny/sft.yaml", "model.dtype=fp8", f"out_dir={tmp_path / 'runs'}"), "model.dtype='fp8': expected one of"),
        (("sft", "recipes/tiny/sft.yaml", "model.device=tpu", f"out_dir={tmp_path / 'runs'}"), "model.device"),
    ]:
        assert main(list(args)) == 2
        err = capsys.readouterr().err
        lines = [l for l in err.strip().splitlines() if l.strip()]
        assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "runs").exists()  # refused before any run directory was made


def test_cli_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evl"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
