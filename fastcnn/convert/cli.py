"""`fastcnn optimize --model NAME`: fastcnn.optimize's report for a torchvision or timm
model (random weights: nothing is downloaded)."""

import json
import sys


def _build(name):
    """The model called name: "torchvision:NAME", "timm:NAME", or a bare NAME looked up in
    torchvision's classification models, then timm's."""
    import torchvision

    source, _, model = name.rpartition(":")
    if source not in ("", "torchvision", "timm"):
        raise ValueError(f"--model: unknown source {source!r}; use torchvision:NAME or "
                         f"timm:NAME")
    if source in ("", "torchvision") and model in torchvision.models.list_models(
            module=torchvision.models):
        return torchvision.models.get_model(model)
    if source == "torchvision":
        raise ValueError(f"--model: torchvision has no classification model {model!r}")
    try:
        import timm
    except ImportError:
        raise ValueError(f"--model: {model!r} is not a torchvision model, and timm is not "
                         f"installed (pip install fastcnn[timm])") from None
    if not timm.is_model(model):
        raise ValueError(f"--model: neither torchvision nor timm has a model {model!r}")
    return timm.create_model(model, pretrained=False)


def _optimize(args):
    import torch

    import fastcnn

    try:
        model = _build(args.model)
    except ValueError as error:
        print(f"fastcnn optimize: {error}", file=sys.stderr)
        return 2
    example = None
    if args.check:
        example = torch.randn(2, 3, args.check, args.check)
    optimized = fastcnn.optimize(model, inplace=True, example_input=example)
    report = optimized.fastcnn_report
    if args.json:
        print(json.dumps({"model": args.model, **report.to_dict()}, indent=2))
    else:
        print(f"{args.model}:")
        print(report)
        if args.check:
            print(f"\nchecked: the same logits on a random {args.check} x {args.check} batch")
    return 0


def add_command(commands):
    parser = commands.add_parser(
        "optimize", help="what fastcnn.optimize swaps in a torchvision or timm model")
    parser.add_argument("--model", required=True,
                        help="a torchvision or timm model name (torchvision:NAME, timm:NAME)")
    parser.add_argument("--check", type=int, nargs="?", const=224, metavar="SIZE",
                        help="also compare the logits before and after on a random batch of "
                        "SIZE x SIZE images (default 224)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_optimize)
