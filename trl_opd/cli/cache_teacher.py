"""``trl-opd cache-teacher``: a teacher's top-k + tail targets of a dataset, computed once (teachers.cache)."""

from __future__ import annotations

import argparse
import os

from . import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache-teacher",
        help="store a teacher's top-k + tail targets of every dataset completion token (for off-policy rows)",
        description=(
            "Run the teacher once over a dataset's completions and store, for every completion token, its top-k token "
            "ids, their log-probabilities and the tail's log-mass (8k + 4 bytes per token) in memory-mapped Arrow "
            "shards. GKDConfig(teacher_cache=DIR) then serves the off-policy rows from it: a lmbda=0.0 run needs no "
            "teacher in memory. Use the settings of the training run (tokenizer, truncation, temperature): the "
            "trainer refuses a cache built otherwise."
        ),
    )
    parser.add_argument("--teacher", required=True, help="the teacher's folder")
    parser.add_argument(
        "--dataset", required=True, help="a save_to_disk folder, a .json/.jsonl/.parquet file, or reasoning_gym:<task>"
    )
    parser.add_argument("--output", required=True, help="the cache folder to write")
    parser.add_argument("--top-k", type=int, required=True, help="tokens kept per position (plus one tail bin)")
    parser.add_argument("--tokenizer", help="the student's tokenizer folder (default: the teacher's)")
    parser.add_argument("--split", help="the split of a DatasetDict folder (default: train)")
    parser.add_argument("--max-completion-length", type=int, help="the run's max_completion_length")
    parser.add_argument("--max-prompt-length", type=int, help="the run's max_prompt_length")
    parser.add_argument("--temperature", type=float, default=1.0, help="the run's temperature (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per teacher forward pass (default 8)")
    parser.set_defaults(func=run_cache_teacher)


def run_cache_teacher(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.teacher):
        raise UsageError(f"--teacher {args.teacher!r} is not a folder; pass the folder holding the teacher's weights.")
    from transformers import AutoTokenizer

    from ..data import load_dataset_spec
    from ..models import SingleProcessArgs, load_model
    from ..teachers.cache import build_teacher_cache

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.teacher)
    teacher = load_model(args.teacher, None, SingleProcessArgs(), role="teacher")
    cache = build_teacher_cache(
        teacher,
        tokenizer,
        load_dataset_spec(args.dataset, split=args.split),
        args.top_k,
        args.output,
        max_completion_length=args.max_completion_length,
        max_prompt_length=args.max_prompt_length,
        temperature=args.temperature,
        batch_size=args.batch_size,
    )
    meta = cache.meta
    print(
        f"cache: {cache.path} — {meta.rows} rows, {meta.tokens} tokens, top {meta.top_k}, "
        f"{cache.size_bytes / max(meta.tokens, 1):.0f} bytes/token on disk ({meta.bytes_per_token} of data), "
        f"{meta.seconds:.1f} s"
    )
    return 0
