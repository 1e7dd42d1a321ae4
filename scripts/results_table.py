"""The results table of docs/results.md: distilling SmolLM2-135M-Instruct into its 20-layer student, row by row.

Rows (every trained row takes the same number of optimizer steps, the same batch, learning rate and data):

* ``before``: the student before training;
* ``kd``: off-policy only, supervised KD on the dataset's completions (trl_opd GKD, λ = 0);
* ``gkd``: GKD with λ = 0.5 (half the rows of each batch sampled by the student);
* ``on_policy``: on-policy only, λ = 1;
* ``pipeline``: three stages run one after the other, each a trl_opd ``GKDTrainer`` continuing from the previous
  stage's weights: λ = 0 warm-up, a λ ramp (linear 0.3 -> 0.7), then λ = 1 (budget fractions ``PIPELINE``);
* ``pipeline_api``: the same three stages run by ``trl_opd.pipeline.run_pipeline`` (what ``trl-opd pipeline`` runs):
  each stage saves its model and the next loads it from that folder;
* ``trl``: ``trl.DistillationTrainer`` (TRL 1.16's own on-policy trainer) with TRL's default divergence, β = 1
  (reverse KL; ``--trl_beta 0.5`` gives the others' JSD, and then it trains exactly like ``on_policy``);
* ``teacher``: the teacher itself, as a reference (its divergences to itself are 0).

Columns, on ``--eval_size`` held-out problems (reasoning-gym seed 1; training problems, seed 0, whose question is
held out are dropped from the training set and counted): the task's verifier accuracy with greedy decoding, sampled
pass@1 (temperature 1, the mean over ``--samples`` samples per problem), then :func:`trl_opd.evaluation.guards`
(forward KL on the teacher's samples, reverse KL on the student's samples, the student's EOS rate and distinct-2),
and seconds per optimizer step (the wall time of ``trainer.train()`` over the steps). Each row runs once per seed
(training seed and evaluation sampling seed); the table shows mean ± half the range over the seeds (with two seeds:
each seed lies at one end).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/results_table.py --json results.json   # the full table
    python scripts/results_table.py --from_json results.json                               # re-print it

The JSON holds every per-seed number; a rerun with the same ``--json`` skips the (row, seed) pairs already in it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from pathlib import Path


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

logger = logging.getLogger("results_table")

#: The task's settings: one-digit products, where the teacher scores well (scripts/teacher_pass_rates.py).
TASK_CONFIG = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
ROWS = ("before", "kd", "gkd", "on_policy", "pipeline", "pipeline_api", "trl", "teacher")
LABELS = {
    "before": "before training",
    "kd": "off-policy only: supervised KD, λ = 0",
    "gkd": "GKD λ = 0.5",
    "on_policy": "on-policy only: λ = 1",
    "pipeline": "three-stage pipeline, in-process",
    "pipeline_api": "three-stage pipeline, `run_pipeline`",
    "trl": "`trl.DistillationTrainer`",
    "teacher": "teacher (reference)",
}
#: (name, budget fraction, DistillationConfig overrides) of the pipeline's stages.
PIPELINE = (
    ("warmup", 0.25, {"lmbda": 0.0}),
    ("ramp", 0.5, {"lmbda_schedule": "linear", "lmbda_start": 0.3, "lmbda_end": 0.7}),
    ("on_policy", 0.25, {"lmbda": 1.0}),
)
#: Table columns: (key in a per-seed result, header, decimals).
COLUMNS = (
    ("greedy_accuracy", "greedy acc.", 3),
    ("sampled_pass@1", "sampled pass@1", 3),
    ("fkl_on_teacher_samples", "FKL on teacher samples", 3),
    ("rkl_on_student_samples", "RKL on student samples", 3),
    ("student_eos_rate", "EOS rate", 2),
    ("student_distinct_2", "distinct-2", 3),
    ("seconds_per_step", "s / step", 1),
)


# --------------------------------------------------------------------------- pure helpers (tested)


def stage_steps(total: int, fractions) -> list[int]:
    """Split ``total`` steps by ``fractions`` (summing to 1) into integers that sum to ``total``, each ≥ 1.

    Largest-remainder rounding: floor every share, then give the leftover steps to the largest remainders.
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"stage fractions must sum to 1, got {list(fractions)} (sum {sum(fractions)})")
    if total < len(fractions):
        raise ValueError(f"{total} steps cannot give each of the {len(fractions)} stages a step; raise --steps")
    shares = [total * f for f in fractions]
    steps = [math.floor(s) for s in shares]
    for i in sorted(range(len(shares)), key=lambda i: steps[i] - shares[i])[: total - sum(steps)]:
        steps[i] += 1
    for i, n in enumerate(steps):  # a zero-step stage takes one from the largest
        if n == 0:
            steps[i], steps[steps.index(max(steps))] = 1, max(steps) - 1
    return steps


