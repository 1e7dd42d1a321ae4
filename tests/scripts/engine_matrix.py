"""Run by tests/test_engines.py, under `accelerate launch --config_file tests/scripts/accelerate/<engine>.yaml` or
plainly (one process): a tiny run of one trainer at a fixed global batch of 8 rows.

``python engine_matrix.py TRAINER OUT``, TRAINER one of:

- ``gkd``: GKDTrainer, JSD β = 0.5 on the teacher's top-8 tokens + tail, λ linear from 0 (step 1: off-policy only, the
  same rows on any number of processes) to 0.5 at step 2.
- ``gkd-tip``: the same with token importance (``TokenImportance()``: the top half of each micro-batch's tokens),
  whose loss projects the student's head again in the backward pass.
- ``minillm``: MiniLLMTrainer, 2 prompts × 4 generations per step.
- ``spin``: SPINTrainer, one round.

The main process writes JSON: the engine, the world size, the per-step losses, a checksum of the full student weights
after every step (gathered from ZeRO-3 partitions / FSDP2 shards on every rank), and the parameter elements each rank
holds of the student and of the teacher (:func:`trl_opd.sharding.local_numel`) next to their full counts.
"""

import json
import os
import sys


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for helpers

import fsdp_cpu_shim  # noqa: E402


fsdp_cpu_shim.install()

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


torch.set_num_threads(1)

from helpers import CPU_TRAINING_ARGS  # noqa: E402

from trl_opd.sharding import engine_of, local_numel  # noqa: E402
from trl_opd.tiny import addition_dataset, char_tokenizer, tiny_llama  # noqa: E402


GLOBAL_BATCH = 8
PLACEMENT = os.environ.get("MATRIX_TEACHER_PLACEMENT", "sharded")  # the teacher_placement of GKD and MiniLLM
COMMON = dict(**CPU_TRAINING_ARGS, disable_tqdm=True, max_completion_length=6)


def full_checksum(model) -> tuple[float, float]:
    """``(Σ w, Σ |w|)`` in float64 over the full parameters (a collective under ZeRO-3 and FSDP2: every rank calls)."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    if any(hasattr(p, "ds_tensor") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return full_checksum_of([p.detach() for p in params])
    return full_checksum_of([p.full_tensor() if isinstance(p, DTensor) else p.detach() for p in params])


def full_checksum_of(tensors) -> tuple[float, float]:
    flat = torch.cat([t.flatten().double() for t in tensors])
    return flat.sum().item(), flat.abs().sum().item()


class Checksums(TrainerCallback):
    """The full student weights' checksum after every optimizer step."""

    def __init__(self):
        self.values = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.values.append(full_checksum(getattr(model, "module", model)))  # DDP / DeepSpeed engines wrap it


def per_rank(trainer, model) -> list[int]:
    local = torch.tensor([float(local_numel(model))])
    return [int(x) for x in trainer.accelerator.gather(local).tolist()]


def build(kind: str, out_dir: str, world: int, checksums: Checksums):
    tok = char_tokenizer()
    student = tiny_llama(len(tok), tokenizer=tok, seed=1)
    teacher = tiny_llama(len(tok), tokenizer=tok, seed=2, hidden_size=64)
    per_device = GLOBAL_BATCH // world
    if kind in ("gkd", "gkd-tip"):
        from trl_opd import DistillationConfig, GKDTrainer

        args = DistillationConfig(
            output_dir=out_dir,
            per_device_train_batch_size=per_device,
            max_steps=2,
            learning_rate=1e-3,
            beta=0.5,
            teacher_top_k=8,
            teacher_placement=PLACEMENT,
            lmbda_schedule="linear",
            lmbda_start=0.0,
            lmbda_end=1.0,
            **COMMON,
        )
        hooks = {}
        if kind == "gkd-tip":  # TIP: per-token values first, the student's head projected again in the backward pass
            from trl_opd.hooks import TokenImportance

            hooks["token_importance"] = TokenImportance()
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=addition_dataset(),
            processing_class=tok,
            **hooks,
        )
        return trainer, trainer, teacher
    if kind == "minillm":
        from trl_opd import MiniLLMConfig, MiniLLMTrainer

        args = MiniLLMConfig(
            output_dir=out_dir,
            per_device_train_batch_size=per_device,
            num_generations=4,
            teacher_placement=PLACEMENT,
            max_steps=2,
            learning_rate=3e-3,
            **COMMON,
        )
        dataset = addition_dataset().rename_column("completion", "answer")
        trainer = MiniLLMTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tok
        )
        return trainer, trainer, teacher
    if kind == "spin":
        from trl_opd import SPINConfig, SPINTrainer

        args = SPINConfig(
            output_dir=out_dir,
            per_device_train_batch_size=per_device,
            max_steps=2,
            learning_rate=1e-2,
            max_rounds=1,
            num_saturation_samples=8,
            **COMMON,
        )
        spin = SPINTrainer(
            model=student,
            args=args,
            train_dataset=addition_dataset(max_operand=3),
            processing_class=tok,
            callbacks=[checksums],
        )
        return spin, None, None  # the round's DPOTrainer exists once train() runs
    raise ValueError(f"unknown trainer {kind!r}: gkd, minillm or spin")


def main(kind: str, out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    checksums = Checksums()
    runner, trainer, teacher = build(kind, os.path.dirname(out), world, checksums)
    if trainer is not None:
        trainer.add_callback(checksums)
    runner.train()
    trainer = trainer or runner.round_trainer
    student = trainer.accelerator.unwrap_model(trainer.model)
    record = {
        "engine": engine_of(trainer.accelerator),
        "world": world,
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
        "checksums": checksums.values,
        "student_numel": sum(_full_numel(p) for p in student.parameters()),
        "student_per_rank": per_rank(trainer, student),
    }
    if teacher is not None:
        prepared = trainer.teacher.unwrapped
        record["teacher_numel"] = sum(_full_numel(p) for p in prepared.parameters())
        record["teacher_per_rank"] = per_rank(trainer, prepared)
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump(record, f)


def _full_numel(p) -> int:
    return p.ds_numel if hasattr(p, "ds_numel") else p.numel()  # a DTensor's numel is its global size


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
