"""The lab's five experiments, each run with the package's own trainers (GKDTrainer, MiniLLMTrainer, SPINTrainer,
GKDTrainer + TokenImportance) on the tasks of :mod:`trl_opd.lab.tasks`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import io
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch

from ..hooks import TokenImportance
from ..tiny import train_causal_lm
from .tasks import (
    BimodalTask,
    ChainTask,
    make_chain_teacher,
    make_student,
    make_teacher,
    sample_texts,
    tokenizer,
)


EPS = 1e-3  # floor of an error before taking its log (a zero error would have log = -inf)


@dataclass
class LabSize:
    name: str
    seeds: list[int]  # every experiment
    cheap_seeds: list[int] = field(default_factory=list)  # added to ``seeds`` for the cheap ones (modes, SPIN)
    # compounding: one student per (λ, seed) trained on T_max-digit completions, its errors counted over each horizon
    horizons: list[int] = field(default_factory=lambda: [5, 10, 20, 40])
    compounding_steps: int = 450
    compounding_lr: float = 3e-3
    compounding_batch: int = 8
    teacher_steps: int = 700
    # ablation and TIP: chain at T = ablation_T, hidden-32 student
    ablation_T: int = 10
    gkd_steps: int = 150
    gkd_lr: float = 1e-2
    gkd_batch: int = 16
    student: dict = field(default_factory=lambda: {"hidden_size": 32, "num_heads": 4})
    # modes: bigram student (0 layers)
    modes_steps: int = 160
    modes_lr: float = 3e-2
    # SPIN: student first trained by SFT on the dataset, then rounds
    spin_sft_steps: int = 300
    spin_sft_lr: float = 3e-3
    spin_rounds: int = 4
    spin_steps: int = 40
    spin_lr: float = 1e-4  # 5e-4 moved each round ~2 nats of KL and undid the SFT start (likelihood displacement)
    spin_beta: float = 0.5
    tip_fractions: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.2])
    # the control: the same share of tokens kept at random (RandomTokenImportance)
    tip_random_fractions: list[float] = field(default_factory=lambda: [0.5, 0.2])
    samples_per_prompt: int = 32

    @property
    def all_seeds(self) -> list[int]:
        return self.seeds + [s for s in self.cheap_seeds if s not in self.seeds]


SIZES = {
    "smoke": LabSize(
        "smoke",
        seeds=[0],
        horizons=[3, 6],
        compounding_steps=4,
        teacher_steps=60,
        ablation_T=3,
        gkd_steps=4,
        modes_steps=4,
        spin_sft_steps=4,
        spin_rounds=2,
        spin_steps=2,
        tip_fractions=[1.0, 0.5],
        tip_random_fractions=[0.5],
        samples_per_prompt=2,
    ),
    "quick": LabSize("quick", seeds=[0, 1], cheap_seeds=[2]),
    "full": LabSize(
        "full",
        seeds=[0, 1, 2],
        cheap_seeds=[3, 4],
        compounding_steps=1000,
        teacher_steps=1500,
        gkd_steps=300,
        gkd_lr=5e-3,
        modes_steps=300,
        spin_rounds=6,
        samples_per_prompt=64,
    ),
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


@dataclass
class RandomTokenImportance(TokenImportance):
    """The TIP control: ``top_fraction`` on uniform random scores, so the same share of each micro-batch's tokens is
    kept as by TokenImportance, chosen at random (a generator seeded with ``seed``) instead of by importance."""

    mode: str = "top_fraction"
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        self.generator = torch.Generator().manual_seed(self.seed)

    def scores(self, divergence, teacher_entropy, student_entropy, vocab_size):
        return torch.rand(divergence.shape, generator=self.generator).to(divergence.device)


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

    def _tick(self, label):
        if self.progress is not None:
            self.progress.set_postfix_str(label)
            self.progress.update(1)

    # ------------------------------------------------------------------------------------------------ teachers
    def chain_teacher(self):
        if self._chain_teacher is None:
            T = max(max(self.size.horizons), self.size.ablation_T)
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
                self.tok,
                self.bimodal.texts(),
                max(100, self.size.teacher_steps // 8),
                seed=self.seed,
            )
            self.teachers["bimodal"] = {
                "params": sum(p.numel() for p in model.parameters()),
                **self.bimodal.mass(model, self.tok),
            }
            self._bimodal_teacher = model
        return self._bimodal_teacher

    def rollouts(self, model, T, seed):
        return sample_texts(model, self.tok, self.chain.prompts(), T, self.size.samples_per_prompt, seed)

    def chain_eval(self, model, T, seed):
        return self.chain.score(*self.rollouts(model, T, seed), T)

    def own_divergence(self, student, T, seed, divergence="jsd", per_prompt=4):
        """Token-mean divergence to the teacher on the student's own samples (``per_prompt`` per prompt), measured
        outside the trainer so that TIP's weights do not enter it."""
        from trl_opd.evaluation import mean_divergence

        prompts, texts = sample_texts(student, self.tok, self.chain.prompts(), T, per_prompt, seed + 7)
        enc = lambda xs: [self.tok(x, add_special_tokens=False)["input_ids"] for x in xs]
        return mean_divergence(
            student,
            self.chain_teacher(),
            enc(prompts),
            enc(texts),
            divergence,
            beta=0.5,
        )

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
    ):
        """One student (``size.student``) distilled by GKDTrainer on the chain at length T; returns (record, student)."""
        from trl_opd import GKDConfig, GKDTrainer

        teacher = self.chain_teacher()
        batch = batch or self.size.gkd_batch
        dataset = self.chain.dataset(T, repeat=max(1, -(-4 * batch // 20)))
        with tempfile.TemporaryDirectory() as out:
            args = GKDConfig(
                **_common(
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
                )
            )
            student = make_student(self.tok, seed, **self.size.student)
            trainer = _quiet(
                GKDTrainer(
                    model=student,
                    teacher_model=teacher,
                    args=args,
                    train_dataset=dataset,
                    eval_dataset=self.chain.dataset(T),
                    processing_class=self.tok,
                    token_importance=token_importance,
                )
            )
            start = time.perf_counter()
            trainer.train()
            record = {
                "T": T,
                "lmbda": lmbda,
                "divergence": divergence,
                "seed": seed,
                "train_seconds": time.perf_counter() - start,
                "on_policy_divergence": trainer.evaluate()["eval_loss"],
            }
        return record, student

    # ------------------------------------------------------------------------------------------------ experiments
    def compounding(self, lambdas=(0.0, 0.5, 1.0)):
        """One student per (λ, seed), trained with equal steps and tokens on T_max-digit completions; its rule errors
        on its own rollouts are counted position by position, so the total over the first T digits is the DAgger cost
        at horizon T (the seed: ≈ εT²/2 off-policy, εT on-policy)."""
        H = self.size.horizons
        T_max = max(H)
        runs = []
        for seed in self.size.seeds:
            for lmbda in lambdas:
                record, student = self.gkd_chain(
                    T_max,
                    lmbda,
                    "fkl",
                    seed,
                    steps=self.size.compounding_steps,
                    lr=self.size.compounding_lr,
                    batch=self.size.compounding_batch,
                )
                prompts, texts = self.rollouts(student, T_max, seed)
                profile = self.chain.error_profile(prompts, texts, T_max)
                record["profile"] = profile
                record["total_errors"] = {str(h): sum(profile[:h]) for h in H}
                record["sequence_error"] = {str(h): self.chain.score(prompts, texts, h)["sequence_error"] for h in H}
                runs.append(record)
                self._tick(f"compounding λ={lmbda} seed={seed}")
        fits = {}
        for lmbda in lambdas:
            fits[str(lmbda)] = {
                metric: [
                    slope(
                        H,
                        [next(r for r in runs if r["seed"] == s and r["lmbda"] == lmbda)[metric][str(h)] for h in H],
                    )
                    for s in self.size.seeds
                ]
                for metric in ("total_errors", "sequence_error")
            }
        return {
            "T_max": T_max,
            "horizons": H,
            "runs": runs,
            "exponents": fits,
            "eps": EPS,
            "steps": self.size.compounding_steps,
            "batch": self.size.compounding_batch,
            "student": self.size.student,
        }

    def ablation(self, lambdas=(0.0, 0.5, 1.0), divergences=("fkl", "rkl", "jsd")):
        T = self.size.ablation_T
        runs = []
        for seed in self.size.seeds:
            for divergence in divergences:
                for lmbda in lambdas:
                    record, student = self.gkd_chain(T, lmbda, divergence, seed)
                    record.update(
                        self.chain_eval(student, T, seed),
                        own_jsd=self.own_divergence(student, T, seed),
                    )
                    runs.append(record)
                    self._tick(f"ablation {divergence} λ={lmbda} seed={seed}")
        return {
            "T": T,
            "runs": runs,
            "steps": self.size.gkd_steps,
            "student": self.size.student,
        }

    def modes(self, methods=("fkl", "jsd", "rkl", "minillm"), seeds=None):
        from trl_opd import GKDConfig, GKDTrainer, MiniLLMConfig, MiniLLMTrainer

        teacher = self.bimodal_teacher()
        dataset = self.bimodal.dataset()
        runs = []
        for seed in seeds or self.size.all_seeds:
            for method in methods:
                # a bigram model: 0 transformer layers (embedding -> norm -> head); it fits one mode, not the mixture
                student = make_student(self.tok, seed, hidden_size=16, num_layers=0, num_heads=1)
                common = _common(
                    tempfile.mkdtemp(),
                    seed,
                    max_steps=self.size.modes_steps,
                    per_device_train_batch_size=16,
                    max_completion_length=4,
                    learning_rate=self.size.modes_lr,
                )
                if method == "minillm":
                    trainer = MiniLLMTrainer(
                        model=student,
                        teacher_model=teacher,
                        args=MiniLLMConfig(**common, num_generations=8),
                        train_dataset=dataset.remove_columns("completion"),
                        processing_class=self.tok,
                    )
                else:
                    trainer = GKDTrainer(
                        model=student,
                        teacher_model=teacher,
                        args=GKDConfig(**common, lmbda=1.0, divergence=method, beta=0.5),
                        train_dataset=dataset,
                        processing_class=self.tok,
                    )
                _quiet(trainer).train()
                shutil.rmtree(common["output_dir"], ignore_errors=True)
                runs.append(
                    {
                        "method": method,
                        "seed": seed,
                        **self.bimodal.mass(student, self.tok),
                    }
                )
                self._tick(f"modes {method} seed={seed}")
        return {"runs": runs, "student": "bigram (0-layer llama, hidden 16)"}

    def spin(self, seeds=None, rounds=None):
        from trl_opd import SPINConfig, SPINTrainer

        T = self.size.ablation_T
        n_rounds = rounds or self.size.spin_rounds
        runs = []
        texts = [p + self.chain.completion(p, T) for p in self.chain.prompts()]
        for seed in self.size.all_seeds if seeds is None else seeds:
            student = make_student(self.tok, seed, **self.size.student)
            # SPIN starts from a supervised model: plain next-token training on the dataset, stopped early
            train_causal_lm(
                student,
                self.tok,
                texts,
                steps=self.size.spin_sft_steps,
                lr=self.size.spin_sft_lr,
                batch_size=16,
                seed=seed,
            )
            with tempfile.TemporaryDirectory() as out:
                args = SPINConfig(
                    **_common(
                        out,
                        seed,
                        max_steps=self.size.spin_steps,
                        per_device_train_batch_size=16,
                        learning_rate=self.size.spin_lr,
                        max_rounds=n_rounds,
                        max_completion_length=T,
                        num_saturation_samples=16,
                        beta=self.size.spin_beta,
                    )
                )
                trainer = SPINTrainer(
                    model=student,
                    args=args,
                    train_dataset=self.chain.dataset(T, repeat=4),
                    processing_class=self.tok,
                )
                rounds = [{"round": 0, **self.chain_eval(trainer.model, T, seed)}]
                # one round at a time so the task error is measured after each
                for k in range(1, n_rounds + 1):
                    trainer.args.max_rounds = k
                    with contextlib.redirect_stdout(io.StringIO()):  # the round's DPOTrainer prints its logs
                        history = trainer.train(resume=k > 1)
                    last = history[-1]
                    rounds.append(
                        {
                            "round": k,
                            "reward_margin": last.get("reward_margin"),
                            "kl": last.get("kl"),
                            "loss_end": last.get("loss_end"),
                            "saturated": last.get("saturated"),
                            **self.chain_eval(trainer.model, T, seed),
                        }
                    )
                    self._tick(f"spin round {k} seed={seed}")
                    if last.get("saturated"):
                        break
            runs.append({"seed": seed, "rounds": rounds})
        return {
            "T": T,
            "runs": runs,
            "sft_steps": self.size.spin_sft_steps,
            "steps_per_round": self.size.spin_steps,
        }

    def tip(self, ablation=None, fractions=None, random_fractions=None, seeds=None):
        """GKD (λ = 1, JSD) with TokenImportance(top_fraction) at each kept fraction (1.0 = all tokens, reused from
        the ablation when it ran), and the control: the same fractions kept at random (RandomTokenImportance)."""
        T = self.size.ablation_T
        fractions = self.size.tip_fractions if fractions is None else fractions
        random_fractions = self.size.tip_random_fractions if random_fractions is None else random_fractions
        reuse = {
            r["seed"]: r
            for r in (ablation or {}).get("runs", [])
            if r["divergence"] == "jsd" and r["lmbda"] == 1.0 and r["T"] == T
        }
        runs = []
        for seed in seeds or self.size.seeds:
            cells = [("top", f) for f in fractions] + [("random", f) for f in random_fractions if f < 1.0]
            for selection, fraction in cells:
                if fraction >= 1.0:
                    selection = "all"
                    if seed in reuse:
                        # the ablation's (JSD, λ = 1) run is the all-tokens run
                        runs.append(
                            {
                                "keep_fraction": fraction,
                                "selection": selection,
                                **reuse[seed],
                            }
                        )
                        continue
                    hook = None
                elif selection == "top":
                    hook = TokenImportance(mode="top_fraction", keep_fraction=fraction)
                else:
                    hook = RandomTokenImportance(keep_fraction=fraction, seed=seed)
                record, student = self.gkd_chain(T, 1.0, "jsd", seed, token_importance=hook)
                record.update(
                    self.chain_eval(student, T, seed),
                    own_jsd=self.own_divergence(student, T, seed),
                )
                runs.append({"keep_fraction": fraction, "selection": selection, **record})
                self._tick(f"tip {selection} keep={fraction} seed={seed}")
        return {"T": T, "runs": runs}


def count_runs(size: LabSize, experiments) -> int:
    n = 0
    S = len(size.seeds)
    if "compounding" in experiments:
        n += S * 3
    if "ablation" in experiments:
        n += S * 9
    if "modes" in experiments:
        n += len(size.all_seeds) * 4
    if "spin" in experiments:
        n += len(size.all_seeds) * size.spin_rounds
    if "tip" in experiments:
        n += S * (
            len(size.tip_fractions)
            - ("ablation" in experiments and 1.0 in size.tip_fractions)
            + sum(f < 1.0 for f in size.tip_random_fractions)
        )
    return n


def _experiment_in_child(size: LabSize, seed: int, name: str) -> tuple[dict, float, dict]:
    """Run one experiment in a fresh process (its own Lab and teachers, trained from the same seeds); returns its
    results, its seconds and the teachers it trained."""
    lab = Lab(size, seed=seed)
    start = time.perf_counter()
    return getattr(lab, name)(), time.perf_counter() - start, lab.teachers


def run_lab(
    size: LabSize,
    experiments=EXPERIMENTS,
    seed: int = 0,
    progress=None,
    parallel: bool | None = None,
) -> dict:
    """Run the chosen experiments; returns every raw number (``write_report`` turns it into report.md and PNGs).

    With ``parallel`` (the default on a machine with 2 or more cores) the compounding experiment, the longest,
    runs in a second process while the others run in this one: each process uses one thread, and the second trains
    its own copy of the chain teacher from the same seed, so the numbers are those of a sequential run.
    """
    if seed:
        size = copy.deepcopy(size)
        size.seeds = [seed + s for s in size.seeds]
        size.cheap_seeds = [seed + s for s in size.cheap_seeds]
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2
    wall = time.perf_counter()
    lab = Lab(size, seed=seed, progress=progress)
    results: dict = {
        "size": asdict(size),
        "experiments": list(experiments),
        "seconds": {},
    }
    background = pool = None
    if parallel and "compounding" in experiments and len(set(experiments)) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        background = pool.submit(_experiment_in_child, size, seed, "compounding")
    try:
        for name in EXPERIMENTS:
            if name not in experiments or (name == "compounding" and background):
                continue
            start = time.perf_counter()
            if name == "tip":
                results[name] = lab.tip(results.get("ablation"))
            else:
                results[name] = getattr(lab, name)()
            results["seconds"][name] = time.perf_counter() - start
        if background is not None:
            results["compounding"], results["seconds"]["compounding"], teachers = background.result()
            for key, value in teachers.items():
                lab.teachers.setdefault(key, value)
            if progress is not None:
                progress.set_postfix_str("compounding (second process)")
                progress.update(count_runs(size, ("compounding",)))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results["teachers"] = lab.teachers
    results["wall_seconds"] = time.perf_counter() - wall
    return results
