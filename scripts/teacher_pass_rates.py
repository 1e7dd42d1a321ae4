"""Pass rates of the SmolLM2-135M-Instruct teacher and its 20-layer student on short reasoning-gym tasks.

Chosen task: ``products`` with ``{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}`` (one-digit
products such as "Solve the following multiplication: 4 * 1. Give only the result as your final answer."). On 32
held-out problems (seed 1), 32 new tokens, 4 samples per problem (AMD EPYC, 2 shared cores, 2026-12-02):

    task (settings)                         teacher greedy / sampled pass@1    student greedy / sampled pass@1
    products   1-digit, 2 terms             0.594 / 0.203                      0.000 / 0.008
    chain_sum  1-digit, 2 terms             0.438 / 0.250                      0.000 / 0.023
    basic_arithmetic 1-digit, 2 terms       0.062 / 0.047                      0.000 / 0.016
    chain_sum  (reasoning-gym defaults)     0.031 / 0.016                      0.000 / 0.016
    spell_backward (defaults)               0.000 / 0.000                      (not run)

The teacher answers "The answer is 4."; the 20-layer student loops ("4.\n5.\n6.\n1.\n1. ..."). With
reasoning-gym's default settings (multi-digit operands) the teacher fails too, so the settings matter: name them
(``reasoning_gym.create_dataset("products", min_terms=2, max_terms=2, min_digits=1, max_digits=1)``).

Each task is scored with its own reasoning-gym verifier (``trl_opd.assets.make_reasoning_gym_reward``, strict: 1 for
full marks, else 0) on ``--size`` held-out problems (seed 1): greedy decoding, and sampled pass@1 at temperature 1
(no top-k/top-p) averaged over ``--samples`` samples per problem. Prompts are the chat-templated questions, exactly as
the trainers render them (``trl_opd.data.prompt_token_ids``); ``--max_new_tokens`` bounds each answer.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/teacher_pass_rates.py
    python scripts/teacher_pass_rates.py --tasks chain_sum products --size 64

A task is named ``task`` (reasoning-gym's default settings) or ``task{"key": value, ...}`` (settings as JSON, passed to
``reasoning_gym.create_dataset``).
"""

from __future__ import annotations

import argparse
import json
import os
import time


os.environ.setdefault("OMP_NUM_THREADS", "1")

#: Tasks tried by default: reasoning-gym's defaults for a few short-answer tasks, and easier settings of some.
DEFAULT_TASKS = (
    "chain_sum",
    'chain_sum{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}',
    'basic_arithmetic{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}',
    'products{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}',
    "spell_backward",
)


def parse_task(spec: str) -> tuple[str, dict]:
    """``'chain_sum{"min_terms": 2}'`` -> ``("chain_sum", {"min_terms": 2})``; a bare name has no settings."""
    name, brace, rest = spec.partition("{")
    if not brace:
        return spec.strip(), {}
    try:
        config = json.loads(brace + rest)
    except json.JSONDecodeError as error:
        raise SystemExit(f"task {spec!r}: the settings after the name must be a JSON object ({error})") from None
    return name.strip(), config


def pass_rates(model, tokenizer, dataset, reward_fn, samples: int, max_new_tokens: int) -> dict[str, float]:
    """Greedy accuracy and sampled pass@1 (mean over ``samples`` samples per problem) of ``model`` on ``dataset``."""
    from trl_opd.data import prompt_token_ids
    from trl_opd.evaluation import sample

    prompts = [prompt_token_ids(tokenizer, p) for p in dataset["prompt"]]
    index = list(dataset["entry_index"])
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, eos_token_ids=[tokenizer.eos_token_id])

    def accuracy(completions, rows):
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        scores = reward_fn(completions=texts, entry_index=rows)
        return sum(scores) / len(scores), texts

    greedy, greedy_texts = accuracy(
        sample(model, prompts, do_sample=False, max_new_tokens=max_new_tokens, **kwargs), index
    )
    sampled = sample(
        model, prompts * samples, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=max_new_tokens, **kwargs
    )
    pass1, _ = accuracy(sampled, index * samples)
    return {"greedy": greedy, "sampled_pass@1": pass1, "example": greedy_texts[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="task or task{json settings}")
    parser.add_argument("--size", type=int, default=32, help="held-out problems per task")
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per problem")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_opd.assets import make_reasoning_gym_reward, pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(0)
    teacher_dir = smollm2_teacher_dir()
    paths = {"teacher": teacher_dir, "student": pruned_student_dir(teacher_dir)}
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir, padding_side="left")
    models = {name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32) for name, path in paths.items()}

    results = []
    print(f"{'task':<90} {'model':<8} {'greedy':>7} {'pass@1':>7} {'s':>5}")
    for spec in args.tasks:
        task, config = parse_task(spec)
        dataset = reasoning_gym_dataset(task, size=args.size, seed=1, config=config)
        reward_fn = make_reasoning_gym_reward(task, size=args.size, seed=1, config=config)
        for name, model in models.items():
            start = time.perf_counter()
            row = pass_rates(model, tokenizer, dataset, reward_fn, args.samples, args.max_new_tokens)
            row.update(task=task, config=config, model=name, seconds=time.perf_counter() - start)
            results.append(row)
            print(
                f"{spec:<90} {name:<8} {row['greedy']:>7.3f} {row['sampled_pass@1']:>7.3f} {row['seconds']:>5.0f}"
                f"   e.g. {row['example'][:60]!r}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
