r"""Self-distillation with privileged information (OPSD): the student, shown a hint, teaches itself without it.

The teacher scores the student's completion ``y`` of prompt ``x`` after a *privileged* prompt ``x' = T(x, c)`` that
also holds the row's ``privileged_context`` ``c`` (TRL's SDFT column): ``P_T(y | x, c) -> P_S(y | x)``. The teacher
is the student's own model in one of four kinds (:data:`SELF_TEACHER_KINDS`):

* ``base``: the student's base weights with its PEFT adapter disabled (no extra copy of any weight; PEFT only);
* ``frozen``: a copy of the student's weights at step 0 (one more copy of the model);
* ``live``: the current weights, run without gradient (no copy; the target moves with the student);
* ``ema``: an exponential moving average of the trained weights, ``θ_T <- (1 - r) θ_T + r θ_S`` after every
  optimizer step (one more copy of the *trainable* weights only: the adapter under PEFT), swapped in for the
  teacher's forward pass; its state is saved with each checkpoint (:data:`EMA_STATE_NAME`).

The template rule (:func:`privileged_prompt`): the context goes into the *last user turn*, before the assistant
marker, as ``template.format(prompt=<that turn's text>, privileged_context=c)`` (default :data:`DEFAULT_TEMPLATE`,
TRL's SDFT default); the student's prompt is unchanged and both prompts are rendered by the trainer's own tokenization
(the same chat template, generation prompt included). A text (non-chat) prompt is formatted as a whole.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from .live import Teacher


PRIVILEGED_COLUMN = "privileged_context"
DEFAULT_TEMPLATE = "{prompt}\n\n{privileged_context}"
SELF_TEACHER_KINDS = ("base", "frozen", "live", "ema")
#: The file holding the EMA teacher's weights in each checkpoint folder.
EMA_STATE_NAME = "privileged_teacher_ema.pt"


def check_template(template: str) -> None:
    """Refuse a template that cannot place both the prompt and the context."""
    missing = [key for key in ("{prompt}", "{privileged_context}") if key not in template]
    if missing:
        raise ValueError(
            f"privileged_template must contain {{prompt}} and {{privileged_context}}; {', '.join(missing)} missing in "
            f"{template!r}. The default is {DEFAULT_TEMPLATE!r}."
        )


def context_text(value) -> str:
    """The privileged context as text: a string as is, a list of messages as their text contents joined by newlines,
    ``None`` as ``""`` (an empty context)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for message in value:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            parts.append(str(content))
        return "\n".join(p for p in parts if p)
    return str(value)


def privileged_prompt(prompt, context, template: str = DEFAULT_TEMPLATE):
    """The teacher's prompt: ``prompt`` (text, or a list of chat messages ending with a user turn) with ``context``
    placed by ``template`` inside its last user turn (module docstring). ``prompt`` itself is not modified."""
    text = context_text(context)
    if isinstance(prompt, str):
        return template.format(prompt=prompt, privileged_context=text)
    last = prompt[-1]
    if last.get("role") != "user":
        raise ValueError(
            f"A privileged context goes into the last user turn, but this prompt ends with a {last.get('role')!r} "
            "turn. End each prompt with the user's turn (the assistant's answer is the completion)."
        )
    content = last["content"]
    if isinstance(content, list):  # content blocks: the context goes into the last text block
        blocks = copy.deepcopy(content)
        index = max(i for i, b in enumerate(blocks) if b.get("type") == "text")
        blocks[index]["text"] = template.format(prompt=blocks[index]["text"], privileged_context=text)
        content = blocks
    else:
        content = template.format(prompt=content, privileged_context=text)
    return [*prompt[:-1], {**last, "content": content}]


def completion_text(completion) -> str:
    """A dataset completion as text (its assistant contents for a list of messages)."""
    return context_text(completion)


