"""The lab's synthetic tasks, whose optimum is known, and their exact metrics.

* :class:`ChainTask` (task b): prompt = two digits ``x0 x1`` over ``K`` digits, completion = ``T`` digits with
  ``x_t = (x_{t-1} + 2 x_{t-2}) mod K``. One wrong digit derails everything after it (the next digits follow the rule
  from the wrong pair). The teacher (2 layers) learns the rule from any prefix; the 1-layer student learns it only
  partly. With K = 5 every rule sequence has period 4, a shortcut ("copy the digit 4 back") that is right on the
  teacher's sequences and wrong after the first slip: the off-policy student's way to be lost in its own states.
* :class:`BimodalTask` (task a): prompt ``"?"``, exactly two valid completions ``"ab<eos>"`` and ``"ba<eos>"`` (50 %
  each). A bigram student (a 0-layer llama: embedding -> norm -> head) fits either mode exactly but not their mixture
  (after ``b`` it must say ``<eos>`` in one mode and ``a`` in the other). Mass on each mode and "between" (every other
  completion) is computed exactly from the model's probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from datasets import Dataset

from trl_opd.evaluation import sample
from trl_opd.tiny import char_tokenizer, tiny_llama, train_causal_lm


def tokenizer():
    return char_tokenizer()


@dataclass
class ChainTask:
    """``x_t = (a·x_{t-1} + b·x_{t-2}) mod K``. The default (a, b) = (1, 2) has period 4 (or 2) on every prompt: the
    shortcut. :data:`CONTROL_CHAIN`, (1, 3), has period 24 on every prompt: no copy-back shortcut within 20 digits."""

    K: int = 5
    a: int = 1
    b: int = 2

    @property
    def digits(self) -> str:
        return "0123456789"[: self.K]

    def next_digit(self, before: int, last: int) -> int:
        """The rule's digit after ``before, last``."""
        return (self.a * last + self.b * before) % self.K

    @property
    def name(self) -> str:
        return f"x_t = ({self.a}·x_t-1 + {self.b}·x_t-2) mod {self.K}"

    def period(self, prompt: str) -> int:
        """The period of the rule sequence started by ``prompt``."""
        start = state = (int(prompt[0]), int(prompt[1]))
        for n in range(1, self.K**2 + 1):
            state = (state[1], self.next_digit(*state))
            if state == start:
                return n
        raise ValueError(f"{prompt!r} does not lie on a cycle of {self.name}")

    def prompts(self) -> list[str]:
        # Repeated-digit prompts ("aa") are left out: without a position signal a causal model sees "aa" exactly as it
        # sees "a" (attention over identical tokens averages identical values), so even the teacher cannot tell
        # "predict the prompt's second digit" from "predict the first completion digit" there, and "00" continues
        # with zeros forever (no way to know where the text ends).
        return [a + b for a in self.digits for b in self.digits if a != b]

    def completion(self, prompt: str, T: int) -> str:
        seq = [int(c) for c in prompt]
        for _ in range(T):
            seq.append(self.next_digit(seq[-2], seq[-1]))
        return "".join(map(str, seq[2:]))

    def dataset(self, T: int, repeat: int = 1, hint: bool = False) -> Dataset:
        """Every prompt with its rule completion, ``repeat`` times (so a batch may be larger than the 20 prompts);
        ``hint``: each row also holds its completion as its ``privileged_context`` (the answer, OPSD's hint)."""
        rows = [{"prompt": p, "completion": self.completion(p, T)} for p in self.prompts()]
        if hint:
            rows = [{**row, "privileged_context": row["completion"]} for row in rows]
        return Dataset.from_list(rows * repeat)

    def rule_errors(self, prompt: str, text: str, T: int) -> list[int]:
        """1 where digit t (of the first T) is missing, not a digit, or breaks the rule given the two symbols before it
        (the model's own), else 0: the per-step cost of the DAgger bound, on the model's own rollout."""
        full = prompt + text[:T]
        out = []
        for t in range(T):
            if t >= len(text) or text[t] not in self.digits:
                out.append(1)
                continue
            a, b = full[t], full[t + 1]
            ok = a in self.digits and b in self.digits and int(text[t]) == self.next_digit(int(a), int(b))
            out.append(0 if ok else 1)
        return out

    def error_profile(self, prompts: list[str], completions: list[str], T: int) -> list[float]:
        """Share of rollouts whose digit t breaks the rule, for t = 1..T (sums to the mean total errors)."""
        counts = [0] * T
        for prompt, text in zip(prompts, completions, strict=True):
            for t, e in enumerate(self.rule_errors(prompt, text, T)):
                counts[t] += e
        return [c / len(prompts) for c in counts]

    def shortcut_use(self, prompts: list[str], completions: list[str], T: int, lag: int = 4) -> dict[str, float | None]:
        """Off the track, which does the model follow: the rule or "copy the digit ``lag`` back"? Over the digits
        (of the first T) where the two disagree, given the model's own prefix (on a rule sequence of period 4 they
        agree everywhere, so this happens only after a slip): ``copy`` = share equal to the digit ``lag`` back,
        ``rule`` = share that follows the rule, ``positions`` = how many such digits (chance: 1/K each)."""
        copy = rule = n = 0
        for prompt, text in zip(prompts, completions, strict=True):
            full = prompt + text[:T]
            for j in range(max(len(prompt), lag), len(full)):
                window = full[j - lag], full[j - 2], full[j - 1], full[j]
                if not all(c in self.digits for c in window):
                    continue
                back, before, last, digit = (int(c) for c in window)
                ruled = self.next_digit(before, last)
                if ruled == back:
                    continue
                n += 1
                copy += digit == back
                rule += digit == ruled
        return {"copy": copy / n if n else None, "rule": rule / n if n else None, "positions": n}

    def error_stats(self, prompts: list[str], completions: list[str], T: int) -> dict[str, float]:
        """How errors follow each other on the first T digits, pooled over the rollouts.

        * ``hazard`` = P(digit t is an error | no error before t) = first errors / digits before-or-at a first error;
        * ``after_first`` = P(digit t is an error | an error before t) = errors after the first / digits after it
          (``None`` when no rollout errs before its last digit);
        * ``amplification`` = after_first / hazard (``None`` when either is missing or the hazard is 0);
        * ``erring`` = share of rollouts with at least one error.
        Compounding shows as after_first ≫ hazard: once off its track, the model keeps erring."""
        first, at_risk, later, after = 0, 0, 0, 0
        for prompt, text in zip(prompts, completions, strict=True):
            errs = self.rule_errors(prompt, text, T)
            k = errs.index(1) if 1 in errs else None
            if k is None:
                at_risk += T
                continue
            first += 1
            at_risk += k + 1
            later += sum(errs[k + 1 :])
            after += T - k - 1
        hazard = first / at_risk if at_risk else None
        after_first = later / after if after else None
        return {
            "hazard": hazard,
            "after_first": after_first,
            "amplification": after_first / hazard if after_first is not None and hazard else None,
            "erring": first / len(prompts),
        }

    def score(self, prompts: list[str], completions: list[str], T: int) -> dict[str, float]:
        """Sequence error (any wrong or missing digit among the first T), per-token error (each digit against the rule
        applied to the two symbols before it, *including the model's own*), and Hamming errors against the reference."""
        seq_wrong, tok_wrong, hamming = 0, 0, 0
        for prompt, text in zip(prompts, completions, strict=True):
            text = text[:T]
            reference = self.completion(prompt, T)
            local = sum(self.rule_errors(prompt, text, T))
            ham = sum(1 for t in range(T) if t >= len(text) or text[t] != reference[t])
            seq_wrong += ham > 0
            tok_wrong += local
            hamming += ham
        n = len(prompts)
        return {
            "sequence_error": seq_wrong / n,
            "token_error": tok_wrong / (n * T),
            "total_errors": tok_wrong / n,
            "hamming": hamming / n,
        }


