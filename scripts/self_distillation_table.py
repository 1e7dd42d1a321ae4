"""Self-distillation on the real model: SmolLM2-135M-Instruct teaches itself one-digit products, with LoRA.

Rows (every trained row takes ``--steps`` optimizer steps of ``--batch_size`` completions, the same learning rate,
LoRA adapter and training problems; docs/self-distillation.md):

* ``before``: the model before training;
* ``opsd_base``: OPSD (trl_opd ``GKDTrainer``, λ = 1, JSD(β)) whose teacher is the model itself with the adapter
  disabled, shown the answer as ``privileged_context``;
* ``opsd_ema``: the same with the EMA teacher (``--ema_rate``);
* ``sft``: TRL's ``SFTTrainer`` on the answers (the same information as the hint, as a target);
* ``grpo``: TRL's ``GRPOTrainer`` with the task's verifier alone (``--generations`` samples per prompt, so the same
  number of completions per step);
* ``opsd_grpo``: ``opsd_base`` for half the steps, then ``grpo`` for the other half on the same adapter.

Columns and seeds as ``scripts/results_table.py`` (whose evaluation, aggregation and separation test this script
imports): held-out greedy accuracy, sampled pass@1, the guards against the model before training (FKL on its samples,
RKL on the trained model's), EOS rate, distinct-2, seconds per step.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 nice -n 5 python scripts/self_distillation_table.py --json opsd.json
    python scripts/self_distillation_table.py --from_json opsd.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import time
from pathlib import Path


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

_spec = importlib.util.spec_from_file_location("results_table", Path(__file__).with_name("results_table.py"))
results_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_table)

logger = logging.getLogger("self_distillation_table")

ROWS = ("before", "opsd_base", "opsd_ema", "sft", "grpo", "opsd_grpo")
LABELS = {
    "before": "before training",
    "opsd_base": "OPSD, `base` teacher (adapter off)",
    "opsd_ema": "OPSD, `ema` teacher",
    "sft": "SFT on the answers",
    "grpo": "GRPO, verifier only",
    "opsd_grpo": "OPSD (base) → GRPO",
}
#: The hint the teacher sees: the answer.
HINT = "The correct answer is {answer}."


def lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def shared(args, seed: int, steps: int, output_dir: Path) -> dict:
    """The training arguments every trainer takes (results_table's, without the distillation-only ones)."""
    values = results_table.common_args(args, seed, steps, output_dir)
    return {k: v for k, v in values.items() if k not in ("beta", "temperature", "max_completion_length")}


def opsd(model, kind: str, seed: int, steps: int, args, dataset, tokenizer, output_dir: Path):
    from trl_opd import DistillationConfig, GKDTrainer

    config = DistillationConfig(
        **shared(args, seed, steps, output_dir),
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        lmbda=1.0,
        divergence="jsd",
        beta=args.beta,
        privileged_teacher=kind,
        privileged_ema_rate=args.ema_rate,
    )
    return GKDTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if hasattr(model, "peft_config") else lora(),
    )


def sft(model, seed: int, steps: int, args, dataset, tokenizer, output_dir: Path):
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(**shared(args, seed, steps, output_dir), max_length=512)
    columns = dataset.select_columns(["prompt", "completion"])
    return SFTTrainer(model=model, args=config, train_dataset=columns, processing_class=tokenizer, peft_config=lora())


def grpo(model, seed: int, steps: int, args, dataset, tokenizer, reward, output_dir: Path):
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        **shared(args, seed, steps, output_dir),
        max_completion_length=args.max_completion_length,
        num_generations=args.generations,
        temperature=1.0,
        beta=0.0,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset.select_columns(["prompt", "entry_index"]),
        processing_class=tokenizer,
        peft_config=None if hasattr(model, "peft_config") else lora(),
    )


