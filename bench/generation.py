"""On-policy generation inside trl_opd.GKDTrainer vs plain ``model.generate`` on the same prompts (tokens per second).

    OMP_NUM_THREADS=1 python bench/generation.py [--prompts 8] [--new-tokens 64] [--repeats 3]

Student: the 20-layer pruned SmolLM2 (trl_opd.assets); prompts: reasoning-gym gsm_symbolic, chat template.
Both sides sample with temperature 1 and are forced to the same length (``min_new_tokens = max_new_tokens``), so the
token counts are equal and the ratio compares time only. The trainer path is ``GKDTrainer._generate_single_turn`` with
every row on-policy: prompt padding, TRL's unwrap/generation-config override, generate, and the EOS cut.
"""

import argparse
import os
import statistics
import sys
import time


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from trl_opd import DistillationConfig, GKDTrainer  # noqa: E402
from trl_opd.assets import pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print("command: OMP_NUM_THREADS=%s python" % os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))
    teacher_dir = smollm2_teacher_dir()
    student_dir = pruned_student_dir(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir, padding_side="left")
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    data = reasoning_gym_dataset("gsm_symbolic", size=args.prompts, seed=0)
    trainer = GKDTrainer(
        model=student,
        teacher_model=AutoModelForCausalLM.from_pretrained(teacher_dir),
        processing_class=tokenizer,
        train_dataset=data,
        args=DistillationConfig(
            beta=0.5,
            output_dir="/tmp/bench-generation",
            lmbda=1.0,
            max_completion_length=args.new_tokens,
            bf16=False,
            use_cpu=True,
            report_to=[],
            gradient_checkpointing=False,
            generation_kwargs={"min_new_tokens": args.new_tokens},
        ),
    )
    rows = list(data)
    prompt_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    width = max(map(len, prompt_ids))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompt_ids])
    attention_mask = (
        torch.arange(width)[None, :] >= (width - torch.tensor([len(p) for p in prompt_ids]))[:, None]
    ).long()

    def inside_trainer():
        trainer._pending = {"rows": rows, "on_policy": [True] * len(rows), "dropped": [False] * len(rows)}
        try:
            return sum(map(len, trainer._generate_single_turn(prompt_ids, None, {})))
        finally:
            trainer._pending = None

    def plain_generate():
        with torch.no_grad():
            out = student.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        return (out.shape[1] - width) * out.shape[0]

    print("| path | median s | tokens | tokens/s | ratio |\n|---|---|---|---|---|")
    results = {}
    for name, fn in (("plain model.generate", plain_generate), ("GKDTrainer on-policy", inside_trainer)):
        times, tokens = [], 0
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            tokens = fn()
            if i:
                times.append(time.perf_counter() - start)
        results[name] = (statistics.median(times), tokens)
    base = results["plain model.generate"][1] / results["plain model.generate"][0]
    for name, (seconds, tokens) in results.items():
        print(f"| {name} | {seconds:.2f} | {tokens} | {tokens / seconds:.1f} | {tokens / seconds / base:.2f} |")


if __name__ == "__main__":
    main()
