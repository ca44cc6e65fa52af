"""`fastcnn train` and `fastcnn eval`, run in-process through fastcnn.cli.main: a short
LeNet-5 run on the digits, its checkpoint evaluated again, and the errors (a bad --data
path, an unknown model, a file that is not a checkpoint or not of the model) as one line
on stderr and exit status 2, without a traceback."""

import pytest
import torch

import fastcnn.models.lenet  # noqa: F401  (registers lenet5)
import fastcnn.models.nin  # noqa: F401  (registers nin_cifar10)
from fastcnn.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tmp_path_factory.mktemp("cli") / "lenet5.pt"


def test_train_then_eval(checkpoint, capsys):
    assert main(["train", "lenet5", "--epochs", "1", "--batch-size", "128", "--lr", "0.005",
                 "--schedule", "step", "--out", str(checkpoint)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("training lenet5 on digits (1442 training images, 355 test")
    assert "1 epochs, batch 128, adam lr 0.005" in lines[0] and "step schedule" in lines[0]
    assert lines[1].startswith("epoch 1/1  loss ") and "images/s" in lines[1]
    assert lines[2].startswith("test accuracy") and str(checkpoint) in lines[2]
    assert "epoch 1/1:" in captured.err  # the progress bar
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["model"] == "lenet5" and saved["epoch"] == 1

    assert main(["eval", str(checkpoint), "--model", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lenet5 (epoch 1) on the digits test set: 355 images, loss")
    assert "top-1 error" in out and "top-5 error" in out


def test_no_progress(tmp_path, capsys):
    assert main(["train", "lenet5", "--epochs", "1", "--no-progress", "--out",
                 str(tmp_path / "x.pt")]) == 0
    assert capsys.readouterr().err == ""


def run_failing(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2
    assert "Traceback" not in captured.err + captured.out
    assert len(captured.err.strip().splitlines()) == 1
    return captured.err


def test_train_errors(tmp_path, capsys):
    err = run_failing(["train", "lenet5", "--data", str(tmp_path / "nowhere")], capsys)
    assert err.startswith("fastcnn train: error: --data ")
    assert "nowhere': no such directory" in err
    err = run_failing(["train", "lenet6"], capsys)
    assert err.startswith("fastcnn train: error: unknown model 'lenet6'; registered models:")
    assert "lenet5" in err
    (tmp_path / "empty").mkdir()
    err = run_failing(["train", "lenet5", "--data", str(tmp_path / "empty")], capsys)
    assert "empty' is not an image folder" in err


def test_eval_errors(checkpoint, tmp_path, capsys):
    if not checkpoint.exists():
        main(["train", "lenet5", "--epochs", "1", "--no-progress", "--out", str(checkpoint)])
        capsys.readouterr()
    err = run_failing(["eval", str(checkpoint), "--model", "nin_cifar10"], capsys)
    assert err == (f"fastcnn eval: error: {str(checkpoint)!r} is a checkpoint of lenet5, not "
                   f"of nin_cifar10\n")
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    err = run_failing(["eval", str(text)], capsys)
    assert f"{str(text)!r} is not a fastcnn checkpoint" in err
    err = run_failing(["eval", str(tmp_path / "gone.pt")], capsys)
    assert "gone.pt': no such file" in err
    mislabelled = torch.load(checkpoint, weights_only=True)
    mislabelled["model"] = "nin_cifar10"
    torch.save(mislabelled, tmp_path / "mislabelled.pt")
    err = run_failing(["eval", str(tmp_path / "mislabelled.pt")], capsys)
    assert "says it is a checkpoint of nin_cifar10, but its weights are not" in err
    err = run_failing(["eval", str(checkpoint), "--data", str(tmp_path / "nowhere")], capsys)
    assert "nowhere': no such directory" in err


def test_unknown_schedule_is_argparses_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", "lenet5", "--schedule", "linear"])
    assert exit.value.code == 2
    assert "invalid choice: 'linear'" in capsys.readouterr().err
