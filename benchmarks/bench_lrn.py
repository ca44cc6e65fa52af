"""Local response normalization on AlexNet's shapes: fastcnn against F.local_response_norm,
eager and under torch.compile, NCHW and channels_last, forward and forward+backward."""

OP = "lrn"


def test_lrn(time_case, case, implementation):
    time_case(case, implementation)
