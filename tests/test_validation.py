"""Bad input is refused up front with an error that names the fix (the catalogue of issue 13)."""

import math

import pytest
from datasets import Dataset, IterableDataset
from helpers import CPU_TRAINING_ARGS, make_config, make_trainer

from trl_opd import GKDConfig, GKDTrainer, MiniLLMConfig, MiniLLMTrainer
from trl_opd.data import prepare_prompt_completion_dataset
from trl_opd.tiny import tiny_llama


def test_completion_of_the_wrong_type_names_the_column():
    with pytest.raises(TypeError, match=r"train_dataset row 0: the prompt is text, so `completion` must be text"):
        prepare_prompt_completion_dataset(Dataset.from_list([{"prompt": "1+1=", "completion": 2}]))
    with pytest.raises(TypeError, match=r"`prompt` is int"):
        prepare_prompt_completion_dataset(Dataset.from_list([{"prompt": 7, "completion": "x"}]))
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TypeError, match="must be an assistant message list"):
        prepare_prompt_completion_dataset(Dataset.from_list([{"prompt": messages, "completion": [1, 2]}]))


def test_streamed_rows_of_the_wrong_type_are_refused_at_the_batch(tmp_path, tok):
    stream = IterableDataset.from_generator(lambda: iter([{"prompt": "1+1=", "completion": 2}] * 8))
    trainer = make_trainer(tmp_path, tok, stream, lmbda=0.0, max_steps=1)
    with pytest.raises(TypeError, match="`completion` must be text"):
        trainer.train()


def test_streamed_dataset_with_undeclared_columns_names_its_real_columns():
    stream = IterableDataset.from_generator(lambda: iter([{"prompt": "1+1=", "answer": "2"}] * 4))
    assert stream.column_names is None
    with pytest.raises(ValueError, match=r"has columns \['prompt', 'answer'\]; expected `prompt` and `completion`"):
        prepare_prompt_completion_dataset(stream, needs_completion=True, completion_hint="(the hint)")


def test_empty_dataset_is_called_empty():
    with pytest.raises(ValueError, match="train_dataset has no rows"):
        prepare_prompt_completion_dataset(Dataset.from_dict({"prompt": [], "completion": []}))
    with pytest.raises(ValueError, match="is a stream with no rows"):
        prepare_prompt_completion_dataset(IterableDataset.from_generator(lambda: iter([])))


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, math.inf])
def test_temperature_is_checked_when_the_config_is_made(tmp_path, temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        GKDConfig(output_dir=str(tmp_path), temperature=temperature, **CPU_TRAINING_ARGS)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        MiniLLMConfig(output_dir=str(tmp_path), temperature=temperature, **CPU_TRAINING_ARGS)


def test_model_instance_without_a_tokenizer_needs_processing_class(tmp_path, tok, dataset):
    with pytest.raises(ValueError, match="processing_class is None and the student is a model instance"):
        GKDTrainer(
            model=tiny_llama(len(tok), tokenizer=tok),
            teacher_model=tiny_llama(len(tok), tokenizer=tok),
            args=make_config(tmp_path),
            train_dataset=dataset,
        )
    with pytest.raises(ValueError, match="processing_class is None and the student is a model instance"):
        MiniLLMTrainer(
            model=tiny_llama(len(tok), tokenizer=tok),
            teacher_model=tiny_llama(len(tok), tokenizer=tok),
            args=MiniLLMConfig(output_dir=str(tmp_path), **CPU_TRAINING_ARGS),
            train_dataset=dataset,
        )


def long_prompts(n=8):
    return Dataset.from_list([{"prompt": "1+2+3+4+5+6+7+8+9=", "completion": "45"}] * n)


def short_context_student(tok):
    return tiny_llama(len(tok), tokenizer=tok, seed=1, max_position_embeddings=16)


def test_prompt_longer_than_the_context_is_refused_naming_max_prompt_length(tmp_path, tok):
    trainer = make_trainer(tmp_path, tok, long_prompts(), student=short_context_student(tok), lmbda=1.0, max_steps=1)
    with pytest.raises(ValueError, match=r"exceeds the model's context of 16 positions. Set max_prompt_length"):
        trainer.train()


def test_max_prompt_length_left_truncates_and_counts(tmp_path, tok):
    trainer = make_trainer(
        tmp_path, tok, long_prompts(), student=short_context_student(tok), lmbda=1.0, max_steps=1, max_prompt_length=8
    )
    trainer.train()
    truncated = [log["prompts/truncated"] for log in trainer.state.log_history if "prompts/truncated" in log]
    assert truncated == [4.0]  # every prompt of the batch of 4 (18 characters) was cut to its last 8 tokens
