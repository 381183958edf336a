"""Base class of the layers made of sub-layers."""

import keras
# Not exported by keras; the function Keras itself uses to build a layer by
# tracing its call() without adding nodes to any functional graph.
from keras.src.backend import compute_output_spec


def _symbolic_inputs(shapes):
    return keras.tree.map_shape_structure(
        lambda shape: keras.KerasTensor(tuple(shape)), shapes)


def symbolic_build(layer, *args, **kwargs):
    """Builds `layer` and its sub-layers by tracing `layer.call` on
    KerasTensors (shapes only, no computation, no functional-graph node)."""
    compute_output_spec(layer.call, *args, **kwargs)


class ComposedLayer(keras.layers.Layer):
    """A layer whose sub-layers are built by their first call.

    `build` creates no state of its own unless a subclass overrides it (an
    explicit build also spares Keras an extra symbolic pass over call() per
    nesting level). Subclasses must not define compute_output_shape: Keras
    would then skip tracing call() on symbolic inputs and leave the
    sub-layers unbuilt. When Keras restores a saved model, `build_from_config`
    runs one symbolic call with the recorded input shapes so that every
    sub-layer exists before the weights are loaded.
    """

    def build(self, input_shape):
        del input_shape

    def _symbolic_call_kwargs(self, build_config):
        """Non-tensor call arguments needed to rebuild (subclass hook)."""
        del build_config
        return {}

    def build_from_config(self, config):
        super().build_from_config(config)
        if not config:
            return
        if "input_shape" in config:
            args = [_symbolic_inputs(config["input_shape"])]
            kwargs = {}
        elif "shapes_dict" in config:
            items = list(config["shapes_dict"].items())
            args = [_symbolic_inputs(items[0][1])]
            kwargs = {name[:-len("_shape")]: _symbolic_inputs(shape)
                      for name, shape in items[1:] if shape is not None}
        else:
            return
        kwargs.update(self._symbolic_call_kwargs(config))
        symbolic_build(self, *args, **kwargs)
