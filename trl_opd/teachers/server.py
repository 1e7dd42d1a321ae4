r"""A teacher behind an OpenAI-compatible vLLM server: its top-k + tail targets from ``prompt_logprobs``.

The trainer sends each row's prompt + completion token ids (padding removed) to the server's ``/v1/completions``
endpoint with ``max_tokens=1`` and ``prompt_logprobs=k``. vLLM answers, at every position ``t > 0`` of the sequence,
the log-probabilities of the teacher's top-k next tokens and of the token actually there (the scored token), each
with its rank, computed from the raw logits (temperature 1). For a loss token at ``t``:

* the top-k targets are the ``k`` entries of rank ``1..k``: ids ``I`` and ``log p_T(I)``;
* the tail is ``log q_T(tail) = log(1 - Σ_{i ∈ I} p_T(i))``, computed in float64 and floored at
  ``k · ε_float32`` (:data:`TAIL_FLOOR_PER_TOKEN` per top-k token): the server sends float32 log-probabilities, so a
  tail thinner than their rounding cannot be resolved;
* the scored token's ``log p_T(y_t)`` is exact (MiniLLM's per-token reward).

These are the same :class:`~trl_opd.divergences.topk.TopKTargets` as a local teacher reduced to its top k, so the loss
matches the local teacher's at the same k (within float32 rounding and the tail floor). The module uses only the
standard library's HTTP client: no vLLM import, no new dependency.

Errors: a refused connection, a timeout, HTTP 429 or 5xx are retried ``retries`` times with a doubling back-off, then
raise :class:`ServerError` naming the server, the last error and the fix; a 4xx answer (a bad request, ``k`` above the
server's ``--max-logprobs``) raises at once with vLLM's own message. An answer with NaN or +inf log-probabilities, too
few top-k entries, or a length that does not match the request raises before any loss is computed, so nothing
non-finite reaches the weights.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import torch

from ..divergences.topk import TopKTargets


#: The tail's mass is floored at this many float32 epsilons per top-k token (the rounding of ``Σ p_T(I)``).
TAIL_FLOOR_PER_TOKEN = float(torch.finfo(torch.float32).eps)
#: How a user starts a teacher server (quoted in the errors).
SERVE_HINT = (
    "start it with `python -m vllm.entrypoints.openai.api_server --model TEACHER --host 127.0.0.1 --port 8000 "
    "--dtype float32 --max-logprobs K` (docs/teacher.md, 'A teacher on a vLLM server')"
)
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class ServerError(RuntimeError):
    """The teacher server could not be used: the message names the server, what went wrong and the fix."""


def is_server_url(value) -> bool:
    """Whether a ``teacher_model`` value names a server (``http://`` or ``https://``) rather than a model; a bare
    ``host:port`` that is no folder is refused, naming the fix (it would otherwise be looked up as a Hub repo)."""
    if not isinstance(value, str):
        return False
    if value.startswith(("http://", "https://")):
        return True
    if re.fullmatch(r"[\w.-]+:\d+(/.*)?", value) and not os.path.exists(value):
        raise ValueError(
            f"teacher_model={value!r} looks like a server address without its scheme: write 'http://{value}'."
        )
    return False


class TeacherServer:
    """A small JSON client of one vLLM OpenAI-compatible server.

    Args:
        url: the server's base address, e.g. ``"http://127.0.0.1:8000"`` (a trailing ``/v1`` is accepted;
            ``"http://127.0.0.1:8000#name"`` asks for the served model ``name``).
        model: the served model name to use; ``None`` takes the only one the server lists (``/v1/models``).
        timeout: seconds one request may take.
        retries: how many times a failed request (connection, timeout, 429/5xx) is tried again.
        backoff: seconds before the first retry, doubled after each.
    """

    def __init__(
        self, url: str, model: str | None = None, timeout: float = 120.0, retries: int = 2, backoff: float = 1.0
    ):
        if not is_server_url(url):
            raise ValueError(f"A teacher server is an http:// or https:// address, got {url!r}.")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(f"timeout must be > 0 and retries, backoff >= 0; got {timeout}, {retries}, {backoff}.")
        url, _, fragment = url.partition("#")  # "http://host:port#model" names the served model
        self.url = url.rstrip("/").removesuffix("/v1")
        model = model or fragment or None
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._model = model

    def __repr__(self) -> str:
        return f"TeacherServer({self.url!r}, model={self._model!r})"

    def request(self, path: str, payload: dict | None = None) -> dict:
        """GET ``path`` (``payload=None``) or POST ``payload`` as JSON; the decoded answer, retried as documented."""
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                if error.code not in _RETRY_STATUS:
                    raise ServerError(
                        f"The teacher server {self.url} refused {path} (HTTP {error.code}): {detail}"
                        + (" Restart the server with a larger --max-logprobs." if "logprobs" in detail else "")
                    ) from None
                last = f"HTTP {error.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as error:
                last = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            else:
                try:
                    return json.loads(body)
                except ValueError:
                    raise ServerError(
                        f"The teacher server {self.url} answered {path} with something that is not JSON: "
                        f"{body[:200]!r}. Is {self.url} a vLLM OpenAI-compatible server?"
                    ) from None
        raise ServerError(
            f"The teacher server {self.url} did not answer {path} after {self.retries + 1} tries (timeout "
            f"{self.timeout:g} s each; last error: {last}). Check that it is running and reachable, or {SERVE_HINT}."
        )

    def models(self) -> list[dict]:
        """The server's ``/v1/models`` entries (``id``, ``max_model_len``, ...)."""
        return list(self.request("/v1/models").get("data") or [])

    @property
    def model(self) -> str:
        """The served model this client asks for, checked against ``/v1/models`` on first use."""
        if getattr(self, "_checked_model", None) is None:
            served = [entry.get("id") for entry in self.models()]
            if self._model is None and len(served) != 1:
                raise ServerError(
                    f"The teacher server {self.url} serves {served or 'no model'}; name the one to use "
                    f"as {self.url}#MODEL."
                )
            if self._model is not None and self._model not in served:
                raise ServerError(
                    f"The teacher server {self.url} does not serve {self._model!r}; it serves {served}. Point "
                    "teacher_model at the right server, or name a served model after '#'."
                )
            self._checked_model = self._model or served[0]
        return self._checked_model

    def max_model_len(self) -> int | None:
        """The longest sequence the served model takes (``/v1/models``), if the server says."""
        for entry in self.models():
            if entry.get("id") == self.model:
                return entry.get("max_model_len")
        return None

    def tokenize(self, text: str | None = None, messages: list | None = None, **options) -> list[int]:
        """Token ids of ``text`` (no special tokens added) or of ``messages`` under the server's chat template."""
        payload = {"model": self.model, **options}
        payload |= {"prompt": text, "add_special_tokens": False} if messages is None else {"messages": messages}
        return list(self.request("/tokenize", payload)["tokens"])

    def prompt_logprobs(self, sequences: list[list[int]], k: int) -> list[list[dict[int, tuple[float, int]] | None]]:
        """For each sequence, per position: ``{token id: (log-prob, rank)}`` (``None`` at position 0), as vLLM
        answers ``prompt_logprobs=k`` (the top-k entries and the scored token)."""
        if not sequences:
            return []
        payload = {
            "model": self.model,
            "prompt": [list(map(int, s)) for s in sequences],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": int(k),
        }
        choices = self.request("/v1/completions", payload).get("choices") or []
        if len(choices) != len(sequences):
            raise ServerError(
                f"The teacher server {self.url} answered {len(choices)} choices for {len(sequences)} sequences."
            )
        out = [None] * len(sequences)
        for choice in choices:
            index = int(choice.get("index", 0))
            positions = choice.get("prompt_logprobs")
            if positions is None or len(positions) != len(sequences[index]):
                raise ServerError(
                    f"The teacher server {self.url} answered {0 if positions is None else len(positions)} positions "
                    f"of prompt_logprobs for a sequence of {len(sequences[index])} tokens (row {index}); is it a "
                    "vLLM server (prompt_logprobs is a vLLM extension)?"
                )
            out[index] = [None if p is None else _entries(p) for p in positions]
        return out


