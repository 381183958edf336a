"""The orbit evaluator: loss terms and streaming panoptic quality.

Per step and replica: the model (training=False), the loss terms, the
post-processed panoptic map, and the additive PQ statistics of the batch
(summed over replicas in the graph). `eval_reduce` adds them up on the host;
`eval_end` turns them into PQ/SQ/RQ, writes MODEL_DIR/eval/metrics-STEP.json
and metrics-latest.json (atomically, through tf.io.gfile), TensorBoard
scalars and images of predicted panoptic maps beside the ground truth, and
optional prediction PNGs.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional

from absl import logging
import numpy as np
import orbit
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf import common
from max_deeplab_tf.training import files
from max_deeplab_tf.training import op_stack_traces
from max_deeplab_tf.training import visualization


@dataclasses.dataclass
class EvalHooks:
    """How the evaluator computes predictions and PQ.

    Attributes:
      post_process: (model outputs, inputs) -> dict with at least
        common.PRED_PANOPTIC_KEY, int32 [batch, height, width] at the size of
        inputs[common.GT_PANOPTIC_KEY].
      pq_statistics: (gt panoptic, predicted panoptic) int32
        [batch, height, width] -> dict of additive tensors (summed over the
        batch) from which `pq_result` computes PQ.
      pq_result: dict of numpy arrays (the sums over the whole evaluation) ->
        JSON-able dict shaped like the panoptic-quality command's output:
        {"All": {"pq", "sq", "rq", "n"}, "Things": {...}, "Stuff": {...},
        "per_class": {...}}, fractions in [0, 1].
      save_predictions: Optional (images, gt, predictions, names, directory)
        -> None writing prediction images; numpy inputs.
      draw_panels: Optional (images, gt, predictions) -> uint8 [batch, H, W,
        3] panels (with class names); default: plain image | gt | prediction
        strips of the evaluator's colormap.
    """

    post_process: Callable
    pq_statistics: Callable
    pq_result: Callable
    save_predictions: Optional[Callable] = None
    draw_panels: Optional[Callable] = None


def flatten_pq(pq: Dict[str, Any]) -> Dict[str, float]:
    """TensorBoard scalar names for the overall/things/stuff PQ, SQ, RQ."""
    scalars = {}
    for group, suffix in (("All", ""), ("Things", "_things"),
                          ("Stuff", "_stuff")):
        values = pq.get(group) or {}
        for metric in ("pq", "sq", "rq"):
            if metric in values and values[metric] is not None:
                scalars[f"panoptic_quality/{metric.upper()}{suffix}"] = float(
                    values[metric])
    return scalars


class Evaluator(orbit.StandardEvaluator):
    """Orbit StandardEvaluator computing loss terms and PQ.

    Args:
      strategy: The tf.distribute strategy.
      eval_dataset_fn: input_context -> tf.data.Dataset (finite).
      model: The keras model.
      loss_fn: (inputs, outputs) -> dict of per-example loss terms, or None
        to skip losses.
      hooks: EvalHooks.
      global_step: The global step variable.
      model_dir: Metrics go to MODEL_DIR/eval.
      colormap: [num_classes, 3] uint8 colours for the images.
      label_divisor: Of the panoptic encoding.
      num_vis_samples: Images kept for TensorBoard / prediction files.
      save_predictions_dir: If set, prediction images are written there.
      write_files: False on non-chief workers.
    """

    def __init__(self, strategy, eval_dataset_fn, model, loss_fn,
                 hooks: EvalHooks, global_step, model_dir: str,
                 colormap, label_divisor: int, num_vis_samples: int = 4,
                 save_predictions_dir: Optional[str] = None,
                 write_files: bool = True):
        self._strategy = strategy
        self._model = model
        self._loss_fn = loss_fn
        self._hooks = hooks
        self._global_step = global_step
        self._model_dir = model_dir
        self._colormap = np.asarray(colormap, np.uint8)
        self._label_divisor = int(label_divisor)
        self._num_vis = int(num_vis_samples)
        self._save_dir = save_predictions_dir
        self._write_files = write_files
        dataset = orbit.utils.make_distributed_dataset(strategy,
                                                       eval_dataset_fn)
        super().__init__(dataset)
        # Plain attribute: tf.Module would wrap a dict for tracking.
        self.__dict__["last_metrics"] = None

    def eval_begin(self):
        return {"sums": None, "losses": {}, "count": 0.0, "vis": None}

    # AutoGraph would transpile the model, post-processing, PQ and loss code
    # (none needs it: their control flow is on static values) each time the
    # step is traced, as it did for the train step (TrainStep.replica_step).
    @tf.autograph.experimental.do_not_convert
    def _replica_step(self, inputs):
        # Its ops record only this package's and the user's stack frames,
        # as the train step's do.
        with op_stack_traces.library_frames_dropped():
            return self._replica_outputs(inputs)

    def _replica_outputs(self, inputs):
        outputs = self._model(inputs[common.IMAGE], training=False)
        predictions = self._hooks.post_process(outputs, inputs)
        gt = tf.cast(inputs[common.GT_PANOPTIC_KEY], tf.int32)
        pred = tf.cast(predictions[common.PRED_PANOPTIC_KEY], tf.int32)
        stats = self._hooks.pq_statistics(gt, pred)
        result = {"stats": stats,
                  "count": tf.cast(tf.shape(gt)[0], tf.float32)}
        if self._loss_fn is not None:
            losses = self._loss_fn(inputs, outputs)
            result["losses"] = {k: tf.reduce_sum(tf.cast(v, tf.float32))
                                for k, v in losses.items()}
        # Images for TensorBoard and prediction files.
        vis = {"image": tf.cast(inputs[common.IMAGE], tf.float32),
               "gt": gt, "pred": pred}
        if common.IMAGE_NAME in inputs:
            vis["name"] = inputs[common.IMAGE_NAME]
        result["vis"] = {k: v[:self._num_vis] for k, v in vis.items()}
        return result

    def eval_step(self, iterator):
        results = self._strategy.run(self._replica_step,
                                     args=(next(iterator),))
        reduce = lambda x: self._strategy.reduce(  # noqa: E731
            tf.distribute.ReduceOp.SUM, x, axis=None)
        out = {"stats": tf.nest.map_structure(reduce, results["stats"]),
               "count": reduce(results["count"])}
        if "losses" in results:
            out["losses"] = tf.nest.map_structure(reduce, results["losses"])
        # Visualisation: this worker's first replica only (cheap, enough).
        out["vis"] = tf.nest.map_structure(
            lambda v: self._strategy.experimental_local_results(v)[0],
            results["vis"])
        return out

    def eval_reduce(self, state=None, step_outputs=None):
        numpy = tf.nest.map_structure(lambda t: t.numpy(), step_outputs)
        if state["sums"] is None:
            state["sums"] = numpy["stats"]
        else:
            state["sums"] = tf.nest.map_structure(np.add, state["sums"],
                                                  numpy["stats"])
        for name, value in numpy.get("losses", {}).items():
            state["losses"][name] = state["losses"].get(name, 0.0) + value
        state["count"] += float(numpy["count"])
        vis = numpy["vis"]
        if state["vis"] is None:
            state["vis"] = vis
        elif len(state["vis"]["image"]) < self._num_vis:
            state["vis"] = {k: np.concatenate([state["vis"][k], vis[k]])
                            [:self._num_vis] for k in state["vis"]}
        return state

    def eval_end(self, state=None):
        if state is None or state["sums"] is None:
            raise cli.UserError(
                "eval_dataset_options.file_pattern: evaluation saw no data; "
                "expected a non-empty evaluation dataset")
        step = int(self._global_step.numpy())
        count = max(state["count"], 1.0)
        pq = self._hooks.pq_result(state["sums"])
        losses = {name: float(value) / count
                  for name, value in state["losses"].items()}
        metrics = dict(pq)
        metrics["step"] = step
        metrics["num_images"] = int(state["count"])
        metrics["losses"] = losses
        self.__dict__["last_metrics"] = metrics
        if self._write_files:
            eval_dir = f"{self._model_dir}/eval"
            files.write_json(f"{eval_dir}/metrics-{step}.json", metrics)
            files.write_json(f"{eval_dir}/metrics-latest.json", metrics)
        vis = state["vis"]
        if self._hooks.draw_panels is not None:
            panels = self._hooks.draw_panels(vis["image"], vis["gt"],
                                             vis["pred"])
        else:
            panels = visualization.side_by_side(
                vis["image"], vis["gt"], vis["pred"], self._colormap,
                self._label_divisor)
        tf.summary.image("predictions/image_gt_prediction", panels,
                         step=step, max_outputs=self._num_vis)
        if self._write_files and self._save_dir:
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in vis.get("name", [])] or [
                         f"image_{i:04d}" for i in range(len(panels))]
            visualization.write_panels(panels, names, self._save_dir, step)
            if self._hooks.save_predictions is not None:
                self._hooks.save_predictions(vis["image"], vis["gt"],
                                             vis["pred"], names,
                                             self._save_dir)
        logs = flatten_pq(pq)
        for name, value in losses.items():
            logs[f"losses/{name}"] = value
        all_pq = pq.get("All", {})
        logging.info(
            "eval at step %d on %d images: PQ %.2f SQ %.2f RQ %.2f | %s",
            step, int(state["count"]), 100 * all_pq.get("pq", 0.0),
            100 * all_pq.get("sq", 0.0), 100 * all_pq.get("rq", 0.0),
            " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        return logs