def train(row: str, seed: int, args, model_path, dataset, tokenizer, reward, workdir: Path):
    """Train one row: (the trained model, seconds per optimizer step, optimizer steps)."""
    half = args.steps // 2
    plans = {
        "opsd_base": [("opsd", "base", args.steps)],
        "opsd_ema": [("opsd", "ema", args.steps)],
        "sft": [("sft", None, args.steps)],
        "grpo": [("grpo", None, args.steps)],
        "opsd_grpo": [("opsd", "base", half), ("grpo", None, args.steps - half)],
    }[row]
    model, seconds, taken = str(model_path), 0.0, 0
    for i, (kind, teacher, steps) in enumerate(plans):
        out = workdir / f"{row}-{seed}-{i}"
        if kind == "opsd":
            trainer = opsd(model, teacher, seed, steps, args, dataset, tokenizer, out)
        elif kind == "sft":
            trainer = sft(model, seed, steps, args, dataset, tokenizer, out)
        else:
            trainer = grpo(model, seed, steps, args, dataset, tokenizer, reward, out)
        start = time.perf_counter()
        trainer.train()
        seconds += time.perf_counter() - start
        taken += trainer.state.global_step
        model = trainer.accelerator.unwrap_model(trainer.model)  # the same model and adapter carry on
        logger.info("%s seed %d: stage %d (%s, %d steps) done, %.0f s", row, seed, i, kind, steps, seconds)
    if taken != args.steps:
        raise RuntimeError(f"{row} seed {seed} took {taken} optimizer steps, expected {args.steps}")
    return model, seconds / taken


def run(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_opd.assets import make_reasoning_gym_reward, reasoning_gym_dataset, smollm2_teacher_dir

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config = json.loads(args.task_config)
    model_path = smollm2_teacher_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    start_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    eval_dataset = reasoning_gym_dataset(args.task, size=args.eval_size, seed=1, config=config)
    train_all = reasoning_gym_dataset(args.task, size=args.train_size, seed=0, config=config)
    train_dataset, dropped = results_table.drop_overlap([p[-1]["content"] for p in eval_dataset["prompt"]], train_all)
    train_dataset = train_dataset.map(lambda row: {"privileged_context": HINT.format(answer=row["answer"])})
    eval_reward = make_reasoning_gym_reward(args.task, size=args.eval_size, seed=1, config=config)
    train_reward = make_reasoning_gym_reward(args.task, size=args.train_size, seed=0, config=config)

    settings = vars(args) | {"train_rows": len(train_dataset), "train_dropped": dropped}
    settings["machine"] = results_table.machine()
    workdir = Path(args.workdir)

    def produce(row: str, seed: int):
        torch.manual_seed(seed)
        if row == "before":
            return start_model, {}
        model, per_step = train(row, seed, args, model_path, train_dataset, tokenizer, train_reward, workdir)
        return model, {"seconds_per_step": per_step, "steps": args.steps}

    def held_out(model, seed: int) -> dict:
        return results_table.evaluate(
            model.eval(),
            start_model,
            tokenizer,
            eval_dataset,
            eval_reward,
            samples=args.samples,
            max_new_tokens=args.max_completion_length,
            seed=1000 + seed,
        )

    return results_table.measure_cells(Path(args.json), settings, args.rows, args.seeds, produce, held_out)


def report(record: dict) -> str:
    lines = [results_table.format_table(record["results"], rows=ROWS, labels=LABELS)]
    for against in ("before", "sft"):
        lines.append(f"\nrows apart from {against!r} beyond the seed spread (+ higher, - lower):")
        lines.extend(results_table.separation_report(record["results"], against, rows=ROWS))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="self_distillation.json", help="per-seed numbers (reruns skip them)")
    parser.add_argument("--from_json", default=None, help="only print the table of this JSON file")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--task", default="products")
    parser.add_argument("--task_config", default=json.dumps(results_table.TASK_CONFIG))
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of every trained row")
    parser.add_argument("--batch_size", type=int, default=4, help="completions per optimizer step")
    parser.add_argument("--generations", type=int, default=4, help="GRPO samples per prompt")
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.5, help="generalized JSD β of the OPSD rows")
    parser.add_argument("--ema_rate", type=float, default=0.25)
    parser.add_argument("--max_completion_length", type=int, default=24)
    parser.add_argument("--train_size", type=int, default=128)
    parser.add_argument("--eval_size", type=int, default=24)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/trl-opd-self-distillation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.from_json:
        record = json.loads(Path(args.from_json).read_text())
    else:
        start = time.perf_counter()
        record = run(args)
        print(f"wall time {time.perf_counter() - start:.0f} s")
    print(report(record))


if __name__ == "__main__":
    main()
