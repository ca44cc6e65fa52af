"""LocalResponseNorm: a drop-in torch.nn.LocalResponseNorm on the fastcnn kernels."""

import torch

from fastcnn.functional.lrn import local_response_norm


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    """torch.nn.LocalResponseNorm (same arguments, repr and state_dict) whose forward and
    backward run the fastcnn kernels."""

    def forward(self, input):
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)
