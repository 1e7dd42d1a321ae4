"""The lab's five experiments, each run with the package's own trainers (GKDTrainer, MiniLLMTrainer, SPINTrainer,
GKDTrainer + TokenImportance) on the tasks of :mod:`trl_opd.lab.tasks`."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch

from .tasks import BimodalTask, ChainTask, make_chain_teacher, make_student, make_teacher, sample_texts, tokenizer

EPS = 1e-3  # floor of an error before taking its log (a zero error would have log = -inf)


@dataclass
class LabSize:
    name: str
    seeds: list[int]
    chain_T: list[int]
    teacher_steps: int = 800
    gkd_steps: int = 120
    compounding_steps: int = 300  # the chain student needs ~300 steps at lr 1e-2 to learn the rule (partially)
    compounding_student: dict = field(default_factory=lambda: {"hidden_size": 32, "num_heads": 4})
    ablation_T: int = 10
    modes_steps: int = 60
    spin_rounds: int = 3
    spin_steps: int = 20
    tip_fractions: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.2])
    samples_per_prompt: int = 8


SIZES = {
    "smoke": LabSize("smoke", seeds=[0], chain_T=[3, 6], teacher_steps=60, gkd_steps=4, compounding_steps=4, ablation_T=3, modes_steps=4,
                     spin_rounds=2, spin_steps=2, tip_fractions=[1.0, 0.5], samples_per_prompt=2),
    "quick": LabSize("quick", seeds=[0, 1], chain_T=[3, 6, 12]),
    "full": LabSize("full", seeds=[0, 1, 2], chain_T=[3, 6, 12, 24], teacher_steps=2000, gkd_steps=300,
                    compounding_steps=600,
                    modes_steps=150, spin_rounds=5, spin_steps=40, samples_per_prompt=16),
}
EXPERIMENTS = ("compounding", "modes", "ablation", "spin", "tip")


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def slope(xs, ys):
    """Least-squares slope of log(y) against log(x), errors floored at EPS."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, EPS)) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else float("nan")


def _quiet(trainer):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def _common(out, seed, **kw):
    return dict(output_dir=out, seed=seed, bf16=False, use_cpu=True, gradient_checkpointing=False, report_to=[],
                save_strategy="no", logging_steps=10, disable_tqdm=True, **kw)


