"""`--weights FILE`: the user's trained weights as generation 0 (torch.save or safetensors), every bad file a
one-line error (exit 2, nothing written), and a run that records and rechecks the file."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from host_trainer.cli import app
from host_trainer.config import EvolveConfig
from host_trainer.errors import UserError
from host_trainer.loop import checkpoint as ckpt
from host_trainer.models.registry import build_model
from host_trainer.models.weights import file_sha256, load_weights, read_state_dict

SHAPE = (1, 8, 8)
QUICK = ["--model", "mlp", "--dataset", "digits", "--image-size", "8", "--no-mqtt", "--epochs", "0.5",
         "--env-factor", "0.7", "--max-accuracy-drop", "100", "--bench-min-seconds", "0.05",
         "--bench-min-iterations", "10"]


def _mlp(seed=1):
    torch.manual_seed(seed)
    return build_model("mlp", 10, SHAPE)


@pytest.mark.parametrize("form", ["bare", "state_dict", "model", "module-prefix", "safetensors"])
def test_every_common_form_loads(form, tmp_path):
    source, state = _mlp(), _mlp().state_dict()
    path = tmp_path / "w.pt"
    if form == "safetensors":
        path = tmp_path / "w.bin"  # found by its header, whatever the name
        save_file(state, str(path))
    else:
        wrapped = {"bare": state, "state_dict": {"state_dict": state, "epoch": 3},
                   "model": {"model": state, "optimizer": {}},
                   "module-prefix": {f"module.{k}": v for k, v in state.items()}}[form]
        torch.save(wrapped, path)
    target = _mlp(seed=2)
    load_weights(target, path)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())


def test_fp16_weights_are_loaded_as_the_model_s_dtype(tmp_path):
    state = {k: v.half() for k, v in _mlp().state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    target = _mlp(seed=2)
    load_weights(target, tmp_path / "w.pt")
    assert target.fc1.weight.dtype == torch.float32 and torch.equal(target.fc1.weight, state["fc1.weight"].float())


class NotATensor:
    pass


def _bad_files(tmp_path: Path) -> dict:
    state = _mlp().state_dict()
    files = {"missing": tmp_path / "nope.pt", "garbage": tmp_path / "garbage.pt",
             "pickle": tmp_path / "pickle.pt", "no tensors": tmp_path / "empty.pt",
             "wrong keys": tmp_path / "keys.pt", "wrong shape": tmp_path / "shape.pt"}
    files["garbage"].write_bytes(b"this is not a weights file")
    torch.save({"fc1.weight": NotATensor()}, files["pickle"])
    torch.save({"epoch": 3}, files["no tensors"])
    torch.save({**{f"renamed.{k}": v for k, v in state.items()}, "fc2.weight": state["fc2.weight"]},
               files["wrong keys"])
    torch.save({**state, "fc3.weight": torch.zeros(10, 7)}, files["wrong shape"])
    return files


EXPECTED = {"missing": "file not found", "garbage": "cannot read", "pickle": "cannot read",
            "no tensors": "no tensors", "wrong keys": "missing: fc1.weight, fc1.bias, fc2.bias (+2 more); "
            "unexpected: renamed.fc1.weight, renamed.fc1.bias, renamed.fc2.weight (+3 more)",
            "wrong shape": "wrong shape: fc3.weight [10, 7] (model: [10, 100])"}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_bad_file_is_one_user_error_naming_the_problem(case, tmp_path):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(UserError) as info:
        load_weights(_mlp(), path, "mlp")
    assert EXPECTED[case] in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["missing", "pickle", "wrong shape"])
def test_a_bad_file_exits_2_before_anything_is_written(case, tmp_path):
    path, runs = _bad_files(tmp_path)[case], tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), *QUICK, "--weights", str(path)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and EXPECTED[case] in lines[0]
    assert not runs.exists()


def test_gen0_epochs_0_needs_weights_and_auto_or_a_number_is_asked(tmp_path):
    for value, message in (("0", "needs --weights"), ("soon", "a number of epochs or 'auto'"), ("-1", ">= 0")):
        result = CliRunner().invoke(app, ["evolve", "--run-dir", str(tmp_path / "r"), *QUICK, "--gen0-epochs", value])
        assert result.exit_code == 2 and message in result.output, result.output
    assert EvolveConfig.for_task("classify", weights="w.pt").gen0_epochs == 0.0  # with weights: used as given
    assert EvolveConfig.for_task("classify").gen0_epochs == "auto"


def test_a_run_from_weights_starts_from_them_and_resumes_without_them(tmp_path):
    weights = tmp_path / "trained.safetensors"
    save_file(_mlp().state_dict(), str(weights))
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), *QUICK, "--generations", "1",
                                      "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["weights"] == str(weights.resolve()) and config["weights_sha256"] == file_sha256(weights)
    assert config["gen0_epochs"] == 0.0
    gen0 = json.loads((run / "generations.jsonl").read_text().splitlines()[0])
    assert gen0["weights_sha256"] == file_sha256(weights) and gen0["epochs_trained"] == 0.0
    assert gen0["train_loss"] is None
    loaded = ckpt.read_checkpoint(run / "gen-000").model  # the given weights, restricted to fp16
    assert torch.equal(loaded.fc1.weight, _mlp().fc1.weight.half().float())
    # generation 0 is done: the file is not needed again
    weights.unlink()
    result = CliRunner().invoke(app, ["evolve", "--resume", str(run), "--generations", "2"])
    assert result.exit_code == 0, result.output


def test_a_resume_before_generation_0_refuses_changed_weights(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(_mlp().state_dict(), weights)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), *QUICK, "--generations", "0",
                                      "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    shutil.rmtree(run / "gen-000")  # as if killed during generation 0
    (run / "generations.jsonl").write_text("")
    torch.save(_mlp(seed=3).state_dict(), weights)
    result = CliRunner().invoke(app, ["evolve", "--resume", str(run)])
    assert result.exit_code == 2 and "changed since the run started" in result.output


def test_read_state_dict_refuses_arbitrary_objects(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, tmp_path / "w.pt")
    with pytest.raises(UserError, match="cannot read"):
        read_state_dict(tmp_path / "w.pt")
