"""The one error of fastcnn train and eval that the command line reports without a
traceback."""


class UsageError(ValueError):
    """A bad argument: a path that is not there, a model name that is not registered, a
    file that is not a fastcnn checkpoint or not one of the expected model. The message
    names it."""