class Lab:
    """Holds the tokenizer, the tasks and the teachers (trained once, lazily) for one lab run."""

    def __init__(self, size: LabSize, seed: int = 0, progress=None):
        torch.set_num_threads(1)
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        self.size, self.seed, self.progress = size, seed, progress
        self.tok = tokenizer()
        self.chain, self.bimodal = ChainTask(), BimodalTask()
        self._chain_teacher = self._bimodal_teacher = None
        self.teachers: dict[str, dict] = {}

    def _tick(self, label):
        if self.progress is not None:
            self.progress.set_postfix_str(label)
            self.progress.update(1)

    # ------------------------------------------------------------------------------------------------ teachers
    def chain_teacher(self):
        if self._chain_teacher is None:
            T = max(self.size.chain_T)
            start = time.perf_counter()
            model, losses = make_chain_teacher(self.tok, self.chain, T, self.size.teacher_steps, seed=self.seed)
            self.teachers["chain"] = {
                "params": sum(p.numel() for p in model.parameters()), "steps": self.size.teacher_steps,
                "final_loss": losses[-1], "seconds": time.perf_counter() - start,
                **{f"T={t}": self.chain_eval(model, t, self.seed) for t in self.size.chain_T},
            }
            self._chain_teacher = model
        return self._chain_teacher

    def bimodal_teacher(self):
        if self._bimodal_teacher is None:
            model, losses = make_teacher(self.tok, self.bimodal.texts(), max(60, self.size.teacher_steps // 8),
                                         seed=self.seed)
            self.teachers["bimodal"] = {"params": sum(p.numel() for p in model.parameters()), **self.bimodal.mass(model, self.tok)}
            self._bimodal_teacher = model
        return self._bimodal_teacher

    def chain_eval(self, model, T, seed):
        prompts, texts = sample_texts(model, self.tok, self.chain.prompts(), T, self.size.samples_per_prompt, seed)
        return self.chain.score(prompts, texts, T)

    # ------------------------------------------------------------------------------------------------ GKD on the chain
    def gkd_chain(self, T, lmbda, divergence, seed, token_importance=None, steps=None, student_kwargs=None):
        from trl_opd import GKDConfig, GKDTrainer

        teacher = self.chain_teacher()
        dataset = self.chain.dataset(T)
        with tempfile.TemporaryDirectory() as out:
            args = GKDConfig(**_common(out, seed, max_steps=steps or self.size.gkd_steps, per_device_train_batch_size=16,
                                       per_device_eval_batch_size=32, max_completion_length=T, learning_rate=1e-2,
                                       lmbda=lmbda, divergence=divergence, beta=0.5))
            student = make_student(self.tok, seed, **(student_kwargs or {}))
            trainer = _quiet(GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                                        eval_dataset=dataset, processing_class=self.tok, token_importance=token_importance))
            start = time.perf_counter()
            trainer.train()
            record = {"T": T, "lmbda": lmbda, "divergence": divergence, "seed": seed,
                      "train_seconds": time.perf_counter() - start,
                      "on_policy_divergence": trainer.evaluate()["eval_loss"]}
        record.update(self.chain_eval(student, T, seed))
        return record, student

    # ------------------------------------------------------------------------------------------------ experiments
    def compounding(self):
        runs = []
        for seed in self.size.seeds:
            for T in self.size.chain_T:
                for lmbda in (0.0, 0.5, 1.0):
                    record, _ = self.gkd_chain(T, lmbda, "fkl", seed, steps=self.size.compounding_steps,
                                               student_kwargs=self.size.compounding_student)
                    runs.append(record)
                    self._tick(f"compounding T={T} λ={lmbda} seed={seed}")
        fits = {}
        for lmbda in (0.0, 0.5, 1.0):
            per_seed = {}
            for metric in ("sequence_error", "hamming"):
                per_seed[metric] = [
                    slope(self.size.chain_T, [next(r[metric] for r in runs if r["seed"] == s and r["T"] == T and r["lmbda"] == lmbda)
                                              for T in self.size.chain_T])
                    for s in self.size.seeds
                ]
            fits[str(lmbda)] = per_seed
        return {"runs": runs, "exponents": fits, "eps": EPS}

    def ablation(self, compounding=None):
        T = self.size.ablation_T
        runs = []
        if self.size.compounding_steps == self.size.gkd_steps and not self.size.compounding_student:  # reuse only runs trained as long as the ablation's
            runs = [r for r in (compounding or {}).get("runs", []) if r["T"] == T and r["divergence"] == "fkl"]
        for seed in self.size.seeds:
            for divergence in ("fkl", "rkl", "jsd"):
                for lmbda in (0.0, 0.5, 1.0):
                    if any(r["seed"] == seed and r["lmbda"] == lmbda and r["divergence"] == divergence for r in runs):
                        continue
                    record, _ = self.gkd_chain(T, lmbda, divergence, seed)
                    runs.append(record)
                    self._tick(f"ablation {divergence} λ={lmbda} seed={seed}")
        return {"T": T, "runs": runs}

    def modes(self, methods=("fkl", "jsd", "rkl", "minillm")):
        from trl_opd import GKDConfig, GKDTrainer, MiniLLMConfig, MiniLLMTrainer

        teacher = self.bimodal_teacher()
        dataset = self.bimodal.dataset()
        runs = []
        for seed in self.size.seeds:
            for method in methods:
                student = make_student(self.tok, seed, hidden_size=4, num_heads=1)
                with tempfile.TemporaryDirectory() as out:
                    if method == "minillm":
                        args = MiniLLMConfig(**_common(out, seed, max_steps=self.size.modes_steps,
                                                       per_device_train_batch_size=16, num_generations=8,
                                                       max_completion_length=3, learning_rate=3e-2))
                        trainer = MiniLLMTrainer(model=student, teacher_model=teacher, args=args,
                                                 train_dataset=dataset.remove_columns("completion"),
                                                 processing_class=self.tok)
                    else:
                        args = GKDConfig(**_common(out, seed, max_steps=self.size.modes_steps,
                                                   per_device_train_batch_size=16, max_completion_length=3,
                                                   learning_rate=3e-2, lmbda=1.0, divergence=method, beta=0.5))
                        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                                             processing_class=self.tok)
                    _quiet(trainer).train()
                runs.append({"method": method, "seed": seed, **self.bimodal.mass(student, self.tok)})
                self._tick(f"modes {method} seed={seed}")
        return {"runs": runs, "student_hidden_size": 4}

    def spin(self):
        from trl_opd import SPINConfig, SPINTrainer

        T = self.size.ablation_T
        runs = []
        for seed in self.size.seeds:
            student = make_student(self.tok, seed)
            with tempfile.TemporaryDirectory() as out:
                args = SPINConfig(**_common(out, seed, max_steps=self.size.spin_steps, per_device_train_batch_size=16,
                                            learning_rate=3e-3, max_rounds=self.size.spin_rounds,
                                            max_completion_length=T, num_saturation_samples=16, beta=0.1))
                trainer = SPINTrainer(model=student, args=args, train_dataset=self.chain.dataset(T),
                                      processing_class=self.tok)
                model = trainer.model
                rounds = [{"round": 0, **self.chain_eval(model, T, seed)}]
                # one round at a time so the task error is measured after each
                for k in range(1, self.size.spin_rounds + 1):
                    trainer.args.max_rounds = k
                    with contextlib.redirect_stdout(io.StringIO()):  # the round's DPOTrainer prints its logs
                        history = trainer.train(resume=k > 1)
                    last = history[-1]
                    rounds.append({"round": k, "reward_margin": last.get("reward_margin"), "kl": last.get("kl"),
                                   "loss_end": last.get("loss_end"), "saturated": last.get("saturated"),
                                   **self.chain_eval(trainer.model, T, seed)})
                    self._tick(f"spin round {k} seed={seed}")
                    if last.get("saturated"):
                        break
            runs.append({"seed": seed, "rounds": rounds})
        return {"T": T, "runs": runs}

    def tip(self):
        from trl_opd.hooks import TokenImportance

        T = self.size.ablation_T
        runs = []
        for seed in self.size.seeds:
            for fraction in self.size.tip_fractions:
                hook = None if fraction >= 1.0 else TokenImportance(mode="top_fraction", keep_fraction=fraction)
                record, _ = self.gkd_chain(T, 1.0, "jsd", seed, token_importance=hook)
                runs.append({"keep_fraction": fraction, **record})
                self._tick(f"tip keep={fraction} seed={seed}")
        return {"T": T, "runs": runs}


