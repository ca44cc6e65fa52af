"""Conv -> BatchNorm -> ReLU on ResNet-50's layer1 shapes (3x3 64->64, the bottleneck's 1x1
256->64, and 1x1 64->256 with the identity added before the ReLU): fastcnn against eager
Conv2d -> BatchNorm2d -> ReLU and torch.compile, inference ("forward", eval mode) and a
training step ("forward+backward"), NCHW and channels_last."""

OP = "conv_bn_relu"


def test_conv_bn_relu(time_case, case, implementation):
    time_case(case, implementation)
