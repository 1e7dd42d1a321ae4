"""Tiny offline building blocks for tests, benchmarks and the lab: a character tokenizer and small Llama models.

Nothing here downloads anything: the tokenizer is built from an alphabet with the ``tokenizers`` library and the
models from a ``LlamaConfig`` with random weights.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
DEFAULT_ALPHABET = string.digits + string.ascii_lowercase + " +-=?.,:\n"

# A minimal chat template: "<bos>user: ...\nassistant: ...<eos>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<eos>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer over ``alphabet`` (ids 0-3: pad, eos, bos, unk), left padding, chat template."""
    chars = list(dict.fromkeys(alphabet))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": []})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **config_kwargs,
) -> LlamaForCausalLM:
    """A randomly initialised Llama with the given sizes (fp32), its special ids taken from ``tokenizer``."""
    ids = {}
    if tokenizer is not None:
        ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
        }
    config = LlamaConfig(
        **{
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_heads,
            "max_position_embeddings": 256,
            "tie_word_embeddings": False,
            **ids,
            **config_kwargs,  # overrides any of the above
        }
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if tokenizer is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def addition_dataset(max_operand: int = 9, conversational: bool = False, seed: int = 0):
    """Rows ``{"prompt": "a+b=", "completion": "c"}`` for all 0 <= a, b <= max_operand, shuffled with ``seed``."""
    import random

    from datasets import Dataset

    rows = [(f"{a}+{b}=", str(a + b)) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(rows)
    if conversational:
        return Dataset.from_list(
            [
                {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": c}]}
                for p, c in rows
            ]
        )
    return Dataset.from_list([{"prompt": p, "completion": c} for p, c in rows])


def train_causal_lm(
    model, tokenizer, texts: list[str], steps: int = 200, lr: float = 3e-3, batch_size: int = 16, seed: int = 0
):
    """Plain next-token training of ``model`` on ``texts`` (each followed by EOS): a quick way to make a teacher.

    Returns the list of losses. Deterministic under ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = [encoded[i] for i in idx]
        width = max(map(len, batch))
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(ids)
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
