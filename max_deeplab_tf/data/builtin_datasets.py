"""Built-in dataset descriptors: COCO panoptic and the synthetic dataset.

COCO panoptic follows deeplab2: 133 categories mapped to contiguous ids
1..133 (80 things first, then 53 stuff, each in COCO category-id order), void
is 0, label divisor 256, 134 classes including void.
"""

from max_deeplab_tf.data import dataset_info

COCO_PANOPTIC = dataset_info.register(dataset_info.DatasetDescriptor(
    name="coco_panoptic",
    num_classes=134,
    ignore_label=0,
    label_divisor=256,
    thing_class_ids=tuple(range(1, 81)),
))
