"""The trainer: a short LeNet-5 run on the digits rises well above chance; its checkpoint
saves and loads; evaluate() gives the same numbers; bad files and data are UsageErrors."""

import sys

import pytest
import torch
from PIL import Image

import fastcnn.models.lenet  # noqa: F401  (registers lenet5)
import fastcnn.models.nin  # noqa: F401  (registers nin_cifar10, nin_imagenet)
from fastcnn.train import (UsageError, evaluate, load_checkpoint, model_from_checkpoint,
                           save_checkpoint, train)


@pytest.fixture(autouse=True)
def one_thread():
    """LeNet-5's layers are too small to split across cores: one thread is as fast alone
    and much faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("lenet5") / "lenet5.pt"
    lines = []
    torch.set_num_threads(1)
    result = train("lenet5", epochs=2, out=str(out), progress=False, log=lines.append)
    return out, result, lines


def test_short_training_rises_well_above_chance(trained):
    out, result, lines = trained
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["test_top1_error"] < 0.2  # chance: 0.9
    assert history[-1]["loss"] < history[0]["loss"]
    assert lines[0].startswith("training lenet5 on digits (1442 training images, 355 test")
    assert "adam lr 0.003" in lines[0] and "label smoothing 0.1" in lines[0]
    for line in lines[1:3]:
        assert "loss" in line and "train top-1 error" in line and "test top-1 error" in line
        assert line.split()[-3] == "images/s"
    assert lines[-1].startswith("test accuracy") and str(out) in lines[-1]


def test_checkpoint_round_trip(trained):
    out, result, _ = trained
    checkpoint = load_checkpoint(str(out))
    assert checkpoint["model"] == "lenet5" and checkpoint["epoch"] == 2
    assert (checkpoint["num_classes"], checkpoint["in_chans"], checkpoint["image_size"]) == \
        (10, 1, [32, 32])
    assert checkpoint["data"] == "digits" and checkpoint["classes"] == list("0123456789")
    assert checkpoint["optimizer"]["param_groups"][0]["initial_lr"] == 0.003
    assert checkpoint["scheduler"]["last_epoch"] == 2
    assert checkpoint["history"] == result["history"]
    model = model_from_checkpoint(checkpoint)
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value)

    lines = []
    measured = evaluate(str(out), log=lines.append)
    assert measured["images"] == 355
    assert measured["top1_error"] == pytest.approx(result["history"][-1]["test_top1_error"])
    assert measured["loss"] == pytest.approx(result["history"][-1]["test_loss"], rel=1e-5)
    assert lines[0].startswith("lenet5 (epoch 2) on the digits test set: 355 images")
    assert evaluate(checkpoint, log=lambda line: None) == measured


def test_bad_checkpoints(trained, tmp_path):
    out = str(trained[0])
    with pytest.raises(UsageError, match="'missing.pt': no such file"):
        evaluate("missing.pt")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(UsageError, match="notes.txt' is not a fastcnn checkpoint"):
        evaluate(str(text))
    state_dict = tmp_path / "state_dict.pt"
    torch.save(model_from_checkpoint(load_checkpoint(out)).state_dict(), state_dict)
    with pytest.raises(UsageError, match="is not a fastcnn checkpoint \\(it holds a state_d"):
        evaluate(str(state_dict))
    with pytest.raises(UsageError, match="is a checkpoint of lenet5, not of nin_cifar10"):
        evaluate(out, model_name="nin_cifar10")
    mislabelled = load_checkpoint(out)
    mislabelled["model"] = "nin_cifar10"
    with pytest.raises(UsageError, match="says it is a checkpoint of nin_cifar10, but its "
                       "weights are not nin_cifar10's: Missing key"):
        evaluate(mislabelled)
    mislabelled["model"] = "lenet7"
    with pytest.raises(UsageError, match="'lenet7', which is not a registered model"):
        evaluate(mislabelled)


def make_folder(root, classes=("a", "b", "c"), per_class=4):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (20 + i, 24), (80 * c, 40 * i, 100)).save(root / name / f"{i}.png")
    return root


def test_training_on_an_image_folder(tmp_path, capsys):
    make_folder(tmp_path / "images" / "train")
    make_folder(tmp_path / "images" / "val", per_class=2)
    out = tmp_path / "folder.pt"
    lines = []
    result = train("lenet5", str(tmp_path / "images"), epochs=1, batch_size=4, out=str(out),
                   workers=0, schedule="step", log=lines.append)
    assert "(12 training images, 6 test images, 3 classes, 32 x 32)" in lines[0]
    assert "sgd lr 0.01 weight decay 0.0005, label smoothing 0, step schedule" in lines[0]
    assert "epoch 1/1:" in capsys.readouterr().err  # tqdm's bar
    checkpoint = load_checkpoint(str(out))
    assert (checkpoint["num_classes"], checkpoint["in_chans"]) == (3, 1)  # LeNet's gray
    assert checkpoint["classes"] == ["a", "b", "c"]
    measured = evaluate(str(out), workers=0, log=lambda line: None)
    assert measured["images"] == 6
    assert measured["top1_error"] == pytest.approx(result["history"][0]["test_top1_error"])
    # another folder of other classes does not fit the checkpoint
    other = make_folder(tmp_path / "other", classes=("x", "y"))
    with pytest.raises(UsageError, match="has 2 classes; the checkpoint's lenet5 has 3"):
        evaluate(str(out), str(other), workers=0)


def test_plain_progress_without_tqdm(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    folder = make_folder(tmp_path / "images", per_class=2)
    train("lenet5", str(folder), epochs=1, batch_size=2, out=str(tmp_path / "x.pt"),
          workers=0, log=lambda line: None)
    err = capsys.readouterr().err.splitlines()  # a line per quarter of the 3 batches
    assert [line.split(" loss ")[0] for line in err] == [f"epoch 1/1: {n}/3" for n in (1, 2, 3)]
    assert all(float(line.split(" loss ")[1]) > 0 for line in err)


def test_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown model 'lenet6'; registered models: .*lenet5"):
        train("lenet6", epochs=1)
    with pytest.raises(UsageError, match="--data '.*nowhere': no such directory"):
        train("lenet5", str(tmp_path / "nowhere"), epochs=1)
    with pytest.raises(UsageError, match="the digits are 32 x 32 images and this model takes "
                       "224 x 224: give --data PATH"):
        train("nin_imagenet", epochs=1)
    with pytest.raises(UsageError, match="unknown optimizer 'rmsprop'"):
        train("lenet5", epochs=1, optimizer="rmsprop", out=str(tmp_path / "x.pt"))
    with pytest.raises(UsageError, match="epochs, batch size and learning rate must be posit"):
        train("lenet5", epochs=0)


def test_save_checkpoint_holds_what_rebuilds_the_model(tmp_path):
    model = fastcnn.models.lenet.lenet5(num_classes=4, rbf_output=True)
    path = tmp_path / "rbf.pt"
    save_checkpoint(path, "lenet5", model, num_classes=4, in_chans=1, image_size=(32, 32),
                    epoch=0, model_kwargs={"rbf_output": True})
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    assert rebuilt.rbf_output
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x))
