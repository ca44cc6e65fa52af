"""The zoo's networks against the same networks on PyTorch's own layers with the same
weights (torchvision's model where it has one, else fastcnn.models.torch_layers), and
torchvision's and timm's models against fastcnn.optimize's copy of them; eager and under
torch.compile (for fastcnn.optimize's rows, the copy compiled too: fastcnn+compile),
inference and a training step. Each test times one implementation and then measures its
peak memory over one more call; the summary puts them side by side, as
`fastcnn bench --models` does."""


def test_model(time_module, model_case, model_implementation):
    time_module(model_case, model_implementation)
