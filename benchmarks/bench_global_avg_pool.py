"""Global average pooling on the heads of ResNet-50 and DenseNet-121: fastcnn against
F.adaptive_avg_pool2d(x, 1), eager and under torch.compile, NCHW and channels_last,
forward and forward+backward."""

OP = "global_avg_pool"


def test_global_avg_pool(time_case, case, implementation):
    time_case(case, implementation)