def copies_completion(context, completion) -> bool:
    """Whether the context holds the (non-empty, stripped) completion verbatim: the teacher can then copy it."""
    wanted = completion_text(completion).strip()
    return bool(wanted) and wanted in context_text(context)


class EMAWeights:
    """An exponential moving average of a model's trainable parameters, ``θ_T <- (1 - rate) θ_T + rate θ_S``.

    Holds one tensor per trainable parameter (by name). :meth:`swapped_in` exchanges them with the model's for the
    duration of a forward pass (no copy: the parameters' storages are swapped and swapped back).
    """

    def __init__(self, model: torch.nn.Module, rate: float):
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"privileged_ema_rate must be in (0, 1], got {rate} (1.0 copies the student each step).")
        self.rate = rate
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if not self.weights:
            raise ValueError("The EMA teacher averages trainable parameters, and the student has none.")

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One EMA step towards the model's current trainable weights."""
        params = dict(model.named_parameters())
        for name, value in self.weights.items():
            value.lerp_(params[name].detach().to(value.dtype), self.rate)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The model's trainable parameters hold the EMA weights inside the block (storages exchanged, no copy)."""
        params = dict(model.named_parameters())

        def swap():
            for name in self.weights:
                params[name].data, self.weights[name] = self.weights[name], params[name].data

        swap()
        try:
            yield
        finally:
            swap()

    def state_dict(self) -> dict:
        return {"rate": self.rate, "weights": {n: v.detach().cpu() for n, v in self.weights.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.weights) ^ set(state["weights"])
        if missing:
            raise ValueError(
                f"The EMA teacher state does not match the student's trainable parameters ({len(missing)} differ, "
                f"e.g. {sorted(missing)[0]!r}): resume with the same model and adapter as the saved run."
            )
        for name, value in state["weights"].items():
            self.weights[name].copy_(value)


class SelfTeacher(Teacher):
    """The student's own model as its teacher, in one of :data:`SELF_TEACHER_KINDS` (module docstring).

    Args:
        kind: ``"base"``, ``"frozen"``, ``"live"`` or ``"ema"``.
        model, unwrapped: the student as prepared by the trainer's accelerator, and the bare (possibly PEFT) model.
        vocab_size: the head rows the divergences compare.
        run_backbone: as :class:`~trl_opd.teachers.live.Teacher`.
        ema_rate: the EMA rate (``kind="ema"``).

    Every forward pass runs without gradient and in evaluation mode (no dropout); the student's training mode is
    restored after it.
    """

    def __init__(self, kind: str, model, unwrapped, vocab_size: int, run_backbone=None, ema_rate: float = 0.05):
        if kind not in SELF_TEACHER_KINDS:
            raise ValueError(f"privileged_teacher must be one of {', '.join(SELF_TEACHER_KINDS)}, got {kind!r}.")
        self.kind, self.ema = kind, None
        if kind == "base" and not hasattr(unwrapped, "disable_adapter"):
            raise ValueError(
                "privileged_teacher='base' disables the student's PEFT adapter, and this student has none: pass "
                "peft_config (LoRA), or use 'frozen' (a copy of the weights at step 0), 'live' or 'ema'."
            )
        training = unwrapped.training
        if kind == "frozen":
            copy_ = copy.deepcopy(unwrapped).requires_grad_(False)
            super().__init__(copy_, copy_, vocab_size, run_backbone)
        else:
            super().__init__(model, unwrapped, vocab_size, run_backbone)
            unwrapped.train(training)  # the base class puts its model in eval mode; this one is the student
        if kind == "ema":
            self.ema = EMAWeights(unwrapped, ema_rate)

    @contextlib.contextmanager
    def weights(self):
        """The teacher's weights are in place inside the block (adapter disabled, EMA swapped in), in eval mode."""
        training = self.unwrapped.training
        self.unwrapped.eval()
        with contextlib.ExitStack() as stack:
            if self.kind == "base":
                stack.enter_context(self.unwrapped.disable_adapter())
            elif self.kind == "ema":
                stack.enter_context(self.ema.swapped_in(self.unwrapped))
            try:
                yield
            finally:
                self.unwrapped.train(training)

    @property
    def head(self):
        with self.weights():
            return super().head

    @torch.no_grad()
    def hidden_states(self, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
        with self.weights():
            return self._run_backbone(self.model, self.unwrapped, input_ids, attention_mask, logits_to_keep)


def _last_user_text(prompt) -> str:
    content = prompt[-1]["content"] if isinstance(prompt, list) else prompt
    if isinstance(content, list):
        return [b for b in content if b.get("type") == "text"][-1]["text"]
    return content


def check_privileged_dataset(tokenizer, dataset, kind: str, template: str = DEFAULT_TEMPLATE):
    """What ``trl-opd check --self-teacher KIND --dataset D`` reports, as a
    :class:`~trl_opd.compatibility.CompatibilityReport`: the rows without a context (an error: the trainer refuses
    them), the rows whose context holds their completion (flagged), the teacher prompt's extra tokens, and the template
    rule checked on every row: the teacher's prompt, rendered by the student's chat template, equals the student's
    rendered prompt with the last user turn's text replaced by the template's output (so the context sits inside that
    turn, before the assistant marker, and nothing else differs)."""
    from ..compatibility import CompatibilityReport, Problem
    from ..data import prompt_token_ids

    report = CompatibilityReport(facts={"teacher": f"the student itself ({kind}), shown `{PRIVILEGED_COLUMN}`"})
    if PRIVILEGED_COLUMN not in dataset.column_names:
        report.problems.append(
            Problem(
                "error",
                f"the dataset has no `{PRIVILEGED_COLUMN}` column ({dataset.column_names}).",
                f"add a `{PRIVILEGED_COLUMN}` column: the hint the teacher sees.",
            )  # fmt: skip
        )
        return report
    rows = dataset.to_list()
    empty = [i for i, row in enumerate(rows) if not context_text(row[PRIVILEGED_COLUMN]).strip()]
    copies = sum(copies_completion(row[PRIVILEGED_COLUMN], row.get("completion")) for row in rows)
    extra, broken = [], []
    conversational = rows and isinstance(rows[0]["prompt"], list)
    for i, row in enumerate(rows):
        if i in empty:
            continue
        teacher = privileged_prompt(row["prompt"], row[PRIVILEGED_COLUMN], template)
        extra.append(len(prompt_token_ids(tokenizer, teacher)) - len(prompt_token_ids(tokenizer, row["prompt"])))
        if conversational:
            render = lambda p: tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)  # noqa: E731
            user, placed = _last_user_text(row["prompt"]), _last_user_text(teacher)
            student_text = render(row["prompt"])
            if render(teacher) != placed.join(student_text.rsplit(user, 1)):
                broken.append(i)
    report.facts.update({"rows": len(rows), "rows without a context": len(empty),
                         "rows holding the completion": copies,
                         "teacher prompt extra tokens": f"{sum(extra) / max(len(extra), 1):.1f} (mean)"})  # fmt: skip
    if empty:
        report.problems.append(Problem(
            "error", f"{len(empty)} rows have an empty or missing `{PRIVILEGED_COLUMN}` (first: row {empty[0]}); "
            "privileged_teacher refuses them.", "drop them (dataset.filter) or fill them in."))  # fmt: skip
    if copies:
        report.problems.append(Problem(
            "warning", f"{copies} rows hold their completion verbatim in `{PRIVILEGED_COLUMN}` (copyable).",
            "intended when the hint is the answer; otherwise give a hint, not the completion."))  # fmt: skip
    if broken:
        report.problems.append(Problem(
            "error", f"{len(broken)} rows' teacher prompts differ from their student prompts outside the last user "
            f"turn's text (first: row {broken[0]}): the chat template moves the context.",
            "end each prompt with a user turn whose text appears once in the rendered prompt."))  # fmt: skip
    return report