def aggregate(per_seed: list[dict]) -> dict[str, tuple[float, float, int]]:
    """``{key: (mean, half-range, n)}`` over the per-seed dicts, for each numeric key (None values are skipped)."""
    keys = {k for result in per_seed for k, v in result.items() if isinstance(v, int | float) and k != "seed"}
    out = {}
    for key in sorted(keys):
        values = [float(r[key]) for r in per_seed if isinstance(r.get(key), int | float)]
        out[key] = (sum(values) / len(values), (max(values) - min(values)) / 2, len(values))
    return out


def separated(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """True when two (mean, half-range, n) summaries do not overlap: every seed of one lies beyond every seed of the
    other (``|mean_a - mean_b| > spread_a + spread_b``)."""
    return abs(a[0] - b[0]) > a[1] + b[1]


def format_table(results: dict[str, list[dict]], rows=ROWS, labels=None) -> str:
    """A markdown table with one line per row of ``results`` ({row: [per-seed dicts]}), mean ± half-range, in the
    order of ``rows`` with the names ``labels`` (default: this table's)."""
    labels = LABELS if labels is None else labels
    header = "| row | seeds | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for row in rows:
        if not results.get(row):
            continue
        summary = aggregate(results[row])
        cells = []
        for key, _, decimals in COLUMNS:
            if key not in summary:
                cells.append("–")
                continue
            mean, spread, _ = summary[key]
            cells.append(f"{mean:.{decimals}f} ± {spread:.{decimals}f}")
        lines.append(f"| {labels[row]} | {len(results[row])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def separation_report(results: dict[str, list[dict]], against: str, rows=ROWS) -> list[str]:
    """For each column, the rows whose seeds all lie beyond every seed of row ``against`` (:func:`separated`), with
    the sign of the difference: ``"greedy acc.: kd -, gkd +"``; ``"greedy acc.: none"`` when no row is."""
    if not results.get(against):
        return []
    base = aggregate(results[against])
    summaries = {row: aggregate(results[row]) for row in rows if results.get(row) and row != against}
    lines = []
    for key, header, _ in COLUMNS:
        if key not in base:
            continue
        apart = [
            f"{row} {'+' if s[key][0] > base[key][0] else '-'}"
            for row, s in summaries.items()
            if key in s and separated(s[key], base[key])
        ]
        lines.append(f"{header}: {', '.join(apart) or 'none'}")
    return lines


def drop_overlap(held_out_questions, dataset):
    """``dataset`` without the rows whose question is one of ``held_out_questions``, and how many went."""
    held_out = set(held_out_questions)
    keep = [i for i, prompt in enumerate(dataset["prompt"]) if prompt[-1]["content"] not in held_out]
    return dataset.select(keep), len(dataset) - len(keep)


# --------------------------------------------------------------------------- models, training, evaluation


def evaluate(student, teacher, tokenizer, dataset, reward_fn, *, samples, max_new_tokens, seed) -> dict[str, float]:
    """Greedy accuracy, sampled pass@1 over ``samples`` samples per problem, and the held-out guards."""
    import torch

    from trl_opd.data import prompt_token_ids
    from trl_opd.evaluation import guards, sample

    torch.manual_seed(seed)
    prompts = [prompt_token_ids(tokenizer, p) for p in dataset["prompt"]]
    index = list(dataset["entry_index"])
    eos = [tokenizer.eos_token_id]
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, eos_token_ids=eos, max_new_tokens=max_new_tokens)

    def accuracy(completions, rows):
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        return sum(reward_fn(completions=texts, entry_index=rows)) / len(texts)

    out = {"greedy_accuracy": accuracy(sample(student, prompts, do_sample=False, **kwargs), index)}
    sampled = sample(student, prompts * samples, do_sample=True, temperature=1.0, top_k=0, **kwargs)
    out["sampled_pass@1"] = accuracy(sampled, index * samples)
    out.update(guards(student, teacher, prompts, **kwargs, temperature=1.0))
    return out


def common_args(args, seed: int, steps: int, output_dir: Path) -> dict:
    """TrainingArguments shared by every trained row."""
    import torch

    return dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",  # the pipeline's stages then see the same learning rate as one long run
        warmup_steps=0,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        beta=args.beta,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        disable_tqdm=True,
    )


