"""Run by tests/test_distributed.py, under `torchrun --nproc_per_node N` or plainly: a tiny GKD run at a fixed global
batch, λ linear from 0 (step 1: off-policy only) to 2/3; the main process writes the per-step on-policy flags of the
global batch, the losses and a checksum of the final weights as JSON."""

import json
import os
import sys


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402


torch.set_num_threads(1)

from trl_opd import DistillationConfig, GKDTrainer  # noqa: E402
from trl_opd.tiny import addition_dataset, char_tokenizer, tiny_llama  # noqa: E402


def main(out: str, global_batch: int = 8, steps: int = 3) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tok = char_tokenizer()
    args = DistillationConfig(
        lmbda=0.5,
        beta=0.5,
        output_dir=os.path.dirname(out),
        per_device_train_batch_size=global_batch // world,
        max_steps=steps,
        max_completion_length=6,
        learning_rate=1e-3,
        lmbda_schedule="linear",
        lmbda_start=0.0,
        lmbda_end=1.0,
        bf16=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = GKDTrainer(
        model=tiny_llama(len(tok), tokenizer=tok, seed=1),
        teacher_model=tiny_llama(len(tok), tokenizer=tok, seed=2),
        args=args,
        train_dataset=addition_dataset(),
        processing_class=tok,
    )
    flags = []
    original = trainer._generate_and_score_completions

    def recording(inputs):
        output = original(inputs)  # the batch's flags are the mask the trainer drew: recompute it, then gather
        local = torch.tensor(trainer._drawn_flags[-1], dtype=torch.float32)
        flags.append(trainer.accelerator.gather(local).tolist())
        return output

    draw = trainer._generate_single_turn
    trainer._drawn_flags = []

    def generating(*a, **k):
        trainer._drawn_flags.append(list(trainer._mixed.on_policy))
        return draw(*a, **k)

    trainer._generate_single_turn = generating
    trainer._generate_and_score_completions = recording
    trainer.train()
    if trainer.accelerator.is_main_process:
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        record = {
            "world": world,
            "flags": flags,
            "losses": losses,
            "weights": weights.double().sum().item(),
            "weights_abs": weights.double().abs().sum().item(),
        }
        with open(out, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main(sys.argv[1])
