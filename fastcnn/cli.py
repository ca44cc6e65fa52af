"""The `fastcnn` command: `fastcnn info`, `fastcnn bench`, and `fastcnn train` / `fastcnn eval`
(fastcnn.train.cli)."""

import argparse
import json
import sys

import torch


def _default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _info(args):
    from fastcnn import backends

    info = backends.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"fastcnn {info['fastcnn']}  (torch {info['torch']}, triton {info['triton']}, "
          f"python {info['python']})")
    print(f"cpu: {info['cpu']}, {info['cpu_threads']} threads;  "
          f"cuda: {info['cuda_device'] or 'none'}")
    if info["forced_backend"]:
        print(f"forced backend: {info['forced_backend']}")
    print("backends:")
    for name, status in info["backends"].items():
        state = "available" if status["available"] else "unavailable"
        print(f"  {name:<10} {state:<12} {status['reason']}")
    built_for = info["cpp_built_for"] or "unknown (not built)"
    print(f"C++ extension built for torch {built_for}; running torch {info['torch']}")
    if info["cpp_build"]:
        build = info["cpp_build"]
        print(f"C++ extension: built with {build['compiler']} against torch {build['torch']}, "
              f"OpenMP {'on' if build['openmp'] else 'off'}, vectors: {build['vector_targets']}")
    return 0


def _selected_cases(args, device, batch):
    """The op, module and model cases that `fastcnn bench` runs, and whether any is a quick
    CPU subset. Naming ops, modules or models times only those; naming none times all.
    On CPU, without --full or a name, their quick cases (a few minutes on 2 cores)."""
    from fastcnn import benchmarking, benchmarking_models, benchmarking_modules

    cpu = torch.device(device).type == "cpu"
    layouts = {"both": (False, True), "nchw": (False,), "channels_last": (True,)}[args.layout]
    modes = benchmarking.MODES if args.mode == "both" else (args.mode,)
    named = args.ops is not None or args.modules is not None or args.models is not None
    quick = {kind: cpu and not args.full and getattr(args, kind) is None
             for kind in ("ops", "modules", "models")}
    case_list = module_list = model_list = []
    if args.ops is not None or not named:
        case_list = benchmarking.cases(ops=args.ops or sorted(benchmarking.OPS), batch=batch,
                                       layouts=layouts, modes=modes, quick=quick["ops"])
    for kind, specs, skip in (("modules", benchmarking_modules.MODULES, args.no_modules),
                              ("models", benchmarking_models.MODELS, args.no_models)):
        names = getattr(args, kind)
        if names is None and (named or skip):
            continue
        selected = benchmarking_modules.module_cases(
            names=names or tuple(specs), device=device, batch=args.batch, layouts=layouts,
            modes=modes, quick=quick[kind], full=args.full, compile=not args.no_compile,
            specs=specs)
        if kind == "modules":
            module_list = selected
        else:
            model_list = selected
    quick = any(quick[kind] and cases for kind, cases in
                (("ops", case_list), ("modules", module_list), ("models", model_list)))
    return case_list, module_list, model_list, quick


def _bench(args):
    from fastcnn import benchmarking, benchmarking_modules

    device = args.device or _default_device()
    batch = args.batch or (16 if torch.device(device).type == "cpu" else 128)
    implementations = ("fastcnn", "eager") if args.no_compile else benchmarking.IMPLEMENTATIONS
    case_list, module_list, model_list, quick = _selected_cases(args, device, batch)
    env = benchmarking.environment(device)
    print(f"fastcnn bench on {env['device']} (torch {env['torch']}, triton {env['triton']}); "
          f"median of {args.repeats} runs each, float32"
          f"{f', ops at batch {batch}' if case_list else ''}"
          f"{'; quick subset (--full for all)' if quick else ''}", flush=True)
    if env["allocator"]:
        print(f"allocator: {env['allocator']}", flush=True)
    log = (lambda message: print(f"  timing {message}", file=sys.stderr, flush=True)) \
        if args.verbose else None
    results = benchmarking.run(case_list, device, implementations, args.repeats, log)
    if results:
        print(benchmarking.format_table(results, implementations))
        print("vs X: fastcnn's speedup over X (higher is better); GB/s: the fewest bytes the op "
              "must move over fastcnn's time, and that as a fraction of a same-size copy (n/a "
              "for compute-bound ops). conv_bn_relu: forward is inference (eval mode), "
              "forward+backward a training step.", flush=True)
    modules = benchmarking_modules.run(module_list, device, args.repeats, log=log)
    if modules:
        print()
        print(benchmarking_modules.format_table(modules))
        print(benchmarking_modules.describe(device))
    models = benchmarking_modules.run(model_list, device, args.repeats, log=log)
    if models:
        print()
        print("zoo models against the same networks on PyTorch's layers (eager: torchvision's "
              "model where it has one), same weights; torchvision.* and timm.*: the model "
              "itself against fastcnn.optimize(model)")
        print(benchmarking_modules.format_table(models))
        print(benchmarking_modules.describe(device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results, "modules": modules,
                       "models": models}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastcnn", description="Fast kernels for classic CNNs: status, benchmarks, "
        "training and evaluation of the model zoo.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions and which kernel backends can run here")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=_info)

    from fastcnn.benchmarking import MODES, OPS
    from fastcnn.benchmarking_models import MODELS
    from fastcnn.benchmarking_modules import MODULES

    bench = commands.add_parser(
        "bench", help="time fastcnn's ops and modules against PyTorch eager and torch.compile "
        "(modules: their peak memory too)")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    bench.add_argument("--ops", nargs="+", choices=sorted(OPS),
                       help="ops to time, every case of each (default: all ops unless "
                       "--modules is given; on CPU only their quick cases unless --full)")
    modules = bench.add_mutually_exclusive_group()
    modules.add_argument("--modules", nargs="+", choices=list(MODULES),
                         help="modules to time, every case of each (default: all of them, "
                         "after the ops; on CPU only their quick cases unless --full)")
    modules.add_argument("--no-modules", action="store_true", help="leave the modules out")
    models = bench.add_mutually_exclusive_group()
    models.add_argument("--models", nargs="*", choices=list(MODELS),
                        help="zoo models to time against the same network on PyTorch's "
                        "layers, and torchvision.*/timm.* models against fastcnn.optimize of "
                        "them, every case of each (alone: all of them; default: all, on "
                        "CPU only inference of six at batch 8 unless --full)")
    models.add_argument("--no-models", action="store_true", help="leave the models out")
    bench.add_argument("--full", action="store_true",
                       help="every case of every op, module and model, and torch.compile for "
                       "every module and model (on CPU the default is a quick subset)")
    bench.add_argument("--batch", type=int, help="batch size (default: 16 on CPU, 128 on GPU for "
                       "ops; each module's own, smaller ones in the quick CPU subset)")
    bench.add_argument("--layout", choices=["both", "nchw", "channels_last"], default="both")
    bench.add_argument("--mode", choices=["both", *MODES], default="both",
                       help="the pass: inference, a training step, or both")
    bench.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    bench.add_argument("--no-compile", action="store_true",
                       help="skip the torch.compile baseline (it compiles for minutes on CPU)")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("-v", "--verbose", action="store_true", help="log each measurement")
    bench.set_defaults(handler=_bench)
    from fastcnn.train.cli import add_commands
    add_commands(commands)
    from fastcnn.convert.cli import add_command
    add_command(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
