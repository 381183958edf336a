"""Datasets: descriptors, COCO panoptic conversion, synthetic data, input."""
