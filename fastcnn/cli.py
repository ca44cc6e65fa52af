"""The `fastcnn` command: `fastcnn info` and `fastcnn bench`."""

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
    if info["cpp_build"]:
        build = info["cpp_build"]
        print(f"C++ extension: built with {build['compiler']} against torch {build['torch']}, "
              f"OpenMP {'on' if build['openmp'] else 'off'}, vectors: {build['vector_targets']}")
    return 0


def _bench(args):
    from fastcnn import benchmarking

    device = args.device or _default_device()
    batch = args.batch or (128 if torch.device(device).type == "cuda" else 16)
    layouts = {"both": (False, True), "nchw": (False,), "channels_last": (True,)}[args.layout]
    implementations = ("fastcnn", "eager") if args.no_compile else benchmarking.IMPLEMENTATIONS
    # On CPU, without --full or --ops, each op's quick cases (about two minutes on 2 cores)
    quick = torch.device(device).type == "cpu" and not args.full and args.ops is None
    case_list = benchmarking.cases(ops=args.ops or sorted(benchmarking.OPS), batch=batch,
                                   layouts=layouts, quick=quick)
    env = benchmarking.environment(device)
    print(f"fastcnn bench on {env['device']} (torch {env['torch']}, triton {env['triton']}); "
          f"median of {args.repeats} runs each, float32, batch {batch}"
          f"{'; quick subset (--full for all)' if quick else ''}", flush=True)
    if env["allocator"]:
        print(f"allocator: {env['allocator']}", flush=True)
    log = (lambda message: print(f"  timing {message}", file=sys.stderr, flush=True)) \
        if args.verbose else None
    results = benchmarking.run(case_list, device, implementations, args.repeats, log)
    print(benchmarking.format_table(results, implementations))
    print("vs X: fastcnn's speedup over X (higher is better); GB/s: the fewest bytes the op "
          "must move over fastcnn's time, and that as a fraction of a same-size copy (n/a for "
          "compute-bound ops). conv_bn_relu: forward is inference (eval mode), "
          "forward+backward a training step.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fastcnn", description="Fast kernels for classic CNNs: status and benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions and which kernel backends can run here")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=_info)

    from fastcnn.benchmarking import OPS

    bench = commands.add_parser(
        "bench", help="time fastcnn's ops against PyTorch eager and torch.compile")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    bench.add_argument("--ops", nargs="+", choices=sorted(OPS),
                       help="ops to time, every case of each (default: all ops; on CPU only "
                       "their quick cases unless --full)")
    bench.add_argument("--full", action="store_true",
                       help="every case of every op (on CPU the default is a quick subset)")
    bench.add_argument("--batch", type=int, help="batch size (default: 16 on CPU, 128 on GPU)")
    bench.add_argument("--layout", choices=["both", "nchw", "channels_last"], default="both")
    bench.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    bench.add_argument("--no-compile", action="store_true",
                       help="skip the torch.compile baseline (it compiles for minutes on CPU)")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("-v", "--verbose", action="store_true", help="log each measurement")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
