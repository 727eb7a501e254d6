"""A small PyTorch CNN on images (the bundled 8x8 digits by default), as a FedKeeper task.

Name it in the config::

    scenarios:
      federated_learning:
        task:
          module: torch_cnn
          path: examples/tasks          # the folder holding this package, relative to the config file
          params: {channels: [32, 64], hidden: 512}

Its requirements (`requirements.txt` beside this file: torch==2.13.0) go into the function packages; see
docs/tasks.md for how each platform gets a framework of PyTorch's size. `torch` is imported on the first call
that needs it, not when the module is imported: `fedkeeper validate` checks the params without it.
"""

from .task import TorchCNNTask, make_task

__all__ = ["TorchCNNTask", "make_task"]
