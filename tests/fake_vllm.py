"""A fake of vLLM's OpenAI-compatible server on loopback, for the server-teacher tests of the main suite.

It answers ``/v1/models``, ``/tokenize`` and ``/v1/completions`` with ``prompt_logprobs`` the way vLLM 0.32 does (the
top-k entries of each position with their ranks, plus the scored token; token ids as string keys), computing them
from a local model, so a trainer served by it must match the same model held locally. ``faults`` injects the failures
a real server can have (a status code for the next requests, a delay, NaN log-probs).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeVLLM:
    """``with FakeVLLM(model, tokenizer) as server: server.url`` serves ``model`` on 127.0.0.1 (a free port)."""

    def __init__(self, model, tokenizer, name: str = "tiny-teacher", max_model_len: int = 256, max_logprobs: int = 20):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.max_model_len, self.max_logprobs = max_model_len, max_logprobs
        self.faults = {"status": [], "delay": 0.0, "nan": False, "chat_template": None}
        self.requests: list[tuple[str, dict | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, code: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.requests.append((self.path, None))
                if self.path == "/v1/models":
                    return self._answer(200, {"data": [{"id": fake.name, "max_model_len": fake.max_model_len}]})
                return self._answer(404, {"error": "not found"})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, payload))
                if fake.faults["delay"]:
                    time.sleep(fake.faults["delay"])
                if fake.faults["status"]:
                    return self._answer(fake.faults["status"].pop(0), {"error": "injected"})
                if self.path == "/tokenize":
                    return self._answer(200, {"tokens": fake.tokenize(payload)})
                if self.path == "/v1/completions":
                    if payload["prompt_logprobs"] > fake.max_logprobs:
                        return self._answer(400, {"error": f"Requested prompt logprobs of "
                                                  f"{payload['prompt_logprobs']}, which is greater than max allowed: "
                                                  f"{fake.max_logprobs}"})  # fmt: skip
                    return self._answer(200, {"choices": fake.complete(payload)})
                return self._answer(404, {"error": "not found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def tokenize(self, payload: dict) -> list[int]:
        if "messages" in payload:
            template = self.faults["chat_template"] or self.tokenizer.chat_template
            text = self.tokenizer.apply_chat_template(
                payload["messages"], chat_template=template, tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(payload["prompt"], add_special_tokens=payload.get("add_special_tokens", True))

    @torch.no_grad()
    def complete(self, payload: dict) -> list[dict]:
        k, choices = payload["prompt_logprobs"], []
        for index, ids in enumerate(payload["prompt"]):
            log_probs = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
            positions = [None]
            for t in range(1, len(ids)):
                row = log_probs[t - 1]
                order = row.argsort(descending=True)
                ranks = {int(token): rank + 1 for rank, token in enumerate(order.tolist())}
                chosen = [*order[:k].tolist(), ids[t]]
                nan = {"null": None, "nan": float("nan")}.get(self.faults["nan"], 0.0)
                value = (lambda token: float(row[token])) if not self.faults["nan"] else (lambda token: nan)
                positions.append(
                    {
                        str(token): {"logprob": value(token), "rank": ranks[token], "decoded_token": ""}
                        for token in chosen
                    }
                )
            choices.append({"index": index, "text": "", "prompt_logprobs": positions})
        return choices

    def __enter__(self) -> FakeVLLM:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
