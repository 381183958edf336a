"""Datasets: descriptors, COCO panoptic conversion, synthetic data, input.

Modules (import them directly; nothing heavy is imported here):
  dataset_info        DatasetDescriptor, get_dataset_descriptor(name or JSON
                      path), descriptor_from_coco_categories(...)
  builtin_datasets    the category tables of 'coco_panoptic' and
                      'synthetic_panoptic' (data only; dataset_info
                      registers them)
  synthetic           generate(...), generate_split(...): a synthetic
                      dataset in the COCO panoptic format (also a command)
  build_coco_panoptic convert(coco_root, split, output_dir, ...): COCO
                      panoptic format -> deeplab2-layout tfrecord shards
                      (also a command)
  tfrecord            the record layout: make_example, decode_example
  shards              which files a file_pattern reads (complete shard
                      sets only), reading them with corrupt files named,
                      empty datasets refused
  preprocessing       deeplab2's resize / scale / pad / crop / flip
  input_pipeline      build_dataset(dataset_options, is_training,
                      input_context): batches for training and evaluation
"""
