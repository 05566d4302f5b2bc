"""The pipeline's stages, one public verb per module: finetune, inject, resume, iterate, predict."""

from kaggle_tli.data import check_submission, make_submission
from kaggle_tli.stages.finetune import finetune
from kaggle_tli.stages.inject import TeacherLike, inject, load_teacher, rank_teachers, student_spec, transfer
from kaggle_tli.stages.iterate import iterate
from kaggle_tli.stages.predict import predict, run_predictions, tta_views
from kaggle_tli.stages.resume import resume, runs_dir_for

__all__ = [
    "TeacherLike",
    "check_submission",
    "finetune",
    "inject",
    "iterate",
    "load_teacher",
    "make_submission",
    "predict",
    "rank_teachers",
    "resume",
    "run_predictions",
    "runs_dir_for",
    "student_spec",
    "transfer",
    "tta_views",
]