def _entries(position: dict) -> dict[int, tuple[float, int]]:
    """``{token id: (log-prob, rank)}`` of one position of vLLM's answer (keys are token ids as strings)."""
    # A NaN log-prob may come back as JSON null: it stays NaN, and the parser refuses it.
    return {int(token): (_float(entry.get("logprob")), entry.get("rank")) for token, entry in position.items()}


def _float(value) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class ScoredTokens:
    """What the server says about N loss tokens: their top-k + tail targets and the scored tokens' log-probs."""

    targets: TopKTargets
    token_log_probs: torch.Tensor


def _parse_position(entries: dict[int, tuple[float, int]], token: int, k: int, where: str, vocab_size: int):
    """``(ids, log_probs, tail, token_log_prob)`` of one position (see the module docstring)."""
    ranked = sorted(((rank, tid, lp) for tid, (lp, rank) in entries.items() if rank is not None and rank <= k))
    if len(ranked) < k:
        raise ServerError(
            f"The teacher server answered {len(ranked)} top-k entries at {where}, expected {k}. Restart it with "
            f"--max-logprobs {k} or more."
        )
    ranked = ranked[:k]
    ids = [tid for _, tid, _ in ranked]
    log_probs = [float(lp) for _, _, lp in ranked]
    if token not in entries:
        raise ServerError(f"The teacher server did not score the token {token} at {where}.")
    token_lp = float(entries[token][0])
    for value in (*log_probs, token_lp):
        if math.isnan(value) or value > 1e-4:
            raise ServerError(
                f"The teacher server answered a log-probability of {value} at {where}: the teacher's logits are not "
                "finite there (fp16 overflow? serve it with --dtype bfloat16 or float32). Nothing was trained on it."
            )
    if max(ids) >= vocab_size:
        raise ServerError(
            f"The teacher server ranks token id {max(ids)} in its top {k} at {where}, past the {vocab_size} tokens "
            "the student and the teacher share. Check the teacher with `trl-opd check`."
        )
    mass = math.fsum(math.exp(v) for v in log_probs)
    if mass > 1.0 + 1e-3:
        raise ServerError(f"The teacher server's top-{k} probabilities sum to {mass:.6f} > 1 at {where}.")
    tail = math.log(max(1.0 - mass, k * TAIL_FLOOR_PER_TOKEN))
    return ids, log_probs, tail, token_lp


