"""The lab's sizes (``--smoke``, ``--quick``, ``--full``) and the factor levels every experiment shares."""

from __future__ import annotations

from dataclasses import dataclass, field


RESULTS_SCHEMA = 1  # results.json layout (0, no "schema" key: per-horizon values keyed by str(T))
LAMBDAS = (0.0, 0.5, 1.0)  # the on-policy probabilities compared by compounding and the ablation
GKD_DIVERGENCES = ("fkl", "rkl", "jsd")  # the ablation's divergences
MODE_METHODS = ("fkl", "jsd", "rkl", "minillm")  # the modes experiment: GKD's three divergences and MiniLLM


@dataclass
class LabSize:
    name: str
    seeds: list[int]  # every experiment
    cheap_seeds: list[int] = field(default_factory=list)  # added to ``seeds`` for the cheap ones (modes, SPIN)
    # the chain teacher's seeds (offsets from the base seed): the chain experiments run once per teacher seed
    teacher_seeds: list[int] = field(default_factory=lambda: [0])
    # compounding: one student per (λ, seed) trained on T_max-digit completions, its errors counted over each horizon
    horizons: list[int] = field(default_factory=lambda: [5, 10, 20, 40])
    compounding_steps: int = 450
    compounding_lr: float = 3e-3
    compounding_batch: int = 8
    teacher_steps: int = 700
    teacher_T: int | None = None  # the chain teacher's sequence length (None: the longest horizon or ablation_T)
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
    # λ schedules: chain at T = schedule_T, the compounding student and optimiser, FKL, a learning curve of
    # schedule_curve_points points per run
    schedule_T: int = 20
    schedule_steps: int = 300
    schedule_lr: float = 3e-3
    schedule_batch: int = 8
    schedule_divergence: str = "fkl"
    schedule_curve_points: int = 10
    # TIP warm-started: the student first trained by SFT for tip_warm_steps (0: no warm-started runs)
    tip_warm_steps: int = 300
    # OPSD: a warm start trained on the chain with and without the answer as a hint, then OPSD (its own teacher shown
    # the answer, one run per kind), SFT on the answers and GKD from the chain teacher, each for gkd_steps at gkd_lr
    # (T = ablation_T)
    opsd_warm_steps: int = 600  # with the hint, 300 steps left seeds 0, 1 at token error 0.19, 0.31; 600 at 0.02, 0.14
    # the self-teacher kinds compared (a tiny model has no PEFT adapter, so no `base`)
    opsd_teachers: list[str] = field(default_factory=lambda: ["frozen", "ema", "live"])
    opsd_divergence: str = "jsd"
    # the experiments run in a second process when there are two cores (they reuse no other's runs)
    background: list[str] = field(default_factory=lambda: ["compounding"])

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
        schedule_T=3,
        schedule_steps=4,
        schedule_curve_points=2,
        tip_warm_steps=4,
        opsd_warm_steps=4,
        tip_fractions=[1.0, 0.5],
        tip_random_fractions=[0.5],
        samples_per_prompt=2,
    ),
    "quick": LabSize("quick", seeds=[0, 1], cheap_seeds=[2]),
    # 3 student seeds x 2 teacher seeds for the chain experiments (5 seeds for modes and SPIN) at --quick's steps and
    # half its samples: what fits in about an hour on a shared 2-core machine (longer training did not fit)
    "full": LabSize(
        "full",
        seeds=[0, 1, 2],
        cheap_seeds=[3, 4],
        teacher_seeds=[0, 1],
        samples_per_prompt=16,
        background=["compounding", "spin", "tip"],  # balances the two processes (schedules stays in the first)
    ),
}
