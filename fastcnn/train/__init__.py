"""The paper training pieces (metrics, losses, augmentations, evaluation, schedules), the
data sets and the trainer behind `fastcnn train` and `fastcnn eval`."""

from fastcnn.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fastcnn.train.errors import UsageError
from fastcnn.train.lighting import PCALighting, rgb_pca
from fastcnn.train.losses import AUX_WEIGHT, classification_loss, main_logits
from fastcnn.train.metrics import topk_error
from fastcnn.train.schedules import make_scheduler
from fastcnn.train.ten_crop import ten_crop_predict, ten_crops
from fastcnn.train.trainer import evaluate, train

__all__ = ["AUX_WEIGHT", "PCALighting", "UsageError", "classification_loss", "evaluate",
           "load_checkpoint", "main_logits", "make_scheduler", "model_from_checkpoint",
           "rgb_pca", "save_checkpoint", "ten_crop_predict", "ten_crops", "topk_error",
           "train"]