def sample_texts(
    model, tok, prompts: list[str], max_new_tokens: int, n_per_prompt: int, seed: int, greedy: bool = False
) -> tuple[list, list]:
    """``n_per_prompt`` completions per prompt at temperature 1 (decoded without special tokens); ``greedy``: one
    argmax completion per prompt instead. The draw is seeded by ``seed`` under a forked random state, so an evaluation
    in the middle of training (a learning curve) leaves the training's own random stream where it was."""
    if greedy:
        n_per_prompt = 1
    all_prompts = [p for p in prompts for _ in range(n_per_prompt)]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in all_prompts]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = sample(
            model,
            ids,
            pad_token_id=tok.pad_token_id,
            eos_token_ids=[tok.eos_token_id],
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            **({"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0, "top_k": 0}),
        )
    return all_prompts, tok.batch_decode(out, skip_special_tokens=True)


@dataclass
class BimodalTask:
    prompt: str = "?"
    modes: tuple[str, str] = ("ab", "ba")

    def texts(self) -> list[str]:
        return [self.prompt + m for m in self.modes]

    def dataset(self, rows: int = 32) -> Dataset:
        return Dataset.from_list([{"prompt": self.prompt, "completion": self.modes[i % 2]} for i in range(rows)])

    @torch.no_grad()
    def mass(self, model, tok) -> dict[str, float]:
        """Exact probability of each mode's whole completion (its tokens and ``<eos>``), of everything else
        ("between"), and of the first token of mode 1 (``first_1``)."""
        model.eval()
        device = next(model.parameters()).device
        p_ids = tok(self.prompt, add_special_tokens=False)["input_ids"]
        out = {}
        for name, mode in zip(("mode_1", "mode_2"), self.modes, strict=True):
            ids = p_ids + tok(mode, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            log_probs = model(input_ids=torch.tensor([ids], device=device)).logits[0].float().log_softmax(-1)
            out[name] = math.exp(sum(log_probs[i - 1, ids[i]].item() for i in range(len(p_ids), len(ids))))
            if name == "mode_1":
                out["first_1"] = math.exp(log_probs[len(p_ids) - 1, ids[len(p_ids)]].item())
        out["between"] = max(0.0, 1.0 - out["mode_1"] - out["mode_2"])
        out["top_mode"] = max(out["mode_1"], out["mode_2"])
        return out


def _teacher_model(tok, hidden_size: int, num_layers: int, seed: int):
    """A fresh tiny llama over the lab's character vocabulary (teachers are seeded apart from students)."""
    return tiny_llama(
        len(tok),
        tokenizer=tok,
        hidden_size=hidden_size,
        num_layers=num_layers,
        seed=1000 + seed,
    )


def make_teacher(
    tok,
    texts: list[str],
    steps: int,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    lr: float = 3e-3,
):
    model = _teacher_model(tok, hidden_size, num_layers, seed)
    losses = train_causal_lm(model, tok, texts, steps=steps, lr=lr, batch_size=32, seed=seed)
    model.requires_grad_(False)
    return model, losses


def make_chain_teacher(
    tok,
    task: ChainTask,
    T: int,
    steps: int,
    seed: int = 0,
    noise: float = 0.15,
    hidden_size: int = 64,
    num_layers: int = 2,
    lr: float = 3e-3,
    batch_size: int = 32,
):
    """A teacher that follows the chain rule from ANY prefix, not only along the training sequences.

    Trained on rule sequences in which each completion digit is, with probability ``noise``, replaced by a random digit
    that is not trained on (label -100); the digits after it follow the rule from the corrupted pair. A teacher trained
    on the clean sequences only memorises them (argmax rule error ~0.6 on random digit prefixes), so on-policy
    distillation, which queries it on the student's own (wrong) prefixes, would be taught nonsense. This one: ~0.01.
    Returns (model, losses)."""
    import random

    model = _teacher_model(tok, hidden_size, num_layers, seed)
    rng = random.Random(seed)
    digit_ids = [tok.convert_tokens_to_ids(c) for c in task.digits]
    prompts = task.prompts()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        ids, labels = [], []
        for _ in range(batch_size):
            seq, keep = [int(c) for c in rng.choice(prompts)], [True, True]
            for _ in range(T):
                corrupt = rng.random() < noise
                seq.append(rng.randrange(task.K) if corrupt else task.next_digit(seq[-2], seq[-1]))
                keep.append(not corrupt)
            row = [digit_ids[d] for d in seq] + [tok.eos_token_id]
            ids.append(row)
            labels.append([i if k else -100 for i, k in zip(row, keep + [True], strict=True)])
        loss = model(input_ids=torch.tensor(ids), labels=torch.tensor(labels)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    model.requires_grad_(False)
    return model, losses


def make_student(tok, seed: int, hidden_size: int = 16, num_layers: int = 1, num_heads: int = 2):
    return tiny_llama(
        len(tok),
        tokenizer=tok,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        seed=100 + seed,
    )
