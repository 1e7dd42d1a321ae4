"""The teacher side of distillation: frozen models, or their stored targets, that the student is trained towards.

* :class:`Teacher` (:mod:`.live`): a local model placed for a trainer's accelerator, its head on the shared
  vocabulary, and the scoring every trainer needs (hidden states for the chunked divergences, token log-probs).
* :func:`build_teacher_cache` / :class:`TeacherCache` (:mod:`.cache`): the teacher's top-k + tail targets of a
  dataset's completions, computed once, memory-mapped, checked row by row.
* :class:`TeacherSet` (:mod:`.routing`): which teacher (or the cache) scores which loss token.
"""

from .cache import TeacherCache, build_teacher_cache
from .live import Teacher
from .routing import TeacherSet, TeacherSide


__all__ = ["Teacher", "TeacherCache", "TeacherSet", "TeacherSide", "build_teacher_cache"]
