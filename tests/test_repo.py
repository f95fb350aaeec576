"""The repository's promises: every recipe parses against the code, README and CI agree."""

import re

import pytest

from conftest import CONFIGS, ROOT, run_cli

RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "tiny.yaml")
SIZES = sorted(p.name for p in (CONFIGS / "sizes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("extra", [None, "tiny.yaml", *(f"sizes/{s}" for s in SIZES)])
def test_every_recipe_parses_against_the_signatures(recipe, extra, capsys):
    args = ["fit", "--config", str(CONFIGS / recipe)] + (["--config", str(CONFIGS / extra)] if extra else [])
    with pytest.raises(SystemExit) as e:
        run_cli([*args, "--print_config"])
    assert e.value.code in (0, None), capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "class_path: lit_ptm.objectives." in printed and "class_path: lit_ptm.data.PretrainDataModule" in printed


FINETUNE = sorted(p.name for p in (CONFIGS / "finetune").glob("*.yaml") if p.name != "tiny.yaml")


@pytest.mark.parametrize("task", FINETUNE)
@pytest.mark.parametrize("extra", [None, "finetune/tiny.yaml"])
def test_every_finetuning_recipe_parses_against_the_signatures(task, extra, capsys):
    args = ["fit", "--config", str(CONFIGS / "finetune" / task)] + (["--config", str(CONFIGS / extra)] if extra else [])
    with pytest.raises(SystemExit) as e:
        run_cli([*args, "--print_config"])
    assert e.value.code in (0, None), capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "class_path: lit_ptm.tasks." in printed and "class_path: lit_ptm.tasks.FinetuneDataModule" in printed


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\s*```(?:bash|sh)?\n(.+?)\n```", readme, re.S)
    assert match, "README.md lost its test command block"
    command = match.group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text()


def test_the_qa_recipe_with_the_tiny_preset_builds_windows(capsys):
    """configs/finetune/qa.yaml + configs/finetune/tiny.yaml work out of the box (qa.yaml's stride of 128
    once met tiny's 64-token windows)."""
    import yaml

    from lit_ptm.tasks.features import qa_windows
    from lit_ptm.tokenizer import train_tokenizer

    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(CONFIGS / "finetune/qa.yaml"), "--config", str(CONFIGS / "finetune/tiny.yaml"), "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    tokenizer = train_tokenizer([f"which module defines name {i}?" for i in range(200)], "wordpiece", 300)
    context = " ".join(f"the module number {i} defines name {i}." for i in range(60))
    windows = qa_windows(tokenizer, "which module defines name 7?", context, data["max_length"], data["stride"])
    assert len(windows) > 2 and all(len(w.ids) <= data["max_length"] for w in windows)