class ServerTeacher:
    """A teacher scored by a :class:`TeacherServer`: the trainer's side of the loss as top-k targets.

    Args:
        server: the client.
        top_k: the run's ``teacher_top_k`` (required: a server returns top-k log-probabilities only).
        vocab_size: the token ids the student and the teacher share (ids past it in an answer are refused).
        label: the teacher's id, for the messages.
    """

    head = None  # the chunked engine takes precomputed targets without a head
    model = unwrapped = None  # no weights in this process

    def __init__(self, server: TeacherServer, top_k: int, vocab_size: int, label: str = "teacher"):
        if top_k is None or top_k < 1:
            raise ValueError(
                f"A teacher on a server ({server.url}) returns its top-k log-probabilities only: set teacher_top_k "
                "(e.g. 20, at most the server's --max-logprobs)."
            )
        self.server, self.top_k, self.vocab_size, self.label = server, int(top_k), int(vocab_size), label
        self.requests = 0

    @torch.no_grad()
    def score(self, input_ids, attention_mask, logits_to_keep: int, mask: torch.Tensor) -> ScoredTokens:
        """The targets and token log-probs of the masked tokens among the last ``logits_to_keep`` of each row, in
        row-major order (as ``hidden_states(...)[mask]`` of a local teacher)."""
        device = mask.device
        rows = [r for r in range(input_ids.shape[0]) if bool(mask[r].any())]
        sequences, keep = [], []
        for r in rows:
            attended = attention_mask[r].bool()
            sequences.append(input_ids[r][attended].tolist())
            # The position in the unpadded sequence of each of the last logits_to_keep tokens.
            compact = attended.long().cumsum(0)[-logits_to_keep:] - 1
            keep.append(compact[mask[r]].tolist())
        limit = getattr(self, "_max_model_len", None)
        if limit is not None and sequences and max(map(len, sequences)) >= limit:
            raise ServerError(
                f"A row of {max(map(len, sequences))} tokens is too long for the teacher server {self.server.url} "
                f"(max_model_len {limit}): lower max_prompt_length / max_completion_length or serve a longer context."
            )
        answers = self.server.prompt_logprobs(sequences, self.top_k)
        self.requests += 1
        ids, log_probs, tails, token_lps = [], [], [], []
        for r, sequence, positions, answer in zip(rows, sequences, keep, answers, strict=True):
            for t in positions:
                if t <= 0 or answer[t] is None:
                    raise ServerError(f"Row {r}: a loss token at position {t} has no preceding context to score.")
                parsed = _parse_position(
                    answer[t], sequence[t], self.top_k, f"row {r}, position {t} ({self.label})", self.vocab_size
                )
                ids.append(parsed[0])
                log_probs.append(parsed[1])
                tails.append(parsed[2])
                token_lps.append(parsed[3])
        k = self.top_k
        targets = TopKTargets(
            torch.tensor(ids, dtype=torch.long, device=device).reshape(-1, k),
            torch.tensor(log_probs, dtype=torch.float32, device=device).reshape(-1, k),
            torch.tensor(tails, dtype=torch.float32, device=device),
        )
        return ScoredTokens(targets, torch.tensor(token_lps, dtype=torch.float32, device=device))

    def check(self, max_tokens: int | None, probe: list[int]) -> None:
        """Before training: refuse rows that can be longer than the served model's context, and score ``probe`` (a
        few token ids) once at this k, so that a k above the server's ``--max-logprobs`` stops the run here."""
        answer = self.server.prompt_logprobs([list(probe)], self.top_k)[0]
        for t in range(1, len(probe)):
            _parse_position(answer[t], probe[t], self.top_k, f"position {t} of a probe", self.vocab_size)
        self._max_model_len = self.server.max_model_len()
        if max_tokens is not None and self._max_model_len is not None and max_tokens >= self._max_model_len:
            raise ValueError(
                f"Rows can hold {max_tokens} tokens but the teacher server {self.server.url} serves "
                f"{self.server.model!r} with max_model_len {self._max_model_len}: lower max_prompt_length / "
                "max_completion_length, or restart it with a larger --max-model-len."
            )

    def targets(self, input_ids, attention_mask, logits_to_keep: int, loss_mask) -> TopKTargets:
        """:class:`~trl_opd.teachers.routing.TeacherSet`'s interface for a non-local teacher."""
        return self.score(input_ids, attention_mask, logits_to_keep, loss_mask).targets

    def token_log_probs(self, input_ids, attention_mask, logits_to_keep: int, mask, temperature: float = 1.0):
        """``(log p_T(y_t), targets)`` of the masked tokens, as :meth:`trl_opd.teachers.Teacher.token_log_probs`
        (with top-k targets in place of the hidden states); only ``temperature=1`` (the server's raw log-probs)."""
        check_unit_temperature(temperature, self.server.url)
        scored = self.score(input_ids, attention_mask, logits_to_keep, mask)
        return scored.token_log_probs, scored.targets


