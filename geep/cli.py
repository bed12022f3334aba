"""The `geep` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geep.common.config import PRECISIONS
from geep.common.errors import GeepError
from geep.common.storage import describe_os_error

if TYPE_CHECKING:
    from geep.common.config import TrainConfig
    from geep.pipeline.evaluate import Evaluation
    from geep.reproduce.plan import Plan


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: type, low: float, what: str) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` number >= ``low``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


_positive_int = _number(int, 1, "a whole number >= 1")
_nonneg_int = _number(int, 0, "a whole number >= 0")
_positive_float = _number(float, 1e-12, "a number > 0")
_speed = _number(float, 0.0, "a speed >= 0")

EXAMPLES = {
    "datasets": """examples:
  geep datasets
  geep datasets --json""",
    "methods": """examples:
  geep methods""",
    "train": """examples:
  geep train --method bert --dataset rotten-tomatoes --out runs/bert-rt \\
      --max-train 800 --seq-len 48 --epochs 1
  geep train --method bert --dataset data/my_reviews.tsv --out runs/mine
  geep train ... --save-every 60    # a killed run resumes from its last save when re-run
  geep train --method bert --dataset chnsenticorp --model bert-base-chinese --out runs/chn
  geep train --method geep --dataset rotten-tomatoes --out runs/geep-rt --max-train 800 --seq-len 48
  geep train --method geep --dataset rotten-tomatoes --out runs/geep-last \\
      --option teacher_inputs=last --option training=two-step""",
    "evaluate": """examples:
  geep evaluate --checkpoint runs/bert-rt
  geep evaluate --checkpoint runs/bert-rt --max-eval 500 --json
  geep evaluate --checkpoint runs/bert-rt --dataset my_reviews.tsv   # the whole file
  geep evaluate --checkpoint runs/geep-rt --speed 0.1 --speed 0.5 --predictions preds.jsonl
  geep evaluate --checkpoint runs/fastbert-rt --sweep grid   # the papers' thresholds
  geep evaluate --checkpoint runs/geep-rt --option exit_head=shared --option exit_quantile=0.8
  geep evaluate --checkpoint runs/geep-rt --option mode=dynamic
  geep evaluate --checkpoint runs/geep-rt --precision bfloat16 --compare-precision
  geep evaluate --checkpoint runs/geep-rt --precision bfloat16 --cuda-graphs   # on a GPU
  geep evaluate --checkpoint runs/bert-rt --rounds 5   # samples/s: the median of 5 runs""",
    "flops": """examples:
  geep flops --config bert-base --seq-len 128 --convention fastbert
  geep flops --config minilm-l6 --seq-len 64 --convention full --num-labels 4 --json
  geep flops --config path/to/config.json --seq-len 128 --convention full""",
    "plan": """examples:
  geep plan --profile paper                # before a run: FLOPs and device-hours, estimated
  geep plan --profile quick --device a100
  geep plan --profile learning-curve --device cpu   # each piece, then the curve's total
  geep plan --profile compare --json""",
    "report": """examples:
  GEEP_PROFILE=smoke pytest benchmarks/ --benchmark-json out.json && geep report results/smoke
  geep report results/quick   # writes results.csv, tables.md and PNG plots there
  geep report results/learning-curve   # each piece's report, then the curve's tables and plots""",
}


