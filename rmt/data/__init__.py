"""Data for recurrent memory models: seeded synthetic tasks (`rmt.data.tasks`)."""

from rmt.data.tasks import (
    IGNORE_INDEX,
    TASKS,
    AssociativeRetrievalTask,
    CopyTask,
    DetectMemorizeTask,
    QuadraticTask,
    ReverseTask,
    Task,
    TaskBatch,
    answer_accuracy,
    make_task,
)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "AssociativeRetrievalTask",
    "CopyTask",
    "DetectMemorizeTask",
    "QuadraticTask",
    "ReverseTask",
    "Task",
    "TaskBatch",
    "answer_accuracy",
    "make_task",
]
