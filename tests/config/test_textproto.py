"""Tests for max_deeplab_tf.config.textproto."""

from max_deeplab_tf.config import textproto
from max_deeplab_tf.protos import config_pb2
from max_deeplab_tf.protos import dataset_pb2


def test_expand_dotted_path():
    assert textproto.expand_dotted_path("a.b.c: 1") == "a { b { c: 1 } }"
    assert textproto.expand_dotted_path("a.b { c: 1 }") == "a { b { c: 1 } }"
    nested = "a { b: 1 }"
    assert textproto.expand_dotted_path(nested) == nested


def test_scan_records_locations_of_set_fields():
    text = 'experiment_name: "x"\nmodel_options {\n  backbone {\n' \
           '    name: "max_deeplab_l"\n  }\n}\n'
    scan = textproto.scan_fields(
        text, config_pb2.ExperimentOptions.DESCRIPTOR, "f")
    assert scan.problems == []
    assert scan.locations["experiment_name"].line == 1
    assert scan.locations["model_options.backbone"].line == 3
    assert scan.locations["model_options.backbone.name"].line == 4


def test_scan_skips_unknown_message_and_list_values():
    text = ('unknown { a: [1, 2] b { c: "x" "y" } }\n'
            'other: [ { a: 1 }, { a: 2 } ]\n'
            'experiment_name: "after"\n')
    scan = textproto.scan_fields(
        text, config_pb2.ExperimentOptions.DESCRIPTOR, "f")
    assert [p.split(": ")[1] for p in scan.problems] == ["unknown", "other"]
    assert scan.locations["experiment_name"].line == 3


def test_merge_replacing_replaces_repeated_and_keeps_siblings():
    target = dataset_pb2.DatasetOptions(crop_size=[1, 2], batch_size=4)
    target.augmentations.min_scale_factor = 0.5
    source = dataset_pb2.DatasetOptions(crop_size=[3])
    source.augmentations.max_scale_factor = 2.0
    textproto.merge_replacing(source, target)
    assert list(target.crop_size) == [3]
    assert target.batch_size == 4
    assert target.augmentations.min_scale_factor == 0.5
    assert target.augmentations.max_scale_factor == 2.0
