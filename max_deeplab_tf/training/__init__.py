"""Library pieces of training: the distributed train step, checkpoint
utilities (initial-checkpoint loading with a matched/unmatched report) and
atomic metric files. The orbit driver lives in the top-level `trainer/`.
"""