def row_stages(row: str, total: int) -> list[tuple[dict, int]]:
    """The (DistillationConfig overrides, optimizer steps) of each stage of a trl_opd row (one but the pipeline)."""
    if row == "pipeline":
        steps = stage_steps(total, [fraction for _, fraction, _ in PIPELINE])
        return [(overrides, n) for (_, _, overrides), n in zip(PIPELINE, steps, strict=True)]
    return [({"lmbda": {"kd": 0.0, "gkd": 0.5, "on_policy": 1.0}[row]}, total)]


def train(row: str, seed: int, args, student, teacher, tokenizer, train_dataset, workdir: Path):
    """Train one row; return (the trained student, seconds per optimizer step, optimizer steps taken).

    Each stage of the pipeline is a new trl_opd ``GKDTrainer`` on the previous stage's model (the weights carry on;
    the optimizer state starts afresh, as it does when a stage starts from a saved folder).
    """
    from trl import DistillationConfig as TRLDistillationConfig
    from trl import DistillationTrainer

    from trl_opd import DistillationConfig, GKDTrainer

    model, seconds, taken = student, 0.0, 0
    if row == "trl":
        stages = [(None, args.steps)]
    else:
        stages = row_stages(row, args.steps)
    for i, (overrides, steps) in enumerate(stages):
        common = common_args(args, seed, steps, workdir / f"{row}-{seed}-{i}")
        if overrides is None:
            trainer = DistillationTrainer(
                model=model,
                teacher_model=teacher,
                args=TRLDistillationConfig(**(common | {"beta": args.trl_beta})),
                train_dataset=train_dataset.select_columns(["prompt"]),
                processing_class=tokenizer,
            )
        else:
            trainer = GKDTrainer(
                model=model,
                teacher_model=teacher,
                args=DistillationConfig(**common, divergence="jsd", **overrides),
                train_dataset=train_dataset,
                processing_class=tokenizer,
            )
        start = time.perf_counter()
        trainer.train()
        seconds += time.perf_counter() - start
        taken += trainer.state.global_step
        model = trainer.accelerator.unwrap_model(trainer.model)
        logger.info("%s seed %d: stage %d (%s, %d steps) done, %.0f s", row, seed, i, overrides, steps, seconds)
    if taken != args.steps:
        raise RuntimeError(f"{row} seed {seed} took {taken} optimizer steps, expected {args.steps}")
    return model, seconds / taken, taken


def pipeline_recipe(args, seed: int, student, teacher, dataset_dir, output_dir) -> dict:
    """The recipe of ``trl_opd.pipeline.run_pipeline`` equal to the ``pipeline`` row: the same stages, budgets and
    training arguments. The dataset folder holds only a train split, so the stages measure nothing themselves."""
    shared = common_args(args, seed, args.steps, output_dir)
    shared = {k: v for k, v in shared.items() if k not in ("beta", "max_steps")}  # beta: a stage key
    stages = [
        {"name": name, "trainer": "gkd", "budget": fraction, "beta": args.beta, **overrides}
        for name, fraction, overrides in PIPELINE
    ]
    return shared | dict(
        max_steps=args.steps,
        model_name_or_path=str(student),
        teacher_model_name_or_path=str(teacher),
        dataset_name=str(dataset_dir),
        divergence="jsd",
        stages=stages,
    )


def train_with_pipeline_api(seed: int, args, student, teacher, train_dataset, workdir: Path):
    """The ``pipeline_api`` row: (the final stage's model, seconds per optimizer step, optimizer steps)."""
    from transformers import AutoModelForCausalLM

    from trl_opd.pipeline import run_pipeline

    root = workdir / f"pipeline_api-{seed}"
    train_dataset.save_to_disk(str(root / "data"))
    entries = run_pipeline(pipeline_recipe(args, seed, student, teacher, root / "data", root / "run"))
    steps = sum(e["steps"] for e in entries)
    if steps != args.steps:
        raise RuntimeError(f"pipeline_api seed {seed} took {steps} optimizer steps, expected {args.steps}")
    seconds = sum(e["seconds_per_step"] * e["steps"] for e in entries)
    return AutoModelForCausalLM.from_pretrained(entries[-1]["output_dir"]), seconds / steps, steps


