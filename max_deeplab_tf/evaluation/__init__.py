"""Panoptic quality (COCO definition): numpy/command, streaming TF, COCO files.

  panoptic_quality: `python -m max_deeplab_tf.evaluation.panoptic_quality`
    on COCO-format files; `summarize` turns statistics into PQ/SQ/RQ.
  streaming: `PanopticQuality` metric and `panoptic_statistics` in TF.
  coco_format: `CocoPanopticWriter` writes panoptic maps as COCO PNG + JSON.
"""
