"""Translates a deeplab2 ExperimentOptions textproto into ours.

Our protos use deeplab2's field names, so translation is a parse that keeps
every field both schemas share and lists the ones it drops (deeplab2 options
of other meta-architectures or not used by MaX-DeepLab). ${NAME} variables are
kept as they are: the translated config is a template, like deeplab2's.
"""

import dataclasses
from typing import List

from google.protobuf import text_format

from max_deeplab_tf import cli
from max_deeplab_tf.config import textproto
from max_deeplab_tf.protos import config_pb2

# The header line that marks a translated config (the importer recognises
# its own output folders by it).
TRANSLATION_MARK = ("# Translated from a deeplab2 config by "
                    "max_deeplab_tf.tools.import_deeplab2.")


class Deeplab2ConfigError(cli.UserError):
    """The deeplab2 config is unreadable or is not a MaX-DeepLab config
    (a bad input: one line, exit code 2)."""


@dataclasses.dataclass
class TranslatedConfig:
    """A translated config.

    Attributes:
      experiment: Our ExperimentOptions (variables not expanded).
      dropped_fields: 'file:line: field: ...' for each deeplab2 field that has
        no counterpart here and was left out.
    """

    experiment: config_pb2.ExperimentOptions
    dropped_fields: List[str]

    def to_textproto(self) -> str:
        header = ("# proto-file: protos/config.proto\n"
                  "# proto-message: max_deeplab_tf.ExperimentOptions\n"
                  f"{TRANSLATION_MARK}\n")
        if self.dropped_fields:
            header += "# deeplab2 fields left out:\n" + "".join(
                f"#   {d}\n" for d in self.dropped_fields)
        return header + text_format.MessageToString(self.experiment)


def translate_config_text(text: str, source: str) -> TranslatedConfig:
    """Translates deeplab2 textproto `text` (read from `source`).

    Raises:
      Deeplab2ConfigError: on a syntax error, or when the config does not
        describe a MaX-DeepLab model.
    """
    experiment = config_pb2.ExperimentOptions()
    parsed = textproto.parse(text, experiment, source)
    if not parsed.complete:
        raise Deeplab2ConfigError("\n".join(parsed.problems))
    if not experiment.model_options.HasField("max_deeplab"):
        other = experiment.model_options.WhichOneof("meta_architecture")
        raise Deeplab2ConfigError(
            f"{source}: model_options.max_deeplab is not set"
            + (f" (it is a {other} config)" if other else "")
            + "; only MaX-DeepLab configs can be imported")
    return TranslatedConfig(experiment, parsed.problems)


def translate_config_file(path: str) -> TranslatedConfig:
    """Reads (through tf.io.gfile) and translates a deeplab2 config file."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "r") as f:
            text = f.read()
    except Exception as e:  # gfile raises several error types.
        raise Deeplab2ConfigError(
            f"{path}: cannot read the deeplab2 config: "
            f"{cli.one_line(getattr(e, 'message', None) or str(e))}")
    return translate_config_text(text, path)
