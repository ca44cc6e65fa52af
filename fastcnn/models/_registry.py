"""The model registry: a builder per model name, listed and called by name.

`create_model(name, weights=...)` loads a state_dict into the built model: from a file, or
for models with torchvision's architecture and keys, from a torchvision weights name
(`"DenseNet121_Weights.IMAGENET1K_V1"`), which torchvision downloads.
"""

import fnmatch
import os

import torch

_BUILDERS = {}
# model name -> the (C, H, W) of the images it was designed for
_INPUT_SIZE = {}
# model name -> (torchvision builder name, function(state_dict) -> state_dict in our keys)
_TORCHVISION = {}
# model name -> builder arguments that torchvision's published weights imply
_WEIGHTS_ARGUMENTS = {}


def _same_keys(state_dict):
    return state_dict


def register_model(builder=None, *, input_size=(3, 224, 224), torchvision=None,
                   torchvision_keys=_same_keys, weights_arguments=None):
    """Registers builder under its function name, with the (C, H, W) input size of its
    paper. `torchvision` names torchvision's builder of the same architecture (same
    modules, initialisation and keys, up to torchvision_keys, a function mapping its
    state_dict to this model's keys): such models load torchvision's weights by name, and
    their tests compare them with it. weights_arguments: the builder arguments torchvision
    sets for its published weights (GoogLeNet's transform_input=True), which a weights name
    implies unless given."""

    def register(fn):
        _BUILDERS[fn.__name__] = fn
        _INPUT_SIZE[fn.__name__] = tuple(input_size)
        if torchvision is not None:
            _TORCHVISION[fn.__name__] = (torchvision, torchvision_keys)
            _WEIGHTS_ARGUMENTS[fn.__name__] = dict(weights_arguments or {})
        return fn

    return register(builder) if builder is not None else register


def _check_name(name):
    if name not in _BUILDERS:
        close = fnmatch.filter(_BUILDERS, f"*{name}*") or list_models()
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(close)}")


def default_input_size(name):
    """The (C, H, W) of the images model `name` was designed for (with in_chans=C)."""
    _check_name(name)
    return _INPUT_SIZE[name]


def torchvision_counterpart(name):
    """(torchvision builder name, key-mapping function) of model `name`, or None when
    torchvision has no model of its architecture."""
    return _TORCHVISION.get(name)


def list_models(pattern=None):
    """The registered names, sorted; those matching the fnmatch pattern when given."""
    names = sorted(_BUILDERS)
    return names if pattern is None else [n for n in names if fnmatch.fnmatch(n, pattern)]


def _load_weights(name, model, weights):
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
    elif isinstance(weights, str) and name in _TORCHVISION:
        import torchvision

        try:
            enum = torchvision.models.get_weight(weights)
        except (KeyError, ValueError, AttributeError) as error:
            raise ValueError(f"weights={weights!r} is neither a file nor a torchvision weights "
                             f"name ({error})") from None
        try:
            state_dict = enum.get_state_dict(progress=True)
        except OSError as error:  # no network, or no write access to the cache
            raise RuntimeError(
                f"could not download torchvision's {weights} ({error}); on a machine without "
                f"network, pass the path of a saved state_dict instead") from None
        state_dict = _TORCHVISION[name][1](state_dict)
    else:
        raise ValueError(f"weights must be the path of a saved state_dict file"
                         f"{' or a torchvision weights name' if name in _TORCHVISION else ''}"
                         f", got {weights!r}")
    model.load_state_dict(state_dict, strict=True)


def create_model(name, weights=None, **kwargs):
    """The model `name` built with kwargs (num_classes=..., in_chans=..., ...), with
    `weights` loaded (strict) when given."""
    _check_name(name)
    if isinstance(weights, str) and name in _TORCHVISION and not os.path.isfile(weights):
        kwargs = {**_WEIGHTS_ARGUMENTS[name], **kwargs}
    model = _BUILDERS[name](**kwargs)
    if weights is not None:
        _load_weights(name, model, weights)
    return model
