"""Whole modules against the torchvision modules they replace, with the same weights:
GoogLeNet's inception 3a (InceptionConcat, also against its own branches joined by
torch.cat), DenseNet-121's first dense block (DenseBlock) and DenseNet-121. Each test
times one implementation and then measures its peak memory over one more call; the
summary puts them side by side, as `fastcnn bench`'s module table does."""


def test_module(time_module, module_case, module_implementation):
    time_module(module_case, module_implementation)
