"""``trl-opd lab``: the tutorial's experiments run for real on tiny tasks (:mod:`trl_opd_lab`)."""

from __future__ import annotations

import argparse

from . import UsageError


def register(subparsers) -> None:
    from trl_opd_lab.experiments import EXPERIMENTS  # the lab is an application of the library: looked up here only

    parser = subparsers.add_parser(
        "lab",
        help="run the tutorial's experiments for real on tiny tasks and write a report",
        description=(
            "The OPD lab: error compounding, mode covering vs seeking, the GKD ablation, SPIN rounds, TIP, λ "
            "schedules and OPSD (the answer as privileged context), each run "
            "with the package's trainers on tiny synthetic tasks with a teacher trained inside the lab. Writes "
            "report.md, results.json and PNG plots. No downloads; --quick takes a few minutes on 2 CPU cores. "
            "Runs on a pinned float path (AVX2 kernels, one thread), so every x86-64 CPU with AVX2 computes the same "
            "numbers; --native-float turns the pin off."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        dest="size",
        action="store_const",
        const="quick",
        help="(default) 2-3 seeds, one teacher seed, T up to 40, several minutes on 2 cores",
    )
    size.add_argument(
        "--full",
        dest="size",
        action="store_const",
        const="full",
        help="3 student x 2 teacher seeds",
    )
    size.add_argument("--smoke", dest="size", action="store_const", const="smoke", help="seconds-long pipeline check")
    parser.add_argument("--output", default="opd-lab", help="output folder (default: opd-lab)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (seeds are base, base+1, ...)")
    parser.add_argument(
        "--experiments",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"subset of: {' '.join(EXPERIMENTS)} (default: all)",
    )
    parser.add_argument(
        "--native-float",
        action="store_true",
        help="run on this processor's own float kernels instead of the pinned AVX2 path (ATEN_CPU_CAPABILITY=avx2, "
        "MKL_CBWR=AVX2, ONEDNN_MAX_CPU_ISA=AVX2, one thread) that makes the numbers the same on every x86-64 CPU",
    )
    parser.add_argument(
        "--from-results",
        metavar="FILE",
        nargs="+",
        default=None,
        help="re-render the report from the results.json of an earlier run, or of several runs of the same size with "
        "different --experiments (merged; runs nothing)",
    )
    parser.set_defaults(func=run_lab_command, size="quick")


def run_lab_command(args: argparse.Namespace) -> int:
    import os

    from ..float_path import FloatPathError, pin_float_path

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if not args.native_float and not args.from_results:
        try:
            pin_float_path()  # before anything below imports torch
        except FloatPathError as error:
            raise UsageError(f"{error} Or pass --native-float to run on this processor's own kernels.") from None
    if args.from_results:
        from trl_opd_lab import load_results, write_report
        from trl_opd_lab.report import merge_results

        loaded = []
        for path in args.from_results:
            try:
                loaded.append(load_results(path))
            except (FileNotFoundError, ValueError) as error:
                message = str(error)
                raise UsageError(message if path in message else f"{path}: {message}") from None
        try:
            results = merge_results(loaded)
        except ValueError as error:
            raise UsageError(str(error)) from None
        print(f"report: {write_report(results, args.output)}")
        return 0

    from tqdm.auto import tqdm

    from trl_opd_lab import SIZES, count_runs, run_lab, write_report
    from trl_opd_lab.experiments import EXPERIMENTS

    experiments = args.experiments or list(EXPERIMENTS)
    unknown = sorted(set(experiments) - set(EXPERIMENTS))
    if unknown:
        raise UsageError(f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}.")
    size = SIZES[args.size]
    command = "trl-opd lab --" + size.name + (f" --seed {args.seed}" if args.seed else "")
    if args.experiments:
        command += " --experiments " + " ".join(experiments)
    if args.native_float:
        command += " --native-float"
    with tqdm(total=count_runs(size, experiments), desc=f"lab ({size.name})", unit="run") as bar:
        results = run_lab(size, experiments, seed=args.seed, progress=bar, command=command)
    print(f"report: {write_report(results, args.output, command)}")
    return 0
