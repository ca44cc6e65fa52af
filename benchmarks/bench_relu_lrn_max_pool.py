"""ReLU -> LRN -> max-pool, AlexNet's stem, on its conv1 and conv2 shapes: fastcnn's fused op
against the composition of torch.relu, F.local_response_norm and F.max_pool2d, eager and
under torch.compile, NCHW and channels_last, forward and forward+backward."""

OP = "relu_lrn_max_pool"


def test_relu_lrn_max_pool(time_case, case, implementation):
    time_case(case, implementation)
