"""Small stand-ins for the model, loss, data and PQ, for trainer mechanics.

They exercise the trainer's machinery (strategies, checkpoints, the
non-finite guard, XLA, gfile paths) in seconds. Tests of the real library
pieces end to end live in test_integration.py.

The task: 4 classes (0 = void ignored), label divisor 100; images are noise
plus a class-coloured square, so a 1x1 conv can learn the semantic map.
"""

import keras
import numpy as np
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.data import dataset_info
from trainer import evaluator as evaluator_lib
from trainer import train_lib

NUM_CLASSES = 4
LABEL_DIVISOR = 100
SIZE = 9
DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="standin", num_classes=NUM_CLASSES, ignore_label=0,
    label_divisor=LABEL_DIVISOR, thing_class_ids=(1,))
COLOURS = np.array([[0, 0, 0], [200, 30, 30], [30, 200, 30], [30, 30, 200]],
                   np.float32)


def make_examples(num, seed):
    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 60, size=(num, SIZE, SIZE, 3)).astype(np.float32)
    semantic = np.full((num, SIZE, SIZE), 2, np.int32)
    for i in range(num):
        cls = 1 + i % 3
        y, x = rng.randint(0, SIZE - 4, size=2)
        semantic[i, y:y + 4, x:x + 4] = cls
    images += COLOURS[semantic]
    panoptic = semantic * LABEL_DIVISOR + (semantic == 1)
    return {common.IMAGE: images, common.GT_SEMANTIC_KEY: semantic,
            common.GT_PANOPTIC_KEY: panoptic.astype(np.int32)}


@keras.saving.register_keras_serializable(package="max_deeplab_tf_tests")
class StandinModel(keras.Model):
    """Two convolutions (the second in a list, as deeplab2-style models keep
    blocks) and a synchronised batch norm."""

    def __init__(self, ballast_mb: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.encoder = keras.layers.Conv2D(8, 1, name="encoder_conv")
        if ballast_mb:
            # Unused state that makes each checkpoint write take a while
            # (tests kill a process in the middle of one).
            self.ballast = self.add_weight(
                shape=(ballast_mb * 2 ** 18,), initializer="ones",
                trainable=False, name="ballast")
        self.norm = keras.layers.BatchNormalization(synchronized=True)
        self.heads = [keras.layers.Conv2D(NUM_CLASSES, 1, name="head")]

    def call(self, images, training=False):
        x = keras.ops.relu(self.norm(self.encoder(images / 127.5 - 1.0),
                                     training=training))
        return {common.PRED_SEMANTIC_LOGITS_KEY: self.heads[0](x)}


class StandinLoss:
    """Per-example softmax cross-entropy plus a small L2 term."""

    loss_terms = (common.SEMANTIC_LOSS, "logit_l2")

    def __call__(self, inputs, outputs):
        logits = tf.cast(outputs[common.PRED_SEMANTIC_LOGITS_KEY], tf.float32)
        labels = inputs[common.GT_SEMANTIC_KEY]
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        semantic = tf.reduce_mean(ce, axis=[1, 2])
        l2 = 1e-3 * tf.reduce_mean(tf.square(logits), axis=[1, 2, 3])
        return {common.SEMANTIC_LOSS: semantic, "logit_l2": l2,
                common.TOTAL_LOSS: semantic + l2}


def build_dataset(examples_by_pattern, dataset_options, is_training,
                  input_context, drop_remainder=True):
    """In-memory examples keyed by the options' first file pattern."""
    data = examples_by_pattern[dataset_options.file_pattern[0]]
    batch = dataset_options.batch_size
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(batch)
    dataset = tf.data.Dataset.from_tensor_slices(data)
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    if is_training:
        dataset = dataset.repeat()
    return dataset.batch(batch, drop_remainder=drop_remainder)


def eval_hooks(config, descriptor):
    del config, descriptor

    def post_process(outputs, inputs):
        semantic = tf.argmax(outputs[common.PRED_SEMANTIC_LOGITS_KEY],
                             axis=-1, output_type=tf.int32)
        return {common.PRED_PANOPTIC_KEY:
                semantic * LABEL_DIVISOR + tf.cast(semantic == 1, tf.int32)}

    def pq_statistics(gt, pred):
        valid = tf.cast(gt // LABEL_DIVISOR > 0, tf.float32)
        same = tf.cast(tf.equal(gt, pred), tf.float32) * valid
        return {"correct": tf.reduce_sum(same),
                "valid": tf.reduce_sum(valid)}

    def pq_result(sums):
        accuracy = float(sums["correct"]) / max(float(sums["valid"]), 1.0)
        group = {"pq": accuracy, "sq": accuracy, "rq": accuracy, "n": 3}
        return {"All": group, "Things": dict(group), "Stuff": dict(group),
                "per_class": {}}

    return evaluator_lib.EvalHooks(post_process, pq_statistics, pq_result)


def export(config, model, export_dir, global_step):
    del config
    export_dir = f"{export_dir}/{global_step}"

    class Serving(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[
            tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8)])
        def serve(self, images):
            outputs = self.model(tf.cast(images, tf.float32), training=False)
            return {"semantic": tf.argmax(
                outputs[common.PRED_SEMANTIC_LOGITS_KEY], axis=-1)}

    module = Serving(model)
    tf.saved_model.save(module, export_dir,
                        signatures={"serving_default": module.serve})
    return export_dir


def components(examples_by_pattern, model_factory=StandinModel):
    return train_lib.Components(
        build_model=lambda config: model_factory(),
        build_loss=lambda config, descriptor: StandinLoss(),
        build_dataset=lambda options, is_training, ctx, drop: build_dataset(
            examples_by_pattern, options, is_training, ctx, drop),
        descriptor=lambda name: DESCRIPTOR,
        eval_hooks=eval_hooks, export=export,
        is_backbone=lambda model: (lambda v: any(
            v is w for w in model.encoder.trainable_variables)),
        prepare_data=lambda config: None)


CONFIG = """
experiment_name: "standin"
model_options { backbone { name: "max_deeplab_tiny" } }
trainer_options {
  save_checkpoints_steps: 4
  steps_per_loop: 2
  save_summaries_steps: 2
  num_checkpoints_to_keep: 3
  solver_options {
    optimizer: "radam"
    lookahead_sync_period: 2
    base_learning_rate: 0.05
    training_number_of_steps: 8
    warmup_steps: 0
    use_gradient_clipping: true
    clip_gradient_norm: 5.0
  }
}
train_dataset_options {
  dataset: "standin" file_pattern: "train" batch_size: 4
  crop_size: 9 crop_size: 9
}
eval_dataset_options {
  dataset: "standin" file_pattern: "val" batch_size: 2
  crop_size: 9 crop_size: 9
}
evaluator_options { eval_interval: 4 num_vis_samples: 2 }
"""


def config(*overrides):
    from google.protobuf import text_format
    from max_deeplab_tf.protos import config_pb2
    experiment = text_format.Parse(CONFIG, config_pb2.ExperimentOptions())
    for override in overrides:
        text_format.Merge(override, experiment)
    return experiment