def count_runs(size: LabSize, experiments) -> int:
    n = 0
    S = len(size.seeds)
    if "compounding" in experiments:
        n += S * len(size.chain_T) * 3
    if "ablation" in experiments:
        reuse = ("compounding" in experiments and size.ablation_T in size.chain_T
                 and size.compounding_steps == size.gkd_steps and not size.compounding_student)
        n += S * (6 if reuse else 9)
    if "modes" in experiments:
        n += S * 4
    if "spin" in experiments:
        n += S * size.spin_rounds
    if "tip" in experiments:
        n += S * len(size.tip_fractions)
    return n


def run_lab(size: LabSize, experiments=EXPERIMENTS, seed: int = 0, progress=None) -> dict:
    if seed:
        size = copy.deepcopy(size)
        size.seeds = [seed + s for s in size.seeds]
    lab = Lab(size, seed=seed, progress=progress)
    results: dict = {"size": asdict(size), "experiments": list(experiments), "seconds": {}}
    for name in EXPERIMENTS:
        if name not in experiments:
            continue
        start = time.perf_counter()
        if name == "ablation":
            results[name] = lab.ablation(results.get("compounding"))
        else:
            results[name] = getattr(lab, name)()
        results["seconds"][name] = time.perf_counter() - start
    results["teachers"] = lab.teachers
    return results
