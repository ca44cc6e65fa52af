"""The zoo's networks against the same networks on PyTorch's own layers with the same
weights (torchvision's model where it has one, else fastcnn.models.torch_layers), eager
and under torch.compile, inference and a training step. Each test times one
implementation and then measures its peak memory over one more call; the summary puts
them side by side, as `fastcnn bench --models` does."""


def test_model(time_module, model_case, model_implementation):
    time_module(model_case, model_implementation)
