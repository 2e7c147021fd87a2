"""``--model`` on sample, calibrate, invert, likelihood, generate and evaluate: the commands take the prediction
type, forward process, sample shape, data and features from the registry entry (ei_toolkit.models.registry), never
digits constants; an unknown name is a one-line usage error with a did-you-mean. A stand-in flow model with RGB
samples of another shape is registered for the test."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ei_toolkit as ei
from ei_toolkit.cli import main
from ei_toolkit.models import registry
from ei_toolkit.models.registry import ShippedModel

SHAPE = (3, 4, 4)


class ToyVelocity(torch.nn.Module):
    """A flow model v(x, t) = x - 0.25 (x0 = 0.25 at pure noise): defined at t = 1, where an eps-model is not."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor([0.25]))  # 1-D: files.model_id cannot hash a 0-d one
        self.times: list[float] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert tuple(x.shape[1:]) == SHAPE, x.shape
        self.times += t.reshape(-1).tolist()[:1]
        return x - self.offset.to(x.dtype)


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 17, (80, *SHAPE), generator=g).float()
    x = levels / 16 * 2 - 1
    return x[:60], x[60:]


def toy_entry(**change) -> ShippedModel:
    fields = {"name": "toy-flow", "description": "a stand-in flow model",
              "load": lambda device: ToyVelocity().to(device), "sde": ei.RectifiedFlow, "prediction": "flow",
              "shape": SHAPE, "script": "none", "data": toy_data,
              "features": lambda x: x.flatten(1)[:, :6].double(), "levels": 16}
    return ShippedModel(**{**fields, **change})


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry._FACTORIES, "toy-flow", toy_entry)
    monkeypatch.setitem(registry._FACTORIES, "toy-eps", lambda: toy_entry(name="toy-eps", sde=ei.DiscreteVP.linear,
                                                                           prediction="eps"))
    monkeypatch.setitem(registry._FACTORIES, "toy-plain", lambda: toy_entry(name="toy-plain", features=None,
                                                                             levels=None, data=None))


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("command", [["sample"], ["calibrate"], ["invert"], ["likelihood"],
                                     ["generate", "-n", "2", "--out", "g"], ["evaluate", "g"]])
def test_an_unknown_model_is_a_usage_error_with_a_did_you_mean(command, capsys):
    code, err = run_main([*command, "--model", "digit"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "--model: unknown model 'digit'; valid models: digits" in err and err.rstrip().endswith("'digits'?"), err


def test_model_help_lists_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--model NAME the shipped model to sample: {', '.join(registry.model_names())} (default: digits)" in text


def test_sample_takes_shape_prediction_and_process_from_the_entry(toy, capsys):
    assert main(["sample", "--model", "toy-flow", "--n", "5", "--nfe", "4", "--cols", "3"]) == 0
    assert "5 samples with" in capsys.readouterr().out
    with Image.open("toy-flow.png") as im:  # the default name follows the model, in the working directory
        assert im.mode == "RGB" and im.size == ((3 * 5 + 1) * 4, (2 * 5 + 1) * 4)


def test_generate_and_evaluate_another_model(toy, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["generate", "--model", "toy-flow", "-n", "12", "--out", str(out), "--nfe", "4", "--shard-size", "5",
                 "--block", "4", "--no-progress", "--evaluate"]) == 0
    printed = capsys.readouterr().out
    assert "12 samples generated" in printed and "FD " in printed and "held-out samples of --model toy-flow" in printed
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["shape"] == list(SHAPE) and config["prediction"] == "flow" and "RectifiedFlow" in config["sde"]
    _, x = ei.load_shards(out)
    assert x.shape == (12, *SHAPE) and np.isfinite(x).all()
    code, err = run_main(["generate", "--model", "toy-flow", "-n", "4", "--out", str(tmp_path / "g"), "--guidance",
                          "2"], capsys)
    assert code == 2 and "--guidance: only --model digits" in err and not (tmp_path / "g").exists()
    code, err = run_main(["generate", "--model", "toy-plain", "-n", "4", "--out", str(tmp_path / "p"), "--evaluate"],
                         capsys)
    assert code == 2 and "no features" in err and not (tmp_path / "p").exists()


def test_invert_and_likelihood_use_the_entrys_data(toy, capsys):
    assert main(["invert", "--model", "toy-flow", "--n", "4", "--nfe", "6"]) == 0
    assert "4 held-out samples encoded" in capsys.readouterr().out
    assert main(["likelihood", "--model", "toy-flow", "--n", "4", "--nfe", "8"]) == 0
    assert "4 held-out samples (dequantised)" in capsys.readouterr().out
    code, err = run_main(["likelihood", "--model", "toy-flow", "--n", "100"], capsys)
    assert code == 2 and "--n: there are 20 held-out samples; got 100" in err
    code, err = run_main(["likelihood", "--model", "toy-plain"], capsys)
    assert code == 2 and "no quantisation levels" in err
    code, err = run_main(["invert", "--model", "toy-plain"], capsys)
    assert code == 2 and "its data are not shipped" in err


def test_calibrate_another_model_into_its_own_cache_folder(toy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    small = ["--draws", "8", "--nodes", "8", "--grid-draws", "2", "--max-solves", "3"]
    assert main(["calibrate", "--model", "toy-eps", "--nfe", "5", *small]) == 0
    folder = tmp_path / "cache" / "ei_toolkit" / "toy-eps_calibration"
    assert (folder / "statistics.pt").is_file()
    assert f"ei-toolkit sample --model toy-eps --calibration {folder} --nfe 5" in capsys.readouterr().out
    assert main(["sample", "--model", "toy-eps", "--n", "2", "--nfe", "5", "--calibration", str(folder)]) == 0
    code, err = run_main(["sample", "--n", "2", "--nfe", "5", "--calibration", str(folder)], capsys)
    assert code == 2 and "statistics.pt" in err  # the digits model refuses the toy model's statistics


def test_missing_weights_are_a_one_line_error_naming_the_script(monkeypatch, capsys):
    def missing(device):
        raise FileNotFoundError("weights.pt is missing: run python examples/train_toy.py --out weights.pt")

    monkeypatch.setitem(registry._FACTORIES, "toy-untrained", lambda: toy_entry(name="toy-untrained", load=missing))
    code, err = run_main(["sample", "--model", "toy-untrained", "--n", "2"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--model toy-untrained: weights.pt is missing: run python examples/train_toy.py" in err


def test_a_base_install_samples_and_names_the_extra_it_lacks(monkeypatch, capsys):
    """Without the extras (matplotlib, scikit-learn: a plain pip install), sample runs and the commands that need an
    extra say which one in one line, before any work."""
    modules = __import__("sys").modules
    for name in [m for m in modules if m.split(".")[0] in ("matplotlib", "sklearn")] + ["matplotlib", "sklearn"]:
        monkeypatch.setitem(modules, name, None)  # importing it (or a submodule loaded earlier) raises ImportError
    assert main(["sample", "--n", "2", "--nfe", "3"]) == 0
    with Image.open("digits.png") as im:
        assert im.mode == "L"
    capsys.readouterr()
    for argv in (["invert", "--n", "2"], ["likelihood", "--n", "2"], ["compare", "--n", "2", "--nfe", "5"]):
        code, err = run_main(argv, capsys)
        assert code == 2 and "pip install 'ei_toolkit[bench]'" in err and len(err.strip().splitlines()) == 1, err
