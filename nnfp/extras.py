"""Optional dependencies: imported when a feature needs them, named with the extra that installs them.

Indexing and identifying need none of them. Training's logs (TensorBoard, W&B) and the plots
of `nnfp evaluate` do:

>>> colormaps = require("matplotlib", "plots", "the hit-rate plot").colormaps
"""

import importlib

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ImportError):
    """A feature needs a package that is not installed; the message names the extra to install."""


def require(module, extra, feature, instead=None):
    """Imports `module` (e.g. "matplotlib.pyplot"), or raises `MissingExtraError`.

    Args:
        module: the module to import.
        extra: the nnfp extra that installs it (`pip install "nnfp[extra]"`).
        feature: what needs it, the start of the message ("train.tensorboard: true").
        instead: how to do without it, added to the message ("--set train.tensorboard=false").
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        message = f'{feature} needs {package}, which is not installed: pip install "nnfp[{extra}]"'
        if instead:
            message += f" (or {instead})"
        raise MissingExtraError(message, name=package) from error
