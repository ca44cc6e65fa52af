"""Overlapping max-pooling (3x3, stride 2) on AlexNet's shapes: fastcnn against
F.max_pool2d, eager and under torch.compile, NCHW and channels_last, forward (inference)
and forward+backward."""

OP = "max_pool"


def test_max_pool(time_case, case, implementation):
    time_case(case, implementation)
