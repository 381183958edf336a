"""Names shared by the data pipeline, the model, the losses and the evaluator.

The keys are deeplab2's (deeplab2/common.py) so that code written against
deeplab2's dictionaries reads ours unchanged.

Input / ground-truth dictionary produced by `max_deeplab_tf.data` (batched):
  IMAGE: float32 [batch, height, width, 3], RGB values in [0, 255]; the model
    normalises it to [-1, 1] itself.
  GT_PANOPTIC_KEY: int32 [batch, height, width], semantic * label_divisor +
    instance. Void pixels are ignore_label * label_divisor. Crowd thing pixels
    have instance 0.
  GT_SEMANTIC_KEY: int32 [batch, height, width], the semantic class; void is
    ignore_label.
  GT_THING_ID_MASK_KEY: int32 [batch, height, width], a unique id in
    [0, max_thing_id) for each non-crowd thing instance, -1 elsewhere.
  GT_THING_ID_CLASS_KEY: int32 [batch, max_thing_id], the semantic class of
    each thing id, -1 for unused ids.
  SEMANTIC_LOSS_WEIGHT_KEY: float32 [batch, height, width], per-pixel weight
    of the semantic loss (0 on void).
  GT_SIZE_RAW / IMAGE_NAME: original [height, width] and file name, for
    evaluation.

Model output dictionary (`max_deeplab_tf.model`):
  PRED_TRANSFORMER_CLASS_LOGITS_KEY: [batch, num_mask_slots, num_classes],
    where the last class is void (no object).
  PRED_PIXEL_SPACE_MASK_LOGITS_KEY: [batch, height/4, width/4, num_mask_slots]
  PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY: [batch, height/4, width/4, D]
  PRED_SEMANTIC_LOGITS_KEY: [batch, height/4, width/4, num_classes]

Post-processed outputs (`max_deeplab_tf.inference`):
  PRED_PANOPTIC_KEY, PRED_SEMANTIC_KEY, PRED_INSTANCE_KEY: int32
    [batch, height, width]; PRED_INSTANCE_SCORES_KEY,
    PRED_SEMANTIC_SCORES_KEY: float32 [batch, height, width].
"""

# Inputs and ground truth.
IMAGE = 'image'
IMAGE_NAME = 'image_name'
GT_SIZE_RAW = 'gt_size_raw'
GT_PANOPTIC_KEY = 'panoptic_gt'
GT_SEMANTIC_KEY = 'semantic_gt'
GT_THING_ID_MASK_KEY = 'thing_id_mask'
GT_THING_ID_CLASS_KEY = 'thing_id_class'
SEMANTIC_LOSS_WEIGHT_KEY = 'semantic_loss_weight'

# Raw model outputs.
PRED_TRANSFORMER_CLASS_LOGITS_KEY = 'transformer_class_logits'
PRED_PIXEL_SPACE_MASK_LOGITS_KEY = 'pixel_space_mask_logits'
PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY = 'pixel_space_normalized_feature'
PRED_SEMANTIC_LOGITS_KEY = 'semantic_logits'
PRED_SEMANTIC_PROBS_KEY = 'semantic_probs'

# Post-processed outputs.
PRED_PANOPTIC_KEY = 'panoptic_pred'
PRED_SEMANTIC_KEY = 'semantic_pred'
PRED_INSTANCE_KEY = 'instance_pred'
PRED_INSTANCE_SCORES_KEY = 'instance_scores'
PRED_SEMANTIC_SCORES_KEY = 'semantic_scores'

# Loss terms, as logged by the trainer.
TOTAL_LOSS = 'total_loss'
PQ_STYLE_LOSS_CLASS_TERM = 'pq_style_loss_class_term'
PQ_STYLE_LOSS_MASK_DICE_TERM = 'pq_style_loss_mask_dice_term'
MASK_ID_CROSS_ENTROPY_LOSS = 'mask_id_cross_entropy_loss'
INSTANCE_DISCRIMINATION_LOSS = 'instance_discrimination_loss'
SEMANTIC_LOSS = 'semantic_loss'

# TFRecord feature keys (deeplab2's data/data_utils.py layout).
KEY_ENCODED_IMAGE = 'image/encoded'
KEY_IMAGE_FILENAME = 'image/filename'
KEY_IMAGE_FORMAT = 'image/format'
KEY_IMAGE_HEIGHT = 'image/height'
KEY_IMAGE_WIDTH = 'image/width'
KEY_IMAGE_CHANNELS = 'image/channels'
KEY_ENCODED_LABEL = 'image/segmentation/class/encoded'
KEY_LABEL_FORMAT = 'image/segmentation/class/format'
