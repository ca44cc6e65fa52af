"""`fastcnn train MODEL` and `fastcnn eval CHECKPOINT`: add_commands(subparsers) adds them
to the `fastcnn` command line. Bad arguments (a data path that is not there, a model name
that is not registered, a file that is not a checkpoint of the model) print one line
naming them and exit with status 2, without a traceback."""

import sys

from fastcnn.train.errors import UsageError
from fastcnn.train.schedules import SCHEDULES


def _train(args):
    from fastcnn.train.trainer import train

    try:
        train(args.model, args.data, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
              schedule=args.schedule, label_smoothing=args.label_smoothing, out=args.out,
              device=args.device, seed=args.seed, progress=not args.no_progress)
    except UsageError as error:
        print(f"fastcnn train: error: {error}", file=sys.stderr)
        return 2
    return 0


def _eval(args):
    from fastcnn.train.trainer import evaluate

    try:
        evaluate(args.checkpoint, args.data, batch_size=args.batch_size, device=args.device,
                 model_name=args.model)
    except UsageError as error:
        print(f"fastcnn eval: error: {error}", file=sys.stderr)
        return 2
    return 0


def add_commands(subparsers):
    """Adds `train` and `eval` to the subparsers of the `fastcnn` command."""
    from fastcnn.train.trainer import OPTIMIZERS, RECIPES

    digits, folder = RECIPES["digits"], RECIPES["folder"]

    def default(key):
        return f"(default: {digits[key]:g} on the digits, {folder[key]:g} on --data)"

    train = subparsers.add_parser(
        "train", help="train a model of the zoo (default: scikit-learn's digits), printing "
        "loss, top-1 error and images/s per epoch, and save a checkpoint")
    train.add_argument("model", help="a registered model name (lenet5, nin_cifar10, ...)")
    train.add_argument("--data", metavar="PATH",
                       help="an image folder (one subfolder per class; with train/ and val/ "
                       "or test/ subfolders, those), resized to the model's input size "
                       "(default: the digits, 32 x 32, for 32 x 32 models)")
    train.add_argument("--epochs", type=int, help=f"epochs {default('epochs')}")
    train.add_argument("--batch-size", type=int, help=f"batch size {default('batch_size')}")
    train.add_argument("--lr", type=float, help=f"initial learning rate {default('lr')}")
    train.add_argument("--optimizer", choices=OPTIMIZERS,
                       help=f"(default: {digits['optimizer']} on the digits, "
                       f"{folder['optimizer']} with momentum 0.9 on --data)")
    train.add_argument("--weight-decay", type=float, help=default("weight_decay"))
    train.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                       help="learning-rate schedule, per epoch: step (x0.1 at 50%% and 75%% "
                       "of the epochs) or cosine (to 0; the default)")
    train.add_argument("--label-smoothing", type=float,
                       help=f"label smoothing epsilon, as Inception-v3's 0.1 "
                       f"{default('label_smoothing')}")
    train.add_argument("--out", metavar="CHECKPOINT",
                       help="where to save the checkpoint, after every epoch "
                       "(default: MODEL.pt)")
    train.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "eval", help="evaluate a checkpoint of `fastcnn train`: loss, top-1 and top-5 error")
    evaluate.add_argument("checkpoint", help="a checkpoint saved by fastcnn train")
    evaluate.add_argument("--data", metavar="PATH",
                          help="an image folder (its val/ or test/ subfolder when it has "
                          "one) (default: the test set of the data it was trained on)")
    evaluate.add_argument("--model", help="fail unless the checkpoint is of this model")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    evaluate.set_defaults(handler=_eval)