def run(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_opd.assets import make_reasoning_gym_reward, pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config = json.loads(args.task_config)
    teacher_path = smollm2_teacher_dir()
    student_path = pruned_student_dir(teacher_path)
    tokenizer = AutoTokenizer.from_pretrained(student_path, padding_side="left")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
    eval_dataset = reasoning_gym_dataset(args.task, size=args.eval_size, seed=1, config=config)
    train_all = reasoning_gym_dataset(args.task, size=args.train_size, seed=0, config=config)
    train_dataset, dropped = drop_overlap([p[-1]["content"] for p in eval_dataset["prompt"]], train_all)
    logger.warning("training set: dropped %d of %d problems that are held out", dropped, len(train_all))
    reward_fn = make_reasoning_gym_reward(args.task, size=args.eval_size, seed=1, config=config)

    settings = vars(args) | {"train_rows": len(train_dataset), "train_dropped": dropped, "machine": machine()}
    workdir = Path(args.workdir)

    def produce(row: str, seed: int):
        if row in ("before", "teacher"):
            return (teacher if row == "teacher" else AutoModelForCausalLM.from_pretrained(student_path)), {}
        if row == "pipeline_api":
            model, per_step, steps = train_with_pipeline_api(
                seed, args, student_path, teacher_path, train_dataset, workdir
            )
        else:
            student = str(student_path)
            model, per_step, steps = train(row, seed, args, student, teacher, tokenizer, train_dataset, workdir)
        return model, {"seconds_per_step": per_step, "steps": steps}

    def held_out(model, seed: int) -> dict:
        return evaluate(
            model.eval(),
            teacher,
            tokenizer,
            eval_dataset,
            reward_fn,
            samples=args.samples,
            max_new_tokens=args.max_completion_length,
            seed=1000 + seed,
        )

    return measure_cells(Path(args.json), settings, args.rows, args.seeds, produce, held_out)


def measure_cells(path: Path, settings: dict, rows, seeds, produce, held_out) -> dict:
    """Fill ``path``'s ``results`` cell by cell, seed by seed, so that a run stopped early still has every row of its
    first seeds and a rerun skips the cells already measured. ``produce(row, seed)`` gives ``(model, numbers)`` (the
    trained model and its training numbers), ``held_out(model, seed)`` the held-out numbers; the JSON is rewritten
    after each cell, and ``settings`` are appended to its ``invocations``."""
    record = json.loads(path.read_text()) if path.is_file() else {}
    record.setdefault("invocations", []).append(
        settings | {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    )
    results = record.setdefault("results", {})
    for seed in seeds:
        for row in rows:
            if any(r["seed"] == seed for r in results.get(row, [])):
                continue
            start = time.perf_counter()
            model, numbers = produce(row, seed)
            numbers.update(held_out(model, seed))
            numbers.update(seed=seed, wall_seconds=time.perf_counter() - start)
            results.setdefault(row, []).append(numbers)
            path.write_text(json.dumps(record, indent=1))
            print(f"{row:<10} seed {seed}: " + ", ".join(f"{k}={v:.4g}" for k, v in numbers.items()), flush=True)
    return record


def machine() -> dict:
    """CPU model, core count and library versions."""
    import torch
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="results.json", help="per-seed numbers (read back to skip finished runs)")
    parser.add_argument("--from_json", default=None, help="only print the table of this JSON file")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--task", default="products", help="reasoning-gym task (scripts/teacher_pass_rates.py)")
    parser.add_argument("--task_config", default=json.dumps(TASK_CONFIG), help="reasoning-gym settings as JSON")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps of every trained row")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.5, help="generalized JSD β of the trl_opd rows")
    parser.add_argument("--trl_beta", type=float, default=1.0, help="β of trl.DistillationTrainer (TRL's default)")
    parser.add_argument("--max_completion_length", type=int, default=32)
    parser.add_argument("--train_size", type=int, default=256)
    parser.add_argument("--eval_size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per held-out problem")
    parser.add_argument("--workdir", default="/tmp/trl-opd-results", help="trainers' output_dir (nothing is saved)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
    else:
        start = time.perf_counter()
        record = run(args)
        print(f"wall time {time.perf_counter() - start:.0f} s")
    print(format_table(record["results"]))
    for against in ("before", "gkd"):
        print(f"\nrows apart from {against!r} beyond the seed spread (+ higher, - lower):")
        print("\n".join(separation_report(record["results"], against)))


if __name__ == "__main__":
    main()
