"""A scikit-learn task for FedKeeper: multinomial logistic regression trained by SGD (the light example).

Name it in a config as ``task: {module: sklearn_logreg, path: <the folder holding this package>}``; see
config.yaml next to this file and docs/tasks.md. The task itself is in `task.py`.
"""

from sklearn_logreg.task import SklearnLogReg, make_task

__all__ = ["SklearnLogReg", "make_task"]
