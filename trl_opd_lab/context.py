"""What every experiment of one lab run shares: the tokenizer, the tasks, the teachers (trained once, lazily), GKD on
the chain task, and the evaluation of a student on its own rollouts."""

from __future__ import annotations

import tempfile
import time

import torch
from transformers import TrainerCallback

from .settings import LabSize
from .tasks import BimodalTask, ChainTask, make_chain_teacher, make_student, make_teacher, sample_texts, tokenizer


EVAL_SEED_OFFSET = 10_000  # evaluation draws seed torch with EVAL_SEED_OFFSET + seed: apart from every training draw


def quiet(trainer):
    """``trainer`` without its printing and progress-bar callbacks."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def training_args(out, seed, **kw) -> dict:
    """The keyword arguments every lab trainer config shares (CPU, fp32, no saving, no progress bars)."""
    return dict(
        output_dir=out,
        seed=seed,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        **kw,
    )


class Lab:
    """Holds the tokenizer, the tasks and the teachers (trained once, lazily) for one lab run."""

    def __init__(self, size: LabSize, seed: int = 0, progress=None):
        torch.set_num_threads(1)
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.size, self.seed, self.progress = size, seed, progress
        self.tok = tokenizer()
        self.chain, self.bimodal = ChainTask(), BimodalTask()
        self._chain_teacher = self._bimodal_teacher = None
        self.teachers: dict[str, dict] = {}

    def tick(self, label):
        if self.progress is not None:
            self.progress.set_postfix_str(label)
            self.progress.update(1)

    # ------------------------------------------------------------------------------------------------ teachers
    def chain_teacher(self):
        if self._chain_teacher is None:
            T = self.size.teacher_T or max(max(self.size.horizons), self.size.ablation_T)
            start = time.perf_counter()
            model, losses = make_chain_teacher(self.tok, self.chain, T, self.size.teacher_steps, seed=self.seed)
            self.teachers["chain"] = {
                "params": sum(p.numel() for p in model.parameters()),
                "steps": self.size.teacher_steps,
                "T": T,
                "final_loss": losses[-1],
                "seconds": time.perf_counter() - start,
                **{
                    f"T={t}": self.chain_eval(model, t, self.seed)
                    for t in sorted({*self.size.horizons, self.size.ablation_T})
                },
            }
            self._chain_teacher = model
        return self._chain_teacher

    def bimodal_teacher(self):
        if self._bimodal_teacher is None:
            model, _losses = make_teacher(
                self.tok, self.bimodal.texts(), max(100, self.size.teacher_steps // 8), seed=self.seed
            )
            self.teachers["bimodal"] = {
                "params": sum(p.numel() for p in model.parameters()),
                **self.bimodal.mass(model, self.tok),
            }
            self._bimodal_teacher = model
        return self._bimodal_teacher

    # ------------------------------------------------------------------------------------------------ evaluation
    def rollouts(self, model, T, seed, draw: int = 0):
        """``samples_per_prompt`` rollouts per prompt at temperature 1, from a generator seeded apart from training
        (``EVAL_SEED_OFFSET + seed``; ``draw`` > 0 gives a further independent draw)."""
        eval_seed = EVAL_SEED_OFFSET + 1_000 * draw + seed
        return sample_texts(model, self.tok, self.chain.prompts(), T, self.size.samples_per_prompt, eval_seed)

    def greedy_rollouts(self, model, T):
        """One argmax rollout per prompt."""
        return sample_texts(model, self.tok, self.chain.prompts(), T, 1, 0, greedy=True)

    def chain_eval(self, model, T, seed):
        return self.chain.score(*self.rollouts(model, T, seed), T)

    def own_divergence(self, student, T, seed, divergence="jsd", per_prompt=4):
        """Token-mean divergence to the teacher on the student's own samples (``per_prompt`` per prompt), measured
        outside the trainer so that TIP's weights do not enter it."""
        from trl_opd.evaluation import mean_divergence

        prompts, texts = sample_texts(
            student, self.tok, self.chain.prompts(), T, per_prompt, EVAL_SEED_OFFSET + 7 + seed
        )
        prompt_ids, text_ids = (
            [self.tok(x, add_special_tokens=False)["input_ids"] for x in xs] for xs in (prompts, texts)
        )
        return mean_divergence(student, self.chain_teacher(), prompt_ids, text_ids, divergence, beta=0.5)

    # ------------------------------------------------------------------------------------------------ GKD on the chain
    def gkd_chain(
        self,
        T,
        lmbda,
        divergence,
        seed,
        token_importance=None,
        steps=None,
        lr=None,
        batch=None,
        schedule=None,
        curve_every=None,
        task=None,
        teacher=None,
        warm_steps=0,
        student=None,
        privileged=None,
    ):
        """One student (``size.student``) distilled by GKDTrainer on the chain at length T: (record, student).

        ``schedule``: GKDConfig's λ-schedule fields (e.g. ``{"lmbda_schedule": "three_phase"}``; ``lmbda`` is then
        unused unless the schedule is constant). ``curve_every``: record a learning curve (``record["curve"]``,
        :class:`LearningCurve`). ``task``/``teacher``: another chain task and its teacher (default: the lab's).
        ``student``: train this model (e.g. a warm start) instead of a fresh one. ``privileged``: the config's
        privileged-teacher fields (OPSD): the student is its own teacher, shown each row's answer as its
        ``privileged_context``, and no teacher model is loaded."""
        from trl_opd import DistillationConfig, GKDTrainer

        task = task or self.chain
        teacher = None if privileged else teacher or self.chain_teacher()
        batch = batch or self.size.gkd_batch
        hint = bool(privileged)
        dataset = task.dataset(T, repeat=max(1, -(-4 * batch // 20)), hint=hint)
        with tempfile.TemporaryDirectory() as out:
            args = DistillationConfig(
                **training_args(
                    out,
                    seed,
                    max_steps=steps or self.size.gkd_steps,
                    per_device_train_batch_size=batch,
                    per_device_eval_batch_size=32,
                    max_completion_length=T,
                    learning_rate=lr or self.size.gkd_lr,
                    lmbda=lmbda,
                    divergence=divergence,
                    beta=0.5,
                    **(schedule or {}),
                    **(privileged or {}),
                )
            )
            if student is None:
                student = make_student(self.tok, seed, **self.size.student)
            if warm_steps:
                from trl_opd.tiny import train_causal_lm

                texts = [p + task.completion(p, T) for p in task.prompts()]
                train_causal_lm(
                    student, self.tok, texts, steps=warm_steps, lr=self.size.spin_sft_lr, batch_size=16, seed=seed
                )
            curve = LearningCurve(self, task, T, seed, curve_every) if curve_every else None
            trainer = quiet(
                GKDTrainer(
                    model=student,
                    teacher_model=teacher,
                    args=args,
                    train_dataset=dataset,
                    eval_dataset=task.dataset(T, hint=hint),
                    processing_class=self.tok,
                    token_importance=token_importance,
                    callbacks=[curve] if curve else None,
                )
            )
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
            logged = [h for h in trainer.state.log_history if "on_policy_fraction" in h]
            record = {
                "T": T,
                "lmbda": lmbda,
                "divergence": divergence,
                "seed": seed,
                # wall time of training (a learning curve's evaluations left out)
                "train_seconds": seconds - (curve.eval_seconds if curve else 0.0),
                "on_policy_divergence": trainer.evaluate()["eval_loss"],
                # the share of rows the student sampled, as the trainer logged it (mean over the logging steps)
                "on_policy_fraction": sum(h["on_policy_fraction"] for h in logged) / len(logged) if logged else None,
            }
            if curve:
                record["curve"] = curve.points
        return record, student


class LearningCurve(TrainerCallback):
    """A TrainerCallback that measures the token error on the student's own rollouts (4 per prompt, an evaluation
    draw) every ``every`` steps and at the end: ``points`` = [{"step", "seconds" (training wall time so far, the
    evaluations left out), "token_error"}]."""

    def __init__(self, lab, task, T, seed, every, per_prompt=4):
        self.lab, self.task, self.T, self.seed, self.every, self.per_prompt = lab, task, T, seed, every, per_prompt
        self.points, self.eval_seconds, self.start = [], 0.0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def _measure(self, state, model):
        begin = time.perf_counter()
        prompts, texts = sample_texts(
            model, self.lab.tok, self.task.prompts(), self.T, self.per_prompt, EVAL_SEED_OFFSET + 500 + self.seed
        )
        error = self.task.score(prompts, texts, self.T)["token_error"]
        model.train()
        seconds = begin - self.start - self.eval_seconds
        self.eval_seconds += time.perf_counter() - begin
        self.points.append({"step": state.global_step, "seconds": seconds, "token_error": error})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._measure(state, model)
