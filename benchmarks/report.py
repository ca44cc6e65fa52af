"""Renders benchmarks/results/*.json as the Markdown tables of README.md.

    python benchmarks/report.py            # print the tables
    python benchmarks/report.py --readme   # rewrite them in README.md, between the markers
"""

import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _ms(value):
    return "n/a" if value is None else f"{value:.2f}"


def _speedup(row, baseline, digits=1):
    value = row.get("speedup_compiled" if baseline == "fastcnn+compile"
                    else f"speedup_vs_{baseline}")
    return "n/a" if value is None else f"{value:.{digits}f}x"


def _bandwidth(row):
    if row.get("gb_per_s") is None:  # compute-bound ops report none
        return "n/a"
    return f"{row['gb_per_s']:.1f} ({row['fraction_of_copy_bandwidth']:.0%})"


def _op_table(rows):
    lines = [
        "| op | layer | input | layout | pass | fastcnn ms | eager ms | compile ms "
        "| vs eager | vs compile | GB/s (of copy) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['op']} | {row['layer']} | {'x'.join(map(str, row['shape']))} "
            f"| {row['layout']} | {row['mode']} | {_ms(row['fastcnn_ms'])} "
            f"| {_ms(row.get('eager_ms'))} | {_ms(row.get('compile_ms'))} "
            f"| {_speedup(row, 'eager')} | {_speedup(row, 'compile')} "
            f"| {_bandwidth(row)} |")
    return lines


def _peak_mb(row, name):
    value = row.get(f"{name}_peak_bytes")
    return "n/a" if value is None else f"{value / 1e6:.1f}"


def _saving(row, name):
    value = row.get("memory_saving_compiled" if name == "fastcnn+compile"
                    else f"memory_saving_vs_{name}")
    return "n/a" if value is None else f"{value:.0%}".replace("-0%", "0%")


def _module_table(rows, title="Modules", column="module"):
    """One line per implementation; fastcnn's speedup and memory saving on each baseline's."""
    methods = sorted({row["peak_memory_by"] for row in rows})
    lines = [
        f"{title} (peak MB: the most tensor memory allocated at once during one call, "
        f"MB = 10^6 bytes, measured with {', '.join(methods)}):",
        "",
        f"| {column} | input | layout | pass | implementation | ms | peak MB "
        "| fastcnn speedup | fastcnn memory saving |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        case = (f"| {row['module']} | {'x'.join(map(str, row['shape']))} | {row['layout']} "
                f"| {row['mode']} ")
        for i, name in enumerate(row["implementations"]):
            against = " vs compile" if name == "fastcnn+compile" else ""
            ratios = ("| | " if i == 0 else
                      f"| {_speedup(row, name, 2)}{against} | {_saving(row, name)}{against} ")
            lines.append(f"{case}| {name} | {_ms(row.get(f'{name}_ms'))} "
                         f"| {_peak_mb(row, name)} {ratios}|")
    return lines


def table(path):
    """A results file's heading, its op table and, where it has them, its module and model
    tables."""
    data = json.loads(path.read_text())
    env = data["environment"]
    lines = [
        f"**{env['device']}** — torch {env['torch']}, triton {env['triton']}, "
        f"fastcnn {env['fastcnn']} ({env.get('commit') or 'no commit recorded'}), "
        f"{env['date']} (`{path.relative_to(ROOT)}`)"
        + (f"; {env['allocator']}" if env.get("allocator") else "")
        + (f". Note: {env['note']}" if env.get("note") else ""),
    ]
    if data["results"]:
        lines += ["", *_op_table(data["results"])]
    if data.get("modules"):
        lines += ["", *_module_table(data["modules"])]
    if data.get("models"):
        lines += ["", *_module_table(
            data["models"], "Models against the same network on PyTorch's layers, same weights "
            "(torchvision.* and timm.*: the model itself against fastcnn.optimize(model); "
            "fastcnn+compile: the optimized model compiled, against compile)", "model")]
    return "\n".join(lines)


def report():
    paths = sorted(RESULTS.glob("*.json"))
    if not paths:
        return "No recorded runs yet."
    return "\n\n".join(table(path) for path in paths)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    text = report()
    if not args.readme:
        print(text)
        return
    readme = ROOT / "README.md"
    content = readme.read_text()
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
