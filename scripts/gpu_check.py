"""GPU check of the memory planner: a Qwen2.5-7B-shaped NF4 + LoRA student and a teacher, GKD steps at 2k tokens.

    python scripts/gpu_check.py                                  # 7B NF4 student + 14B NF4 teacher, 512+1536 tokens
    python scripts/gpu_check.py --teacher qwen2.5-7b --teacher-quant bf16
    python scripts/gpu_check.py --tiny                           # tiny shapes: runs on a CPU in about a minute
    python scripts/gpu_check.py --output gpu_check.json          # also write every figure as JSON
    python scripts/gpu_check.py --student-quant bf16 --vllm 0.3  # rollouts from a colocated vLLM (needs `vllm`)

Nothing is downloaded. The models are built from the shape configs in ``trl_opd/configs`` with random weights, in
bf16, directly on the device; a model to be quantized is saved once (safetensors, bf16) to ``--workdir`` (default
/dev/shm when it has room, else a temporary folder) and loaded back with ``BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)``, then the folder is deleted (bitsandbytes
quantizes at load time). Disk: 15 GB for the 7B, 30 GB for the 14B, one at a time; 32B (64 GB) does not fit a 64 GB
disk: use 7B or 14B teachers here. The tokenizer is a character-level one with as many tokens as the heads have rows.

Then :class:`trl_opd.GKDTrainer` runs ``--steps`` optimizer steps, purely on-policy (λ = 1), LoRA on all linear layers,
gradient checkpointing, each step generating ``batch × accumulation`` completions of exactly ``--completion-length``
tokens (``min_new_tokens``) with HF generate. Peak memory is measured per phase (``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``; on a CPU, :class:`trl_opd.measurement.LiveTensorMeter`) and printed beside the
planner's prediction for the same settings, with tokens per second. Expect 4-7 minutes on one H100/H200 with the
defaults (most of it generation: 2 × 1536 sequential decoding steps of a 4-bit 7B model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from trl_opd.measurement import LiveTensorMeter, storage_bytes  # noqa: E402
from trl_opd.memory import (  # noqa: E402
    ALLOCATOR_OVERHEAD,
    CUDA_CONTEXT_BYTES,
    GIB,
    ModelShape,
    TrainingPlan,
    config_dir,
    predict,
)


TINY_SHAPES = {
    "tiny-student": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512),
    "tiny-teacher": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=512),
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="qwen2.5-7b", help="packaged shape or folder with config.json")
    parser.add_argument("--teacher", default="qwen2.5-14b", help="packaged shape or folder with config.json")
    parser.add_argument("--student-quant", default="nf4", choices=["nf4", "bf16"])
    parser.add_argument("--teacher-quant", default="nf4", choices=["nf4", "bf16"])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (each generates once)")
    parser.add_argument("--batch", type=int, default=1, help="per_device_train_batch_size")
    parser.add_argument("--grad-accum", type=int, default=2,
                        help="gradient_accumulation_steps (generation batch = batch × this)")  # fmt: skip
    parser.add_argument("--prompt-length", type=int, default=None, help="prompt tokens (default 512; --tiny: 24)")
    parser.add_argument("--completion-length", type=int, default=None,
                        help="completion tokens (default 1536; --tiny: 24)")  # fmt: skip
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--divergence", default="jsd", choices=["jsd", "fkl", "rkl", "tvd"])
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--tiny", action="store_true", help="tiny Qwen2-shaped models (CPU-friendly)")
    parser.add_argument("--workdir", default=None, help="where random-weight models are saved before 4-bit loading")
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    parser.add_argument("--vllm", type=float, default=None, metavar="SHARE",
                        help="generate with a colocated vLLM taking this share of the card "
                        "(vllm_gpu_memory_utilization;"
                        " a bf16 student, saved to --workdir for vLLM to load)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.vllm is not None and args.student_quant != "bf16":
        parser.error("--vllm needs --student-quant bf16 (vLLM loads the student from a folder, unquantized).")
    args.prompt_length = args.prompt_length or (24 if args.tiny else 512)
    args.completion_length = args.completion_length or (24 if args.tiny else 1536)
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Measuring: absolute allocated bytes per section, nested sections allowed
# ----------------------------------------------------------------------------------------------------------------------


class Meter:
    """Peak allocated bytes per named section. CUDA: ``max_memory_allocated``. CPU: the static bytes of the models
    (counted once) plus :class:`LiveTensorMeter`'s live bytes. Peaks of inner sections fold into the outer ones."""

    def __init__(self, device: torch.device, static_bytes: int = 0):
        self.device = device
        self.static = static_bytes
        self.live_meter = None if device.type == "cuda" else LiveTensorMeter()
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._open: list[list] = []  # [name, running peak, start time]

    def now(self) -> int:
        if self.live_meter is None:
            return torch.cuda.memory_allocated(self.device)
        return self.static + self.live_meter.live

    def _peak(self) -> int:
        if self.live_meter is None:
            return torch.cuda.max_memory_allocated(self.device)
        return self.static + self.live_meter.peak

    def _reset(self) -> None:
        if self.live_meter is None:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.live_meter.reset_peak()

    def enter(self, name: str) -> None:
        peak = self._peak()
        for section in self._open:
            section[1] = max(section[1], peak)
        self._reset()
        self._open.append([name, self.now(), time.perf_counter()])

    def exit(self, name: str) -> int:
        if self.live_meter is None:
            torch.cuda.synchronize(self.device)
        section = self._open.pop()
        assert section[0] == name, (section[0], name)
        peak = max(section[1], self._peak())
        for outer in self._open:
            outer[1] = max(outer[1], peak)
        self.peaks[name] = max(self.peaks.get(name, 0), peak)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - section[2]
        return peak

    @contextmanager
    def section(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit(name)

    @contextmanager
    def active(self):
        """On a CPU, track tensors while the block runs."""
        if self.live_meter is None:
            yield
        else:
            with self.live_meter:
                yield


def model_tensors(model, trainable: bool | None = None) -> list:
    """Parameters (optionally only trainable / only frozen) plus bitsandbytes quantization state."""
    params = [p for p in model.parameters() if trainable is None or p.requires_grad == trainable]
    extra = []
    if trainable is not True:
        for module in model.modules():
            state = getattr(getattr(module, "weight", None), "quant_state", None)
            if state is not None:
                extra += [state.absmax, state.code]
                if state.nested:
                    extra += [state.state2.absmax, state.state2.code, state.offset]
            scb = getattr(getattr(module, "weight", None), "SCB", None)
            if scb is not None:
                extra.append(scb)
    return params + extra


def model_bytes(model, trainable: bool | None = None) -> int:
    return storage_bytes(model_tensors(model, trainable))


# ----------------------------------------------------------------------------------------------------------------------
# Models and data
# ----------------------------------------------------------------------------------------------------------------------


def shape_config(name: str, tiny: bool) -> dict:
    if tiny:
        base = json.loads((config_dir("qwen2.5-7b") / "config.json").read_text())
        base.pop("_comment", None)
        return {**base, **TINY_SHAPES[name], "max_position_embeddings": 4096, "tie_word_embeddings": False}
    config = json.loads((config_dir(name) / "config.json").read_text())
    config.pop("_comment", None)
    return config


def build_model(config: dict, quant: str, device: torch.device, workdir: Path, tag: str):
    """Random bf16 weights built on ``device``; for ``nf4``, saved to ``workdir`` and reloaded in 4-bit."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    config = AutoConfig.for_model(**config)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if quant == "bf16":
        return model.eval()
    folder = workdir / f"random-{tag}"
    model.save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quantization, dtype=torch.bfloat16, device_map={"": str(device)}
    )
    shutil.rmtree(folder, ignore_errors=True)
    if device.type == "cpu":  # keep the CPU on the GPU's code path: no AVX512-BF16 weight repacking in eval mode
        from trl_opd.models import disable_bnb_cpu_weight_repacking

        disable_bnb_cpu_weight_repacking(model)
    return model.eval()


def make_tokenizer(vocab_size: int):
    """A character tokenizer with exactly ``vocab_size`` tokens (extra code points fill the vocabulary)."""
    from trl_opd.tiny import DEFAULT_ALPHABET, SPECIAL_TOKENS, char_tokenizer

    fill = vocab_size - len(SPECIAL_TOKENS) - len(DEFAULT_ALPHABET)
    if fill < 0:
        raise ValueError(f"vocab_size {vocab_size} is too small for the character tokenizer")
    return char_tokenizer(DEFAULT_ALPHABET + "".join(chr(0x10000 + k) for k in range(fill)))


def pick_workdir(requested: str | None, needed_bytes: int) -> Path:
    if requested:
        path = Path(requested)
    elif Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 1.2 * needed_bytes:
        path = Path("/dev/shm")
    else:
        path = Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix="trl-opd-gpu-check-", dir=path))
    return path


# ----------------------------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from peft import LoraConfig

    import trl_opd.trainers.distillation_loss as loss_module  # where GKDTrainer calls the fused chunked loss
    from trl_opd import DistillationConfig, GKDTrainer

    cuda = torch.cuda.is_available()
    if args.vllm is not None and not cuda:
        raise SystemExit(
            "--vllm needs a CUDA GPU: on a CPU the live-tensor meter would trace vLLM's compiled graphs "
            "(tests/with_vllm covers vLLM rollouts on CPU)."
        )
    if not cuda and not args.tiny:
        raise SystemExit("No CUDA GPU: this check needs one. --tiny runs the same path with tiny shapes on a CPU.")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    student_name, teacher_name = ("tiny-student", "tiny-teacher") if args.tiny else (args.student, args.teacher)
    student_cfg, teacher_cfg = shape_config(student_name, args.tiny), shape_config(teacher_name, args.tiny)
    student_shape = ModelShape.from_config(student_cfg, name=student_name)
    teacher_shape = ModelShape.from_config(teacher_cfg, name=teacher_name)
    plan = TrainingPlan(
        student_quant=args.student_quant,
        teacher_quant=args.teacher_quant,
        lora_rank=args.lora_rank,
        per_device_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum,
        prompt_length=args.prompt_length,
        completion_length=args.completion_length,
        gradient_checkpointing=args.gradient_checkpointing,
        divergence=args.divergence,
        **({} if args.vllm is None else {"generation_backend": "vllm", "vllm_gpu_memory_utilization": args.vllm}),
    )
    estimate = predict(student_shape, teacher_shape, plan)
    print(f"device: {torch.cuda.get_device_name(device) if cuda else 'cpu'}; {plan.describe()}", flush=True)

    needed = 2 * max(student_shape.num_parameters(), teacher_shape.num_parameters())
    workdir = pick_workdir(args.workdir, needed)
    figures: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "plan": plan.describe()}
    t0 = time.perf_counter()
    try:
        base = torch.cuda.memory_allocated(device) if cuda else 0
        student = build_model(student_cfg, args.student_quant, device, workdir, "student")
        after_student = torch.cuda.memory_allocated(device) if cuda else 0
        teacher = build_model(teacher_cfg, args.teacher_quant, device, workdir, "teacher")
        after_teacher = torch.cuda.memory_allocated(device) if cuda else 0
        if args.vllm is not None:  # TRL's colocated vLLM loads the student from its name_or_path
            student.save_pretrained(workdir / "vllm-student")
            student.name_or_path = student.config._name_or_path = str(workdir / "vllm-student")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    if args.vllm is None:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["load_seconds"] = time.perf_counter() - t0
    measured = {"student_weights": model_bytes(student), "teacher_weights": model_bytes(teacher)}
    if cuda:
        figures["allocated_after_student_load"] = after_student - base
        figures["allocated_after_teacher_load"] = after_teacher - after_student
    print(f"models ready in {figures['load_seconds']:.0f} s", flush=True)

    tokenizer = make_tokenizer(min(student_shape.vocab_size, teacher_shape.vocab_size))
    rng = torch.Generator().manual_seed(0)
    letters = string.ascii_lowercase
    n_rows = args.batch * args.grad_accum * args.steps
    prompts = [
        "".join(letters[i] for i in torch.randint(len(letters), (args.prompt_length,), generator=rng).tolist())
        for _ in range(n_rows)
    ]
    dataset = Dataset.from_dict({"prompt": prompts})
    config = DistillationConfig(
        output_dir=str(Path(tempfile.gettempdir()) / "trl-opd-gpu-check-out"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum,
        max_steps=args.steps,
        max_completion_length=args.completion_length,
        generation_kwargs={"min_new_tokens": args.completion_length},
        lmbda=1.0,
        divergence=args.divergence,
        beta=0.5,
        learning_rate=1e-5,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=args.gradient_checkpointing,
        disable_dropout=True,
        shuffle_dataset=False,
        seed=0,
        **(
            {}
            if args.vllm is None
            else dict(
                use_vllm=True,
                vllm_mode="colocate",
                vllm_gpu_memory_utilization=args.vllm,
                vllm_dtype="bfloat16" if cuda else "float32",
                vllm_max_model_length=args.prompt_length + args.completion_length,
            )
        ),
    )
    peft_config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    static = 0 if cuda else measured["student_weights"] + measured["teacher_weights"]
    meter = Meter(device, static)
    if meter.live_meter is not None:  # views of existing weights are not new memory
        existing = [*model_tensors(student), *model_tensors(teacher), *student.buffers(), *teacher.buffers()]
        meter.live_meter.ignore(existing)
    counts = {"generated_tokens": 0, "trained_tokens": 0, "micro_batches": 0}

    class MeasuredGKDTrainer(GKDTrainer):
        def _generate_single_turn(self, prompt_ids, *rest, **kwargs):
            with meter.section("generation"):
                out = super()._generate_single_turn(prompt_ids, *rest, **kwargs)
            counts["generated_tokens"] += sum(len(ids) for ids in out)
            return out

        def _get_last_hidden_state(self, unwrapped_model, input_ids, *rest, **kwargs):
            name = "student_forward" if torch.is_grad_enabled() else "teacher_forward"
            before = meter.now()
            with meter.section(name):
                out = super()._get_last_hidden_state(unwrapped_model, input_ids, *rest, **kwargs)
            if name == "student_forward":
                meter.peaks["activations_saved"] = max(meter.peaks.get("activations_saved", 0), meter.now() - before)
                counts["trained_tokens"] += input_ids.numel()
            else:
                meter.peaks["teacher_forward_delta"] = max(
                    meter.peaks.get("teacher_forward_delta", 0), meter.peaks["teacher_forward"] - before
                )
            return out

        def training_step(self, *a, **k):
            counts["micro_batches"] += 1
            with meter.section("training"):
                return super().training_step(*a, **k)

    # GKDTrainer computes the loss and its gradient in one pass (trl_opd.divergences.chunked_divergence_loss): the
    # loss chunks' peak is the live-memory increase during that call.
    original_loss = loss_module.chunked_divergence_loss

    def measured_loss(*a, **k):
        before = meter.now()
        with meter.section("loss"):
            out = original_loss(*a, **k)
        meter.peaks["loss_delta"] = max(meter.peaks.get("loss_delta", 0), meter.peaks["loss"] - before)
        return out

    loss_module.chunked_divergence_loss = measured_loss

    def opt_pre_hook(optimizer, *_):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        measured["gradients"] = storage_bytes(grads)
        meter.enter("optimizer")

    def opt_post_hook(optimizer, *_):
        meter.exit("optimizer")
        states = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        measured["optimizer_states"] = storage_bytes(states)

    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    hooks = [register_optimizer_step_pre_hook(opt_pre_hook), register_optimizer_step_post_hook(opt_post_hook)]
    try:
        with meter.active():
            trainer = MeasuredGKDTrainer(
                model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                processing_class=tokenizer, peft_config=peft_config,
            )  # fmt: skip
            measured["adapters"] = model_bytes(trainer.model, trainable=True)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            with meter.section("step"):
                trainer.train()
            train_seconds = time.perf_counter() - start
    finally:
        loss_module.chunked_divergence_loss = original_loss
        for hook in hooks:
            hook.remove()
        if args.vllm is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    persistent_measured = sum(measured.get(k, 0) for k in ("student_weights", "teacher_weights", "adapters",
                                                            "optimizer_states"))  # fmt: skip
    rows = [
        ("student weights", estimate.parts["student_weights"], measured["student_weights"]),
        ("LoRA adapters", estimate.parts["adapters"], measured.get("adapters")),
        ("optimizer states", estimate.parts["optimizer_states"], measured.get("optimizer_states")),
        ("gradients", estimate.parts["gradients"], measured.get("gradients")),
        ("teacher weights", estimate.parts["teacher_weights"], measured["teacher_weights"]),
        ("activations (saved)", estimate.parts["activations"], meter.peaks.get("activations_saved")),
        ("teacher forward", estimate.parts["teacher_forward"], meter.peaks.get("teacher_forward_delta")),
        ("loss chunks", estimate.parts["loss_chunks"], meter.peaks.get("loss_delta")),
        ("KV cache + prefill", estimate.parts["kv_cache"] + estimate.parts["generation_workspace"],
         meter.peaks["generation"] - persistent_measured if "generation" in meter.peaks else None),
        ("phase: generation", estimate.phase_bytes("generation"), meter.peaks.get("generation")),
        ("phase: training", estimate.phase_bytes("training"), meter.peaks.get("training")),
        ("phase: optimizer", estimate.phase_bytes("optimizer"), meter.peaks.get("optimizer")),
        ("peak allocated", estimate.peak_allocated(), meter.peaks.get("step")),
    ]  # fmt: skip
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        figures["max_memory_reserved"] = torch.cuda.max_memory_reserved(device)
        figures["device_used_now"] = total - free
        context = figures["device_used_now"] - torch.cuda.memory_reserved(device)  # what the driver holds besides
        rows.append(("reserved (alloc. overhead)", estimate.peak_allocated() * (1 + ALLOCATOR_OVERHEAD),
                     figures["max_memory_reserved"]))  # fmt: skip
        rows.append(("CUDA context", CUDA_CONTEXT_BYTES, context))
        rows.append(("predicted total", estimate.total, figures["max_memory_reserved"] + context))

    unit = GIB if not args.tiny else 2**20
    label = "GiB" if not args.tiny else "MiB"
    print(f"\n{'part':<28}{'predicted ' + label:>16}{'measured ' + label:>16}{'ratio':>8}")
    table = {}
    for name, predicted, got in rows:
        ratio = f"{predicted / got:8.2f}" if got else f"{'-':>8}"
        got_text = f"{got / unit:16.3f}" if got is not None else f"{'-':>16}"
        print(f"{name:<28}{predicted / unit:16.3f}{got_text}{ratio}")
        table[name] = {"predicted_bytes": int(predicted), "measured_bytes": None if got is None else int(got)}
    gen_s = meter.seconds.get("generation", float("nan"))
    train_s = meter.seconds.get("training", float("nan"))
    speed = {
        "generation_tokens_per_second": counts["generated_tokens"] / gen_s,
        "training_tokens_per_second": counts["trained_tokens"] / train_s,
        "seconds_per_optimizer_step": train_seconds / args.steps,
        "generated_tokens": counts["generated_tokens"],
        "trained_tokens": counts["trained_tokens"],
    }
    print(
        f"\ngeneration: {speed['generation_tokens_per_second']:.1f} tokens/s ({counts['generated_tokens']} tokens); "
        f"training forward+backward: {speed['training_tokens_per_second']:.0f} tokens/s; "
        f"{speed['seconds_per_optimizer_step']:.1f} s per optimizer step; total {time.perf_counter() - t0:.0f} s"
    )
    if cuda:
        print(
            f"max reserved {figures['max_memory_reserved'] / GIB:.2f} GiB; device memory in use now "
            f"{figures['device_used_now'] / GIB:.2f} GiB (CUDA context included)"
        )
    figures.update({"table": table, "speed": speed, "seconds": meter.seconds})
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=2))
    return figures


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
