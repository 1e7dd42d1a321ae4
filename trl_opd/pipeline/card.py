"""The model card (``README.md``) written beside a run's model or adapter.

It names trl-opd, the method, the student and the teacher, the λ schedule and the divergence (GKD), MiniLLM's reward
extrapolation or SPIN's rounds, the data, the hooks and verifiers, the final metrics, and the keys that reproduce it.
"""

from __future__ import annotations

import json
import os

import yaml

from ..divergences.registry import REGISTRY


METHODS = {
    "gkd": ("GKD: generalized knowledge distillation with per-sample λ-mixing", "2306.13649"),
    "minillm": ("MiniLLM: reverse-KL distillation by policy gradient", "2306.08543"),
    "spin": ("SPIN: self-play fine-tuning (rounds of DPO against the previous iterate)", "2401.01335"),
    "grpo": ("GRPO: reinforcement learning on the verifiers alone (TRL's GRPOTrainer)", "2402.03300"),
}


def method_rows(run) -> list[tuple[str, str]]:
    """The rows that describe the objective of ``run``."""
    args = run.training
    if run.command == "grpo":
        return [("reward", f"the verifiers {', '.join(run.script.reward_funcs or [])}; KL penalty β = {args.beta:g}")]
    if run.command == "gkd":
        rows = [("teacher", f"the student itself ({args.privileged_teacher}), shown privileged_context")]
        return (rows if args.privileged_teacher else []) + [
            ("λ schedule", args.lambda_schedule().describe()),
            ("divergence", REGISTRY[args.divergence].describe(args.beta)),
            ("temperature", f"{args.temperature:g}"),
        ]
    if run.command == "minillm":
        return [
            ("λ schedule", "on-policy only (λ = 1): the student's own samples"),
            ("divergence", "sequence-level reverse KL (per-token teacher log-prob reward, reward-to-go)"),
            ("reward extrapolation", f"β = {args.external_reward_coef:g}, ExOPD λ = {args.extrapolation_lambda:g}"),
        ]
    return [
        ("λ schedule", "on-policy (rejected = the model's own samples)"),
        ("divergence", f"DPO {args.loss_type[0]} loss, β = {args.beta:g}, up to {args.max_rounds} round(s)"),
    ]


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render(run, result: dict, stage: str | None = None, pipeline: str | None = None) -> str:
    """The card's markdown (YAML front matter + tables)."""
    script, model = run.script, run.model
    method, paper = METHODS[run.command]
    adapter = bool(model.use_peft) or os.path.isfile(os.path.join(result["output_dir"], "adapter_config.json"))
    front = {
        "library_name": "peft" if adapter else "transformers",
        "base_model": model.model_name_or_path,
        "tags": ["trl", "trl-opd", run.command, "distillation"],
        "datasets": [script.dataset_name],
    }
    rows = [
        ("trained with", f"trl-opd `{run.command}`" + (f", stage `{stage}` of `{pipeline}`" if stage else "")),
        ("method", f"{method} ([arXiv:{paper}](https://arxiv.org/abs/{paper}))"),
        ("student", f"{model.model_name_or_path}" + (f" + LoRA r={model.lora_r}" if model.use_peft else "")
         + (" (4-bit NF4)" if model.load_in_4bit else "")),
        ("teacher", run.teacher or "none"),
        *method_rows(run),
        ("data", f"{script.dataset_name} ({script.dataset_train_split}: {result['train_rows']} rows; "
                 f"{script.dataset_test_split}: {result['test_rows'] if result['test_rows'] is not None else 'none'})"),
        ("hooks", ", ".join(f"{name} {json.dumps(getattr(script, name))}" for name in
                            ("token_importance", "prefix_filter", "curriculum") if getattr(script, name) is not None)
         or "none"),
        ("verifiers", ", ".join(script.reward_funcs or []) or "none"),
        ("optimizer steps", str(result["steps"])),
        ("seconds per step", f"{result['seconds_per_step']:.2f}"),
    ]  # fmt: skip
    title = os.path.basename(os.path.normpath(result["output_dir"]))
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    lines += ["", "## Final metrics", ""]
    if result["metrics"]:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in sorted(result["metrics"].items())]
    else:
        lines.append("none measured (no held-out split)")
    lines += ["", "## Keys of the run", "", "```yaml", yaml.safe_dump(run.given, sort_keys=True).strip(), "```", ""]
    return "\n".join(lines)


def write_model_card(run, result: dict, stage: str | None = None, pipeline: str | None = None) -> str:
    """Write ``README.md`` into the run's ``output_dir``; returns its path."""
    path = os.path.join(result["output_dir"], "README.md")
    with open(path, "w") as handle:
        handle.write(render(run, result, stage, pipeline))
    return path
