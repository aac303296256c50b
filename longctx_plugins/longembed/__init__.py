"""The bundled LongEmbed evaluator: tasks, metrics, mteb compatibility, CLI (``longctx-eval``)."""

from .evaluate import BM25, evaluate
from .mteb_compat import MTEBEncoder, mteb_model
from .tasks import TASKS, Task, get_task

__all__ = ["evaluate", "get_task", "Task", "TASKS", "MTEBEncoder", "mteb_model", "BM25"]