def check_unit_temperature(temperature: float, url: str) -> None:
    """A server answers log-probabilities at temperature 1; refuse another one, naming the fix."""
    if temperature != 1.0:
        raise ValueError(
            f"The teacher server {url} returns log-probabilities at temperature 1, but this run uses {temperature} "
            "for the teacher's targets. Set loss_temperature=1.0 (GKD) / temperature=1.0 (MiniLLM), or use a local "
            "teacher."
        )


#: Texts both tokenizers must split alike (whitespace, digits, code, accents, CJK, emoji).
TOKENIZER_PROBES = (
    "Hello, world! 12345 + 678 = 7023.",
    "  def f(x):\n\treturn x ** 2  # ünïcödé, 日本語, émoji 🙂\n\n",
)
_CHAT_PROBE = [{"role": "user", "content": "What is 2 + 3? Answer briefly."}]


def check_server_compatibility(server: TeacherServer, tokenizer, label: str | None = None):
    """A :class:`~trl_opd.compatibility.CompatibilityReport` of the teacher behind ``server`` against the student's
    ``tokenizer``: the served model and context (facts), and as blocking problems any probe text, special token or
    chat-template rendering that the server's tokenizer splits differently (asked through vLLM's ``/tokenize``)."""
    from ..compatibility import CompatibilityReport, Problem

    report = CompatibilityReport()
    if label is not None:
        report.facts["teacher id"] = label
    report.facts["teacher server"] = server.url
    report.facts["served model"] = server.model
    report.facts["server max_model_len"] = server.max_model_len()
    special = [t for t in (tokenizer.eos_token, tokenizer.bos_token) if t]
    probes = [*TOKENIZER_PROBES, *special]
    fix = "serve a teacher that shares the student's tokenizer (its folder's tokenizer files and chat template)."
    differing = [p for p in probes if server.tokenize(p) != tokenizer.encode(p, add_special_tokens=False)]
    for probe in differing:
        report.problems.append(Problem("error", f"The server's tokenizer splits {probe!r} differently.", fix))
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(_CHAT_PROBE, tokenize=False, add_generation_prompt=True)
        mine = tokenizer.encode(rendered, add_special_tokens=False)
        try:
            theirs = server.tokenize(messages=_CHAT_PROBE, add_generation_prompt=True)
        except ServerError as error:
            theirs, fix = None, f"give the server the student's chat template (--chat-template); it said: {error}"
        if theirs != mine:
            report.problems.append(
                Problem("error", "The server renders the chat template differently from the student's.", fix)
            )
    report.facts["teacher tokenizer"] = "same (probed)" if not report.problems else "differs"
    n_tokens = len(tokenizer)
    report.shared_vocab_size = n_tokens
    return report
