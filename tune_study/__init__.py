"""tune_study: a Ray Tune study of effective batch size x model x LR schedule for BERT fine-tuning.

``tune_study.load_study(path)`` reads a study folder's tables (imported lazily, so that
``import tune_study`` stays cheap).
"""


def __getattr__(name):
    if name == "load_study":
        from .report.load import load_study

        return load_study
    raise AttributeError(f"module 'tune_study' has no attribute {name!r}")
