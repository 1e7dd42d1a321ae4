"""vLLM on CPU against transformers, on the SmolLM2 pair (trl_opd.assets); run in the vLLM venv (docs/teacher.md).

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_HOST_IP=127.0.0.1 OMP_NUM_THREADS=1 python bench/vllm_cpu.py [--prompts 8]
        [--new-tokens 64] [--steps 3] [--top-k 20]

1. Completion tokens/s of the student (the 20-layer pruned SmolLM2): ``model.generate`` against the vLLM engine TRL
   colocates (``vllm.LLM``), in float32 as ``vllm_dtype="float32"`` builds it (no oneDNN packing) and in vLLM's own
   default dtype. Every path samples at temperature 1 with the length forced (``min_new_tokens``), so token counts are
   equal and the ratio compares time only.
2. Seconds per GKD step (λ = 0.5, top-k) with the SmolLM2 teacher held locally, against the same teacher on a vLLM
   server on loopback (float32; started here, stopped by its PID). Both share this machine's cores.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from trl_opd import GKDConfig, GKDTrainer  # noqa: E402
from trl_opd.assets import pruned_student_dir, reasoning_gym_dataset, smollm2_teacher_dir  # noqa: E402
from trl_opd.trainers.vllm_rollouts import vllm_engine_dtype  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, int]:
    """``(median seconds, tokens)`` of ``repeats`` calls after one warm-up call."""
    times, tokens = [], 0
    for i in range(repeats + 1):
        start = time.perf_counter()
        tokens = fn()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times), tokens


def generation(args, student_dir, prompt_ids, tokenizer) -> None:
    from vllm import SamplingParams

    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    width = max(map(len, prompt_ids))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompt_ids])
    attention_mask = (input_ids != tokenizer.pad_token_id).long()
    for row, ids in enumerate(prompt_ids):
        attention_mask[row, width - len(ids) :] = 1

    def hf_generate():
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

    results = {"model.generate (float32)": timed(hf_generate, args.repeats)}
    params = SamplingParams(temperature=1.0, max_tokens=args.new_tokens, min_tokens=args.new_tokens, seed=0)
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    for dtype in ("float32", "auto"):
        config = argparse.Namespace(use_vllm=True, vllm_mode="colocate", vllm_dtype=dtype)
        with vllm_engine_dtype(config):  # float32: as the colocated engine is built (oneDNN packing off on CPU)
            from trl.generation import vllm_generation

            llm = vllm_generation.LLM(model=student_dir, max_model_len=1024, seed=0, enable_prefix_caching=False)
        engine_dtype = llm.llm_engine.model_config.dtype

        def vllm_generate(llm=llm):
            outputs = llm.generate(prompts, params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outputs)

        results[f"vLLM engine ({str(engine_dtype).removeprefix('torch.')})"] = timed(vllm_generate, args.repeats)
    base = results["model.generate (float32)"]
    print(f"\n{len(prompt_ids)} prompts x {args.new_tokens} new tokens, median of {args.repeats}")
    print("| path | median s | tokens | tokens/s | vs generate |\n|---|---|---|---|---|")
    for name, (seconds, tokens) in results.items():
        rate = tokens / seconds
        print(f"| {name} | {seconds:.2f} | {tokens} | {rate:.1f} | {rate / (base[1] / base[0]):.2f} |")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, top_k: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-logprobs", str(top_k), "--max-model-len", "2048",
    ]  # fmt: skip
    log = open(os.path.join(tempfile.mkdtemp(), "server.log"), "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited ({process.returncode}); its log: {log.name}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"the vLLM server was not healthy after 300 s; its log: {log.name}")


def steps(args, student_dir, teacher, tokenizer, data) -> list[float]:
    trainer = GKDTrainer(
        model=AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32),
        teacher_model=teacher,
        processing_class=tokenizer,
        train_dataset=data,
        args=GKDConfig(
            output_dir=tempfile.mkdtemp(),
            lmbda=0.5,
            teacher_top_k=args.top_k,
            divergence="fkl",
            per_device_train_batch_size=args.prompts,
            max_completion_length=args.new_tokens,
            max_steps=args.steps + 1,
            bf16=False,
            use_cpu=True,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            gradient_checkpointing=False,
            disable_tqdm=True,
            seed=0,
        ),
    )
    trainer.train()
    return [e["step_time"] for e in trainer.state.log_history if "step_time" in e][1:]  # the first one warms up


def teacher_step(args, student_dir, teacher_dir, tokenizer, data) -> None:
    local = steps(args, student_dir, str(teacher_dir), tokenizer, data)
    process, url = start_server(str(teacher_dir), args.top_k)
    try:
        served = steps(args, student_dir, url, tokenizer, data)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    shape = f"{args.prompts} rows x {args.new_tokens} tokens"
    print(f"\nGKD λ = 0.5, top-{args.top_k}, {shape}, median of {args.steps} steps")
    print("| teacher | median s/step | ratio |\n|---|---|---|")
    base = statistics.median(local)
    for name, values in (("local (float32)", local), ("vLLM server (float32, loopback)", served)):
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / base:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--skip", choices=("generation", "teacher"), help="leave one part out")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print("command: OMP_NUM_THREADS=%s python" % os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv))
    teacher_dir = smollm2_teacher_dir()
    student_dir = str(pruned_student_dir(teacher_dir))
    tokenizer = AutoTokenizer.from_pretrained(student_dir, padding_side="left")
    data = reasoning_gym_dataset("gsm_symbolic", size=max(args.prompts * (args.steps + 1), 16), seed=0)
    if args.skip != "generation":
        prompt_ids = [
            tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
            for row in list(data)[: args.prompts]
        ]
        prompt_ids = [tokenizer.encode(text, add_special_tokens=False) for text in prompt_ids]
        generation(args, student_dir, prompt_ids, tokenizer)
    if args.skip != "teacher":
        teacher_step(args, student_dir, teacher_dir, tokenizer, data)


if __name__ == "__main__":
    main()
