"""`host-trainer evolve --config FILE`: a run's config.json repeats the run, a TOML file sets options by name, the
command line and the environment override the file, and a bad key or value is one line and exit 2. Also the
options that joined with it (--batch-size, --lr, --max-attempts, the listed choices), --version and completion.

The CLI is run up to the resolved configuration only (`_run_evolve` is replaced): nothing trains here."""

import dataclasses
import inspect
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from host_trainer import __version__, cli
from host_trainer.config import RECORDED, EvolveConfig
from host_trainer.errors import UserError
from host_trainer.rundir import RunDir


@pytest.fixture
def resolve(monkeypatch):
    """Run `host-trainer evolve ARGS` through option parsing; the EvolveConfig it would start, or the result."""
    def run(args, env=None):
        seen = {}
        monkeypatch.setattr(cli, "_run_evolve", lambda task, env_factor, given, *_: seen.update(
            cfg=cli.new_config(task, env_factor, given)))
        result = CliRunner().invoke(cli.app, ["evolve", *args], env=env)
        return seen.get("cfg"), result
    return run


def _written(tmp_path, cfg: EvolveConfig):
    """config.json as a run writes it (rundir.RunDir.write_config)."""
    RunDir(tmp_path).write_config(cfg.to_dict())
    return tmp_path / "config.json"


SOME_RUN = EvolveConfig.for_task(
    "classify", model="mlp", dataset="digits", image_size=16, generations=2, epochs=1.0, gen0_epochs=3.0,
    final_epochs=0.0, precision_format="bf16", alpha_c=0.7, alpha_s=0.9, probability_model="darwin", tau=0.5,
    channel_multiple=8, init="reinit", seed=7, max_accuracy_drop=100.0, max_attempts=2, batch_size=32, lr=0.01,
    train_subset=100, bench_min_seconds=0.1, bench_min_iterations=20, no_mqtt=True, probes=False,
    allocation="magnitude", target_fps=50.0, hold=3, offspring=2, train_device="cpu")


@pytest.mark.parametrize("cfg", [SOME_RUN, EvolveConfig.for_task("detect"), EvolveConfig(gen0_epochs="auto")],
                         ids=["classify", "detect", "defaults"])
def test_a_run_config_json_repeats_the_run(resolve, tmp_path, cfg):
    resolved, result = resolve(["--config", str(_written(tmp_path, cfg))])
    assert result.exit_code == 0, result.output
    assert resolved == cfg


def test_recorded_fields_are_ignored_and_the_run_directory_is_not_part_of_the_file(resolve, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**SOME_RUN.to_dict(), "world_size": 4, "weights_sha256": "ab" * 32}))
    resolved, result = resolve(["--config", str(path)])
    assert result.exit_code == 0, result.output
    assert resolved == SOME_RUN  # measured again when the run starts
    assert set(RECORDED) <= set(EvolveConfig().to_dict())


def test_a_toml_file_sets_options_by_name_and_the_command_line_and_environment_win(resolve, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "mlp"\ndataset = "digits"\nepochs = 2\ngen0-epochs = "auto"\nseed = 3\n'
                    'env_factor = 0.7\nprecision = "fp32"\ndevice = []\nno_probes = true\nbatch_size = 16\n'
                    'run_dir = "elsewhere"\ntask = "classify"\n')
    resolved, result = resolve(["--config", str(path), "--epochs", "5", "--seed", "9"],
                               env={"HOST_TRAINER_SEED": "4", "HOST_TRAINER_BATCH_SIZE": "8"})
    assert result.exit_code == 0, result.output
    assert (resolved.model, resolved.dataset, resolved.gen0_epochs) == ("mlp", "digits", "auto")  # the file
    assert (resolved.alpha_c, resolved.alpha_s, resolved.precision_format, resolved.probes) == (0.7, 0.7, "fp32",
                                                                                                False)
    assert resolved.epochs == 5.0 and resolved.seed == 9  # the command line, over the file and the environment
    assert resolved.batch_size == 8  # the environment, over the file
    assert resolved.lr == EvolveConfig().lr and resolved.generations == EvolveConfig().generations  # the defaults
    from_cli, _ = resolve(["--config", str(path)], env={"HOST_TRAINER_CONFIG": str(tmp_path / "missing.toml")})
    assert from_cli.seed == 3  # --config itself: the command line's file, not the environment's


