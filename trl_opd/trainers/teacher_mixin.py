"""The teacher plumbing shared by the trainers that distil from one (GKD, MiniLLM).

:class:`trl_opd.trainers.lifecycle.DistillationSetUp` calls :meth:`TeacherMixin._load_teachers` before the TRL base
``__init__`` (TRL's own teacher handling would refuse heads padded to different sizes) and
:meth:`TeacherMixin._attach_teachers` after it. The mixin then holds ``self.teachers`` (a
:class:`trl_opd.teachers.TeacherSet`: the live teachers by id and the optional offline cache), ``self.teacher`` and
``self.teacher_model`` (the first live teacher and its prepared model, as in TRL's trainers; ``None`` for a cache-only
run), ``self.vocab_size`` (the vocabulary every head shares) and ``self.teacher_top_k`` (the run's k: the config's, or
the cache's when the config left it unset; the config itself is never rewritten), and offers the student's head and the
public evaluation helpers.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..compatibility import check_compatibility, compare_heads, head_rows_of
from ..divergences import LMHead
from ..evaluation import guards
from ..models import disable_bnb_cpu_weight_repacking, load_teacher
from ..sharding import full_head
from ..teachers import Teacher
from ..teachers.cache import TeacherCache
from ..teachers.routing import CACHE_ROW_COLUMN, TEACHER_ID_COLUMN, NamedTeachers, TeacherSet, check_teacher_ids
from ..teachers.server import (
    ServerTeacher,
    TeacherServer,
    check_server_compatibility,
    check_unit_temperature,
    is_server_url,
)


#: The id of the teacher when a single one is given.
SINGLE_TEACHER = "teacher"


class TeacherMixin:
    """``self.teachers``, ``self.teacher``, ``self.teacher_model``, ``self.vocab_size``, ``self.teacher_top_k``; prompt
    ids; guards."""

    teacher: Teacher | None
    teachers: TeacherSet
    teacher_top_k: int | None

    @staticmethod
    def _load_teachers(teacher_model, args) -> dict:
        """``{id: PreTrainedModel}`` from a path, an instance or a mapping ``{id: path or instance}`` (empty when
        ``teacher_model`` is ``None``: a run served by ``args.teacher_cache`` alone)."""
        if teacher_model is None:
            return {}
        items = teacher_model.items() if isinstance(teacher_model, Mapping) else [(SINGLE_TEACHER, teacher_model)]
        loaded = {str(k): _load_teacher_or_server(v, args) for k, v in items}
        if isinstance(teacher_model, Mapping):
            loaded = NamedTeachers(loaded)
        if not loaded:
            raise ValueError("teacher_model is an empty mapping; give at least one {id: model or path}.")
        return loaded

    def _attach_teachers(self, loaded: dict, teacher_tokenizer=None, run_backbone=None) -> None:
        """Check every teacher against the student (:func:`trl_opd.compatibility.check_compatibility`, raising or
        warning per ``args.compatibility_check``), suppress the student's ids that are no token in its generation,
        place each teacher with this trainer's accelerator, and open the cache (after the base ``__init__``)."""
        student = self.accelerator.unwrap_model(self.model)
        mode = getattr(self.args, "compatibility_check", "error")
        teachers, reports = {}, {}
        for label, model in loaded.items():
            if isinstance(model, TeacherServer):
                teachers[label], reports[label] = self._attach_server_teacher(label, model, loaded, mode)
                continue
            report = check_compatibility(student, model, self._text_tokenizer, teacher_tokenizer)
            if isinstance(loaded, NamedTeachers):
                report.facts["teacher id"] = label
            report.raise_or_warn(mode)
            reports[label] = report
            teachers[label] = self._place_teacher(model, report.shared_vocab_size, run_backbone)
        cache = self._open_teacher_cache()
        if cache is not None:
            for label, model in loaded.items():
                if isinstance(model, TeacherServer):
                    continue  # a served teacher's weights cannot be fingerprinted; the cache's row hashes still apply
                cache.check_teacher(model, f"teacher {label!r}" if len(loaded) > 1 else "teacher")
        self.teacher_top_k = self._run_top_k(cache)
        vocab_sizes = [t.vocab_size for t in teachers.values()]
        suppressed = sorted({i for r in reports.values() for i in r.suppressed_ids})
        if cache is not None:
            shared, cache_suppressed, problems = compare_heads(
                head_rows_of(student), cache.meta.teacher_vocab_size, len(self._text_tokenizer)
            )
            for problem in problems:
                if problem.level == "error":
                    raise ValueError(f"The teacher cache {cache.path}: {problem.what} Fix: {problem.fix}")
            vocab_sizes.append(shared)
            suppressed = sorted(set(suppressed) | set(cache_suppressed))
        self.compatibility = next(iter(reports.values()), None)
        self.compatibility_reports = reports
        self._suppress_in_generation(suppressed)
        self.teachers = TeacherSet(teachers, cache, named=isinstance(loaded, NamedTeachers))
        self.teacher = next(iter(teachers.values()), None)
        self.teacher_model = None if self.teacher is None else self.teacher.model
        self.vocab_size = min(vocab_sizes)
        disable_bnb_cpu_weight_repacking(self.model)

    def _attach_server_teacher(self, label: str, server: TeacherServer, loaded: dict, mode: str):
        """``(ServerTeacher, report)`` for a teacher behind a vLLM server (:mod:`trl_opd.teachers.server`): its
        tokenizer and chat template probed against the student's, the run's k and temperature and the rows' length
        checked against what a server can answer."""
        needs_weights = {
            "seq_kd": "samples off-policy completions from the teacher",
            "single_step": "differentiates the exact reverse KL over the teacher's whole vocabulary",
            "teacher_mix_alpha": "samples tokens from the teacher/student mixture",
        }
        for name, why in needs_weights.items():
            if getattr(self.args, name, False):
                raise ValueError(
                    f"{name} {why}, which needs the teacher's weights in this process; the teacher {label!r} is a "
                    f"server ({server.url}). Turn {name} off, or pass the teacher as a local model."
                )
        report = check_server_compatibility(server, self._text_tokenizer, label if len(loaded) > 1 else None)
        student_rows = head_rows_of(self.accelerator.unwrap_model(self.model))
        shared, suppressed, problems = compare_heads(student_rows, len(self._text_tokenizer), len(self._text_tokenizer))
        report.shared_vocab_size, report.suppressed_ids = shared, suppressed
        report.problems += [p for p in problems if p.level == "error"]
        report.raise_or_warn(mode)
        top_k = self.args.teacher_top_k
        if top_k is None and getattr(self.args, "teacher_cache", None) is not None:
            top_k = TeacherCache(self.args.teacher_cache).top_k
        check_unit_temperature(getattr(self, "loss_temperature", self.temperature), server.url)
        teacher = ServerTeacher(server, top_k, shared, label)
        prompt, completion = self.args.max_prompt_length, self.max_completion_length
        probe = self._text_tokenizer.encode("Hello, world!", add_special_tokens=False)
        teacher.check(None if prompt is None or completion is None else prompt + completion, probe)
        return teacher, report

    def _place_teacher(self, model, vocab_size: int, run_backbone=None) -> Teacher:
        """``model`` placed with this trainer's accelerator as a :class:`~trl_opd.teachers.Teacher`, by the run's
        ``teacher_placement`` (:func:`trl_opd.sharding.prepare_frozen`)."""
        return Teacher.prepare(
            model,
            vocab_size,
            self.accelerator,
            placement=getattr(self.args, "teacher_placement", "sharded"),
            run_backbone=run_backbone,
        )

    def _open_teacher_cache(self) -> TeacherCache | None:
        path = getattr(self.args, "teacher_cache", None)
        if path is None:
            return None
        cache = TeacherCache(path)
        dataset = self.train_dataset
        cache.check(
            tokenizer=self._text_tokenizer,
            rows=len(dataset) if hasattr(dataset, "__len__") else cache.meta.rows,
            top_k=self.args.teacher_top_k,
            temperature=getattr(self, "loss_temperature", self.temperature),  # the targets' temperature
            max_completion_length=self.max_completion_length,
            max_prompt_length=self.args.max_prompt_length,
        )
        return cache

    def _run_top_k(self, cache: TeacherCache | None) -> int | None:
        """The k of this run: the config's ``teacher_top_k``, else the cache's (the cached targets are top-k, so the
        live rows use the same k). A k that comes from the cache is checked against the objective here, as the config
        checked its own value (a reverse-KL objective on top-k bins warns)."""
        if self.args.teacher_top_k is not None or cache is None:
            return self.args.teacher_top_k
        self.args.warn_if_top_k_is_unsafe(cache.top_k)
        return cache.top_k

    @property
    def teacher_is_served(self) -> bool:
        """Whether a teacher of this run is behind a server (no hidden states, no weights in this process)."""
        return any(isinstance(t, ServerTeacher) for t in self.teachers.teachers.values())

    @staticmethod
    def _index_rows_for_teachers(train_dataset, args, teacher_model):
        """The columns the teacher routing reads: ``teacher_cache_row`` (each row's index, for the cache) and a check
        of the ``teacher_id`` column against the teachers given (before the base ``__init__``)."""
        if getattr(args, "teacher_cache", None) is not None and train_dataset is not None:
            if not hasattr(train_dataset, "__len__"):
                raise ValueError("A teacher cache serves rows by index: it needs a map-style datasets.Dataset.")
            if CACHE_ROW_COLUMN not in train_dataset.column_names:
                train_dataset = train_dataset.map(lambda _, i: {CACHE_ROW_COLUMN: i}, with_indices=True)
        if isinstance(teacher_model, Mapping) and train_dataset is not None:
            columns = train_dataset.column_names
            if len(teacher_model) == 1 and (columns is None or TEACHER_ID_COLUMN not in columns):
                return train_dataset  # one named teacher and no routing column: every row goes to it
            if columns is not None and TEACHER_ID_COLUMN not in columns:
                raise ValueError(
                    f"Several teachers were given ({', '.join(map(str, teacher_model))}): train_dataset needs a "
                    f"`{TEACHER_ID_COLUMN}` column naming each row's teacher; it has {columns}."
                )
            if hasattr(train_dataset, "__len__"):
                check_teacher_ids(train_dataset[TEACHER_ID_COLUMN], teacher_model)
        return train_dataset

    def _suppress_in_generation(self, token_ids: list[int]) -> None:
        """Never sample ``token_ids`` (student head rows past the tokenizer, which the teacher may lack)."""
        if not token_ids:
            return
        if getattr(self.args, "use_vllm", False):
            raise ValueError(
                f"The student head has {len(token_ids)} rows past the tokenizer (ids {token_ids[0]}..{token_ids[-1]}) "
                "that vLLM could sample; trl-opd suppresses them in transformers' generate only. Train with "
                "use_vllm=False, or resize the student's head to the tokenizer (model.resize_token_embeddings)."
            )
        suppressed = sorted(set(self.generation_kwargs.get("suppress_tokens") or []) | set(token_ids))
        self.generation_kwargs["suppress_tokens"] = suppressed
        self.generation_config.suppress_tokens = suppressed

    @property
    def _text_tokenizer(self):
        return getattr(self.processing_class, "tokenizer", self.processing_class)

    @property
    def student_head(self) -> LMHead:
        """The student's head (its gradient flows); FSDP2 shards made full (:func:`trl_opd.sharding.full_head`), under
        ZeRO-3 use it inside ``trl_opd.sharding.gathered_heads``."""
        return full_head(self.accelerator.unwrap_model(self.model))

    def prompt_token_ids(self, prompts: list) -> list[list[int]]:
        """Token ids of ``prompts`` (text or messages) exactly as this trainer tokenizes them for generation."""
        prompt_ids, _, _ = self._tokenize_prompts(list(prompts))
        return [list(ids) for ids in prompt_ids]

    def sample_guards(self, dataset, max_new_tokens: int | None = None) -> dict[str, float]:
        """The collapse guards (:func:`trl_opd.evaluation.guards`) of this trainer's student and teacher on the
        prompts of ``dataset``, sampled like training (temperature, ``max_completion_length``)."""
        if self.teacher is None or self.teacher.unwrapped is None:
            raise ValueError(
                "The guards compare the student with a live teacher held in this process; this run's teacher is a "
                "teacher cache or a server. Load the teacher locally to run them."
            )
        tokenizer = self._text_tokenizer
        return guards(
            self.accelerator.unwrap_model(self.model),
            self.teacher.unwrapped,
            self.prompt_token_ids(dataset["prompt"]),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_ids=list(self.eos_token_ids),
            max_new_tokens=max_new_tokens or self.max_completion_length,
            temperature=self.temperature,
            vocab_size=self.vocab_size,
        )


def _load_teacher_or_server(teacher, args):
    """A local teacher loaded as :func:`trl_opd.models.load_teacher` does, or the client of a teacher server (an
    ``http(s)://`` address; timeout and retries from ``args``)."""
    if is_server_url(teacher):
        return TeacherServer(
            teacher,
            timeout=getattr(args, "teacher_server_timeout", 120.0),
            retries=getattr(args, "teacher_server_retries", 2),
        )
    return load_teacher(teacher, args.teacher_model_init_kwargs, args)
