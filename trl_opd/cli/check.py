"""``trl-opd check``: can this teacher teach this student? (:mod:`trl_opd.compatibility`)."""

from __future__ import annotations

import argparse

from . import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check that a teacher and a student share a tokenizer, chat template and vocabulary",
        description=(
            "Compare a student and a teacher before training: their tokenizers (vocabulary, merges, added tokens, "
            "EOS/BOS/UNK ids, chat template; pad id, normalizer and pre-tokenizer as warnings) and their head sizes. "
            "With --dataset, also load the teacher and report its own per-token NLL on a few completions rendered "
            "with the student's tokenizer and template (a few nats above its usual level points at a template "
            "mismatch). Exits 1 when a blocking problem is found."
        ),
    )
    parser.add_argument("--student", required=True, help="the student's folder (config.json + tokenizer)")
    parser.add_argument(
        "--teacher",
        help="the teacher's folder (config.json + its own tokenizer), or a vLLM server's address (http://host:port): "
        "its served model, context, tokenizer and chat template are probed",
    )
    parser.add_argument(
        "--self-teacher",
        choices=("base", "frozen", "live", "ema"),
        help="no --teacher: the student teaches itself shown each row's privileged_context (OPSD); with --dataset, "
        "check its rows and the template rule (docs/self-distillation.md)",
    )
    parser.add_argument(
        "--dataset",
        help="rows with prompt + completion (or messages): a save_to_disk folder, a .json/.jsonl/.parquet file, or "
        "reasoning_gym:<task>",
    )
    parser.add_argument("--rows", type=int, default=8, help="rows of --dataset scored by the teacher (default 8)")
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    import os

    from transformers import AutoConfig, AutoTokenizer

    from ..compatibility import check_compatibility, teacher_nll
    from ..teachers.server import TeacherServer, check_server_compatibility, is_server_url

    if args.self_teacher is not None:
        return run_self_check(args)
    if args.teacher is None:
        raise UsageError("--teacher is required (or --self-teacher KIND: the student teaches itself).")
    if is_server_url(args.teacher):
        if args.dataset:
            raise UsageError("--dataset scores a local teacher; drop it to check a teacher server.")
        if not os.path.isdir(args.student):
            raise UsageError(f"--student {args.student!r} is not a folder; pass the folder holding its tokenizer.")
        report = check_server_compatibility(TeacherServer(args.teacher), AutoTokenizer.from_pretrained(args.student))
        print(report.format())
        return 0 if report.ok else 1
    for flag, folder in (("--student", args.student), ("--teacher", args.teacher)):
        if not os.path.isdir(folder):
            raise UsageError(f"{flag} {folder!r} is not a folder; pass the folder holding the model's config.json.")
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    report = check_compatibility(AutoConfig.from_pretrained(args.student), args.teacher, tokenizer)
    if args.dataset:
        from datasets import Dataset

        from ..data import load_dataset_spec, prepare_prompt_completion_dataset
        from ..models import SingleProcessArgs, load_model

        dataset = prepare_prompt_completion_dataset(load_dataset_spec(args.dataset), "--dataset")
        if not isinstance(dataset, Dataset) or len(dataset) == 0:
            raise UsageError(f"--dataset {args.dataset!r} holds no rows to score.")
        teacher = load_model(args.teacher, None, SingleProcessArgs(), role="teacher")
        report.facts["teacher NLL (nats/token)"] = f"{teacher_nll(teacher, tokenizer, dataset, args.rows):.3f}"
    print(report.format())
    return 0 if report.ok else 1


def run_self_check(args: argparse.Namespace) -> int:
    """``--self-teacher``: the student is its own teacher, so only the dataset's privileged contexts are checked."""
    if args.teacher is not None:
        raise UsageError("--self-teacher makes the student its own teacher: drop --teacher.")
    if args.dataset is None:
        raise UsageError("--self-teacher checks the rows of --dataset (their privileged_context): pass --dataset.")
    from transformers import AutoTokenizer

    from ..data import load_dataset_spec
    from ..teachers.privileged import check_privileged_dataset

    tokenizer = AutoTokenizer.from_pretrained(args.student)
    report = check_privileged_dataset(tokenizer, load_dataset_spec(args.dataset), args.self_teacher)
    print(report.format())
    return 0 if report.ok else 1