def test_the_file_can_come_from_the_environment_and_a_variable_turns_its_flag_off(resolve, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lr = 0.2\nno_mqtt = true\n')
    resolved, result = resolve([], env={"HOST_TRAINER_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    assert resolved.lr == 0.2 and resolved.no_mqtt
    assert not resolve(["--config", str(path)], env={"HOST_TRAINER_NO_MQTT": "0"})[0].no_mqtt


def test_batch_size_lr_and_max_attempts_reach_the_config(resolve):
    resolved, result = resolve(["--batch-size", "32", "--lr", "0.01", "--max-attempts", "5"])
    assert result.exit_code == 0, result.output
    assert (resolved.batch_size, resolved.lr, resolved.max_attempts) == (32, 0.01, 5)
    assert resolve(["--task", "detect"])[0].batch_size == 64  # the task's default still applies
    _, bad = resolve(["--lr", "0"])  # the run's own check (the CLI prints it as one `error:` line)
    assert isinstance(bad.exception, UserError) and "--lr > 0" in str(bad.exception)


BAD_FILES = {
    "unknown key": ('model = "mlp"\nbogus = 1\n', "'bogus'"),
    "wrong type": ('epochs = "three"\n', "'epochs' must be a number, got 'three'"),
    "integer wanted": ("seed = 1.5\n", "'seed' must be an integer"),
    "flag": ('no_mqtt = "yes"\n', "'no_mqtt' must be true or false"),
    "choice": ('allocation = "random"\n', "'allocation' must be one of device, magnitude"),
    "two keys, one option": ('precision = "fp16"\nprecision_format = "bf16"\n', "set the same option"),
    "a file in a file": ('config = "other.toml"\n', "'config'"),
    "not TOML": ("model = \n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_one_line_exit_2_and_writes_nothing(resolve, tmp_path, case):
    text, fragment = BAD_FILES[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    resolved, result = resolve(["--config", str(path), "--run-dir", str(tmp_path / "runs")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and resolved is None
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and fragment in lines[0], result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, fragment", [("bogus = 1\n", "unknown key 'bogus'"),
                                            ("lr = [1]\n", "'lr' must be a number")], ids=["key", "type"])
def test_a_bad_file_as_a_subprocess(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "host_trainer.cli", "evolve", "--config", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_every_config_field_is_an_option_or_recorded():
    """--config config.json repeats a run only if each field it holds is an option's (or recorded only)."""
    fields = {f.name for f in dataclasses.fields(EvolveConfig)}
    options = set(cli._given(dict.fromkeys(inspect.signature(cli.evolve).parameters)))
    assert fields - options - {"task", "alpha_c", "alpha_s"} == set(RECORDED)


def test_choices_are_listed_in_the_help():
    result = CliRunner().invoke(cli.app, ["evolve", "--help"], env={"COLUMNS": "400", "TERM": "dumb"})
    text = " ".join(result.output.split())
    for choices in ("classify|detect", "fp16|bf16|fp32", "calibrated|darwin", "inherit|reinit", "device|magnitude"):
        assert choices in text, choices
    for option in ("--config", "--batch-size", "--lr", "--max-attempts"):
        assert option in text


def test_a_value_outside_the_choices_is_one_line_exit_2(resolve):
    resolved, result = resolve(["--allocation", "random"])
    assert result.exit_code == 2 and resolved is None and "'random' is not one of" in result.output


def test_version():
    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"host-trainer {__version__}"


def test_shell_completion_prints_a_script_and_completes_choices(tmp_path):
    run = [sys.executable, "-m", "host_trainer.cli"]
    # In bash, as a user runs it: typer names the shell after the nearest shell parent (tests/test_edge_cli.py).
    script = subprocess.run(["bash", "-c", '"$@"; exit $?', "bash", *run, "--show-completion", "bash"],
                            capture_output=True, text=True, timeout=120)
    assert script.returncode == 0 and "_HOST_TRAINER_COMPLETE=complete_bash" in script.stdout, script.stderr
    assert "complete -o default -F _host_trainer_completion host-trainer" in script.stdout
    env = {**os.environ, "_HOST_TRAINER_COMPLETE": "complete_bash", "COMP_WORDS": "host-trainer evolve --allocation ",
           "COMP_CWORD": "3"}
    offered = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert offered.stdout.split() == ["device", "magnitude"], offered.stderr
