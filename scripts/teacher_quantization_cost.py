"""What a quantized teacher costs: divergence between SmolLM2-135M-Instruct in full precision and quantized, on CPU.

    OMP_NUM_THREADS=1 python scripts/teacher_quantization_cost.py                 # 8 prompts x 64 tokens
    OMP_NUM_THREADS=1 python scripts/teacher_quantization_cost.py --prompts 16 --tokens 128 --json cost.json

The reference teacher (float32, the converted GGUF folder from ``trl_opd.assets``) greedily answers reasoning-gym
prompts (chat template, ``--task`` default ``basic_arithmetic``, then ``gsm_symbolic``); every variant then scores
the same prompt + completion tokens, and the script compares the next-token distributions at the completion positions:

* forward KL ``KL(p_ref ‖ p_variant)``: what a distillation loss against the variant gets wrong, in nats/token;
* JSD(β = 0.5) (symmetric, bounded by log 2 = 0.693);
* top-1 agreement: how often the variant's argmax equals the reference's.

Variants: bfloat16; NF4 (bitsandbytes ``load_in_4bit``, ``bnb_4bit_quant_type="nf4"``, compute bf16), with and without
double quantization; int8 (``load_in_8bit``). For scale, the same numbers for the 20-layer pruned student (the gap the
distillation is meant to close). Weights in MiB come from :func:`trl_opd.memory.weight_bytes`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens per prompt (greedy, reference)")
    parser.add_argument("--task", nargs="+", default=["basic_arithmetic", "gsm_symbolic"],
                        help="reasoning-gym tasks the prompts are drawn from, in turn")  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=["bf16", "nf4", "nf4-dq", "int8", "pruned-student"])
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    return parser.parse_args(argv)


def load(folder, variant: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if variant == "fp32":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if variant in ("bf16", "pruned-student"):
        dtype = torch.bfloat16 if variant == "bf16" else torch.float32
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if variant in ("nf4", "nf4-dq"):
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=variant == "nf4-dq",
        )  # fmt: skip
    elif variant == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=config)


@torch.no_grad()
def completion_logits(model, sequences, prompt_lengths, n_tokens) -> torch.Tensor:
    """Float32 logits predicting each completion token: (prompts × n_tokens, V)."""
    rows = []
    for ids, p in zip(sequences, prompt_lengths):
        logits = model(input_ids=ids[None]).logits[0].float()
        rows.append(logits[p - 1 : p - 1 + n_tokens])
    return torch.cat(rows)


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    from trl_opd.assets import pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir
    from trl_opd.divergences import per_token_divergence
    from trl_opd.memory import ModelShape, weight_bytes

    args = parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start = time.perf_counter()
    teacher_dir = smollm2_teacher_dir()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    prompts = []
    per_task = -(-args.prompts // len(args.task))
    for task in args.task:
        data = reasoning_gym_dataset(task, size=per_task, seed=0)
        prompts += [row["prompt"] for row in data]
    prompts = prompts[: args.prompts]

    reference = load(teacher_dir, "fp32").eval()
    sequences, prompt_lengths = [], []
    for messages in prompts:  # one at a time: no padding, exactly --tokens new tokens each
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]  # fmt: skip
        out = reference.generate(input_ids=ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        sequences.append(out[0])
        prompt_lengths.append(ids.shape[1])
    ref_logits = completion_logits(reference, sequences, prompt_lengths, args.tokens)
    shape = ModelShape.from_dir(teacher_dir)
    rows = [{"variant": "fp32 (reference)", "weights_mib": weight_bytes(shape, "fp32") / 2**20,
             "fkl": 0.0, "jsd": 0.0, "top1": 1.0}]  # fmt: skip
    del reference
    for variant in args.variants:
        folder = pruned_student_dir(teacher_dir) if variant == "pruned-student" else teacher_dir
        model = load(folder, variant).eval()
        logits = completion_logits(model, sequences, prompt_lengths, args.tokens)
        fkl = per_token_divergence(logits, ref_logits, "fkl")  # KL(p_ref || p_variant): student slot = variant
        jsd = per_token_divergence(logits, ref_logits, "jsd", beta=0.5)
        quant = {"bf16": "bf16", "nf4": "nf4", "nf4-dq": "nf4", "int8": "int8", "pruned-student": "fp32"}[variant]
        vshape = ModelShape.from_dir(folder)
        rows.append({
            "variant": variant,
            "weights_mib": weight_bytes(vshape, quant, double_quant=variant == "nf4-dq") / 2**20,
            "fkl": fkl.mean().item(),
            "fkl_p90": fkl.quantile(0.9).item(),
            "jsd": jsd.mean().item(),
            "top1": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
        })  # fmt: skip
        del model
    n = len(sequences) * args.tokens
    print(f"command: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} python {' '.join(sys.argv)}")
    print(f"{len(sequences)} prompts ({', '.join(args.task)}) x {args.tokens} greedy tokens of the fp32 teacher = "
          f"{n} positions; divergences in nats/token against the fp32 teacher\n")  # fmt: skip
    header = ("teacher", "weights MiB", "FKL mean", "FKL p90", "JSD(0.5)", "top-1 agree")
    print("| {:<18} | {:>11} | {:>9} | {:>8} | {:>9} | {:>11} |".format(*header))
    print(f"|{'-' * 20}|{'-' * 13}|{'-' * 11}|{'-' * 10}|{'-' * 11}|{'-' * 13}|")
    for row in rows:
        p90 = f"{row['fkl_p90']:8.4f}" if "fkl_p90" in row else f"{'-':>8}"
        print(f"| {row['variant']:<18} | {row['weights_mib']:11.1f} | {row['fkl']:9.4f} | {p90} | {row['jsd']:9.4f} | "
              f"{row['top1']:11.3f} |")  # fmt: skip
    print(f"\n{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"positions": n, "tasks": args.task, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