def build_parser() -> argparse.ArgumentParser:
    """The `geep` parser: one sub-command per job, each with its options and examples."""
    parser = _Parser(
        prog="geep",
        description="Reproduce GEEP and the early-exit methods it competes with.",
        epilog="Run `geep COMMAND --help` for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = _command(sub, "datasets", "list the dataset registry", cmd_datasets)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _command(sub, "methods", "list the methods, their speed knobs and options", cmd_methods)
    p = _command(sub, "train", "train a method and save a checkpoint", cmd_train)
    _add_train_arguments(p)
    p = _command(sub, "evaluate", "evaluate a checkpoint over speed settings", cmd_evaluate)
    _add_evaluate_arguments(p)
    p = _command(sub, "flops", "FLOPs breakdown of a full-depth forward", cmd_flops)
    _add_flops_arguments(p)
    p = _command(
        sub, "plan", "estimated FLOPs and device-hours of a profile, before it runs", cmd_plan
    )
    p.add_argument(
        "--profile", required=True, help="a profile (smoke, quick, compare, ...) or learning-curve"
    )
    p.add_argument(
        "--device",
        default="h100",
        help="h100 or a100: its datasheet's sustained compute; cpu: this machine's, measured in "
        "seconds (h100)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = _command(sub, "report", "tables and plots from a profile's benchmark runs", cmd_report)
    p.add_argument(
        "results",
        type=Path,
        help="a profile's results folder (results/quick), or a curve's (results/learning-curve)",
    )
    return parser


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    help_: str,
    func: Callable[[argparse.Namespace], int],
) -> _Parser:
    """Add the sub-command ``name``, run by ``func``, with its :data:`EXAMPLES` as epilog."""
    p = sub.add_parser(
        name,
        help=help_,
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    """`geep train`'s options; the recipe's defaults are :class:`TrainConfig`'s."""
    from geep.common.config import DEFAULT_MODEL, TrainConfig

    p.add_argument("--method", required=True, help="method name (see `geep methods`)")
    p.add_argument("--dataset", required=True, help="registry name or path to a local file/folder")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"encoder: {DEFAULT_MODEL} (embedded), a local folder or a hub id",
    )
    p.add_argument(
        "--max-train", type=_positive_int, help="seeded random subset of N training samples"
    )
    defaults = TrainConfig()
    for flag, kind, what in (
        ("--seq-len", _positive_int, "max tokens per sample"),
        ("--epochs", _positive_int, "training epochs"),
        ("--batch-size", _positive_int, "training batch size"),
        ("--lr", _positive_float, "peak learning rate"),
        ("--seed", _nonneg_int, "random seed"),
    ):
        default = getattr(defaults, flag[2:].replace("-", "_"))
        p.add_argument(flag, type=kind, default=default, help=f"{what} ({default:g})")
    p.add_argument(
        "--batching",
        choices=["length", "random"],
        default=defaults.batching,
        help="training batches of similar length (shuffled in chunks: little padding) or "
        f"plainly shuffled ({defaults.batching})",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method option; repeat for several (see `geep methods`)",
    )
    p.add_argument(
        "--save-every",
        type=_number(float, 0.0, "a number of seconds >= 0"),
        default=300.0,
        metavar="SECONDS",
        help="save the training state this often, so a killed run resumes when re-run "
        "(300; 0: after every step)",
    )


def _add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """`geep evaluate`'s options: which checkpoint, data and speed settings, and the output."""
    p.add_argument("--checkpoint", required=True, type=Path, help="folder written by `geep train`")
    p.add_argument("--dataset", help="registry name or path (default: the training dataset)")
    p.add_argument(
        "--split",
        choices=["train", "dev", "test", "all"],
        help="split to evaluate (test; all for a single file, which is evaluated whole)",
    )
    p.add_argument(
        "--speed",
        type=_speed,
        action="append",
        help="speed setting; repeat for several (default: the --sweep's settings)",
    )
    p.add_argument(
        "--sweep",
        choices=["dev", "grid"],
        help="without --speed: full depth and settings chosen on the training data's dev split "
        "in even steps of FLOPs (dev, the default for threshold methods), or the papers' fixed "
        "grid (grid, the default for the others)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="inference batch size (32)")
    p.add_argument("--seq-len", type=_positive_int, help="max tokens (default: the training one)")
    p.add_argument("--max-eval", type=_positive_int, help="evaluate the split's first N samples")
    p.add_argument(
        "--input-order",
        action="store_true",
        help="batch the samples in input order (default: by length, as for every method)",
    )
    p.add_argument("--predictions", type=Path, help="write per-sample predictions as JSONL")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change an inference option of the method; repeat for several (see `geep methods`)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="arithmetic of inference: weights cast to bfloat16 or float16; tf32 (a CUDA "
        "setting) keeps float32 weights with TF32 matrix products (default float32)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each call that moves a batch from a CUDA graph captured per bucketed shape "
        "(GPU only; docs/gpu.md)",
    )
    p.add_argument(
        "--compare-precision",
        action="store_true",
        help="also run every speed in float32 and add the share of samples whose exit layer or "
        "label --precision changed, and the float32 accuracy",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="timed runs of each speed: samples/s from the median run, with the runs' spread "
        "((max - min) / median) (1)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_flops_arguments(p: argparse.ArgumentParser) -> None:
    """`geep flops`'s options: the model's config, sequence length, convention and head."""
    p.add_argument(
        "--config",
        required=True,
        help="bert-base, minilm-l6, or a path to a config.json / model folder",
    )
    p.add_argument("--seq-len", type=_positive_int, default=128, help="sequence length (128)")
    p.add_argument(
        "--convention",
        choices=["fastbert", "full"],
        default="fastbert",
        help="fastbert: linear layers only (thop); full: every matmul (fastbert)",
    )
    p.add_argument("--num-labels", type=_positive_int, default=2, help="classes of the head (2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def cmd_datasets(args: argparse.Namespace) -> int:
    from geep.data import REGISTRY

    if args.json:
        print(
            json.dumps([spec.to_dict() for spec in REGISTRY.values()], indent=2, ensure_ascii=False)
        )
        return 0
    rows = [
        [
            s.name,
            s.language,
            s.task,
            s.num_classes,
            "offline" if s.offline else "local files only" if s.local_only else "hub/local",
            "paper" if s.paper else "",
        ]
        for s in REGISTRY.values()
    ]
    print(_table(rows, ["name", "lang", "task", "classes", "source", ""]))
    local = [[s.name, s.sources.local] for s in REGISTRY.values() if s.local_only]
    print(f"\nlocal files only, in UER format:\n{_table(local, ['name', 'files'])}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from geep.core.registry import get_method, method_names

    for name in method_names():
        cls = get_method(name)
        low, high = cls.speed_bounds
        bounds = f"{low:g}..{high:g}" if high < math.inf else f">= {low:g}"
        print(f"{name}\n  speed: {cls.speed_help} ({bounds})")
        for line in cls.options_class.describe():
            print(f"  option {line}")
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training recipe of `geep train`'s arguments (checked: GeepError when out of range)."""
    from geep.common.config import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seq_len=args.seq_len,
        seed=args.seed,
        max_train=args.max_train,
        batching=args.batching,
    )


def _quiet_libraries() -> None:
    """Silence the libraries' own progress bars: ours cover the long work. Only the commands
    that load data and models import them, so `geep --help` answers at once."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def cmd_train(args: argparse.Namespace) -> int:
    from geep.pipeline.train import is_main_process, train_method

    _quiet_libraries()
    config = train_config(args)
    method = train_method(
        args.method,
        args.dataset,
        args.out,
        args.model,
        config,
        args.option,
        save_every_s=args.save_every,
    )
    if is_main_process():  # one line under `accelerate launch`, not one per process
        print(
            f"saved {method.name} checkpoint to {args.out} "
            f"(dev accuracy {method.info.dev_accuracy:.4f} at full depth)"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from geep.core.runtime import Runtime
    from geep.pipeline.evaluate import (
        check_predictions_target,
        evaluate_checkpoint,
        report_json,
        write_predictions,
    )

    _quiet_libraries()
    if args.predictions:
        check_predictions_target(args.predictions)  # before the work, not after it
    ev = evaluate_checkpoint(
        args.checkpoint,
        args.dataset,
        args.split,
        args.speed,
        args.batch_size,
        args.seq_len,
        args.max_eval,
        progress=True,
        settings=args.option,
        order="input" if args.input_order else "length",
        speed_source=args.sweep,
        runtime=Runtime(args.precision, args.cuda_graphs),
        compare_precision=args.compare_precision,
        rounds=args.rounds,
    )
    if args.predictions:
        labels = ev.split.data.labels.numpy()
        write_predictions(args.predictions, ev.split.texts, labels, ev.speeds, ev.runs)
    if args.json:
        print(json.dumps(report_json(ev), indent=2))
        return 0
    options = ", ".join(f"{k}={v}" for k, v in ev.method.info.options.items())
    print(
        f"{ev.method.name} on {ev.split.dataset} ({ev.split.name}, n={len(ev.split.texts)}, "
        f"{ev.method.num_layers} layers, batch {ev.batch_size}, {ev.method.runtime.label})"
        + (f"\noptions: {options}" if options else "")
        + (f"\n{_sweep_line(ev)}" if ev.method.calibrates and ev.speed_source != "given" else "")
    )
    extra = list(dict.fromkeys(k for r in ev.results for k in r.extra))  # e.g. GEEP's exit_mae
    rows = [
        [
            f"{r.speed:g}",
            f"{r.accuracy:.4f}",
            f"{r.avg_exit_layer:.2f}",
            f"{r.flops_fastbert / 1e6:.1f}",
            f"{r.speedup:.2f}x",
            f"{r.throughput:.1f}",
            *([f"{r.round_spread:.0%}"] if args.rounds > 1 else []),
            f"{r.latency_ms_p50:.1f}",
            *(f"{r.extra[k]:.3f}" if k in r.extra else "" for k in extra),
        ]
        for r in ev.results
    ]
    header = ["speed", "accuracy", "avg exit", "MFLOPs", "speedup", "samples/s"]
    header += [f"spread ({args.rounds} runs)"] if args.rounds > 1 else []
    print(_table(rows, [*header, "p50 ms", *extra]))
    return 0


def _sweep_line(ev: Evaluation) -> str:
    """Which settings the evaluation swept, when they were not given with --speed."""
    if ev.speed_source == "grid":
        return "sweep: the method's fixed grid (--sweep grid)"
    return (
        f"sweep: full depth and {len(ev.speeds) - 1} settings chosen on "
        f"{ev.dev_sweep['samples']} dev samples of {ev.method.info.dataset} in even steps of "
        "FLOPs (--sweep dev)"
    )


def cmd_flops(args: argparse.Namespace) -> int:
    from geep.measure.flops import breakdown, dims_for

    dims = dims_for(args.config, args.seq_len)
    rows = breakdown(dims, args.seq_len, args.num_labels, args.convention)
    if args.json:
        print(
            json.dumps(
                {
                    "config": args.config,
                    "seq_len": args.seq_len,
                    "convention": args.convention,
                    "num_labels": args.num_labels,
                    "dims": vars(dims),
                    "components": rows,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"{args.config}: {dims.num_layers} layers, hidden {dims.hidden}, "
        f"seq_len {args.seq_len}, convention {args.convention}"
    )
    print(
        _table(
            [[k, f"{v:,}", f"{v / 1e9:.4f}"] for k, v in rows.items()],
            ["component", "FLOPs", "GFLOPs"],
        )
    )
    return 0


def _sig3(value: float) -> str:
    """``value`` to 3 significant figures, without an exponent (1,230 / 4.56 / 0.00789)."""
    if value == 0:
        return "0"
    return f"{value:,.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def _hours(value: float) -> str:
    return "<0.01" if 0 < value < 0.005 else f"{value:.2f}"


def cmd_plan(args: argparse.Namespace) -> int:
    from geep.reproduce.plan import device_rate, plan
    from geep.reproduce.profiles import curve_pieces

    pieces = curve_pieces(args.profile)
    rate = device_rate(args.device, pieces[0])  # a curve's pieces share their shapes
    costs = [plan(piece, args.device, rate) for piece in pieces]
    if args.json:
        documents = [cost.to_dict() for cost in costs]
        print(json.dumps(documents[0] if len(costs) == 1 else documents, indent=2))
        return 0
    for cost in costs:
        _print_plan(cost, args.device)
    if len(costs) > 1:
        hours = sum(cost.hours(cost.train_flops + cost.eval_flops) for cost in costs)
        print(f"{args.profile}: {_hours(hours)} estimated device-hours on {args.device} in all")
    return 0


def _print_plan(cost: Plan, device: str) -> None:
    """One profile's plan as a table, its assumptions and its total."""
    seeds = f"{cost.seeds} seed{'s' if cost.seeds > 1 else ''}"
    print(
        f"profile {cost.profile} on {device}, {seeds} (estimated; samples and settings "
        "per seed, FLOPs and hours over all seeds)"
    )
    rows = []
    for r in cost.rows:
        known = r.train_flops is not None and r.eval_flops is not None
        figures = (
            [
                f"{r.train_samples:,}",
                _sig3(r.train_flops / 1e15),
                _sig3(r.eval_flops / 1e15),
                _hours(cost.hours(r.train_flops)),
                _hours(cost.hours(r.eval_flops)),
            ]
            if known
            else ["unknown"] * 5
        )
        head = [r.dataset, r.method, r.epochs, f"{r.passes:.2f}", r.settings]
        rows.append([*head, *figures])
    total = [cost.train_flops, cost.eval_flops]
    rows.append(
        ["total", "", "", "", "", "", *(_sig3(f / 1e15) for f in total)]
        + [_hours(cost.hours(f)) for f in total]
    )
    header = ["dataset", "method", "epochs", "passes", "settings", "train samples"]
    header += ["train PFLOPs", "eval PFLOPs", "train h", "eval h"]
    print(_table(rows, header))
    for line in cost.assumptions():
        print(f"- {line}")
    if cost.unknown:
        print(f"- left out of the total, split sizes unknown: {', '.join(cost.unknown)}")
    hours = cost.hours(cost.train_flops + cost.eval_flops)
    print(f"total: {_hours(hours)} estimated device-hours on {device}")


def cmd_report(args: argparse.Namespace) -> int:
    from geep.report.curve import pieces, write_curve_report
    from geep.report.results import write_report

    write = write_curve_report if pieces(args.results) else write_report
    for path in write(args.results):
        print(path)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # clean up as on Ctrl-C
    try:
        return args.func(args)
    except GeepError as err:
        print(f"geep: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (`geep datasets --json | head`): no fault
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 1
    except OSError as err:  # the operating system's faults: permissions, a full disk, ...
        print(f"geep: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "geep: interrupted; nothing half-written was left behind "
            "(re-run the same command: `geep train` resumes from its last save)",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
