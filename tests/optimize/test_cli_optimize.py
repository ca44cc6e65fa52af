"""`fastcnn optimize --model NAME`: the report of a torchvision or timm model, as a table or
JSON, and one-line errors for names it cannot build."""

import json

import pytest

from fastcnn.cli import main
from fastcnn.convert.rewrite import NO_PASS_SAVED


def test_report_of_a_torchvision_model(capsys):
    assert main(["optimize", "--model", "resnet18", "--check", "64"]) == 0
    out = capsys.readouterr().out
    # the three downsampling Conv -> BatchNorm pairs have nothing after them to fuse
    assert "19 swapped, 3 left" in out and out.count(NO_PASS_SAVED) == 3
    assert "conv2 -> bn2 -> + -> relu" in out and "fastcnn.nn.MaxPool2d" in out
    assert "checked: the same logits" in out


def test_json_report_of_a_timm_model(capsys):
    assert main(["optimize", "--model", "timm:resnet18", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "timm:resnet18"
    assert [left["path"] for left in report["left"]] == [
        f"layer{i}.0.downsample.1" for i in (2, 3, 4)]
    assert {"path": "layer1.0", "source": "conv2 -> bn2 -> + -> act2",
            "target": "fastcnn conv_bn_relu + residual"} in report["swapped"]


@pytest.mark.parametrize("name, message", [
    ("no_such_model", "neither torchvision nor timm has a model 'no_such_model'"),
    ("torchvision:no_such_model", "torchvision has no classification model"),
    ("keras:resnet50", "unknown source 'keras'"),
])
def test_unknown_models(capsys, name, message):
    assert main(["optimize", "--model", name]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_without_timm(capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    assert main(["optimize", "--model", "seresnet50"]) == 2
    assert "pip install fastcnn[timm]" in capsys.readouterr().err
