"""Loading and checking experiment configs (ExperimentOptions textprotos).

    experiment = load_experiment("configs/max_deeplab_s.textproto",
                                 overrides=["train_dataset_options.batch_size: 8"])

`${NAME}` in any string field is replaced by the environment variable NAME;
outside quotes (a number: `output_channels: ${NUM_CLASSES}`) it is replaced
in the text before parsing, and always required.
With a `mode` ('train', 'eval', 'export', ...), a variable is required only
in the fields that mode reads (`FIELDS_UNUSED_BY_MODE`): an export reads no
data, so `${TRAIN_SET}` and `${VAL_SET}` may stay unset; the text of such a
field is then left as written.
Overrides are textproto snippets, either nested ('trainer_options {
solver_options { base_learning_rate: 0.0005 } }') or with a dotted path
('trainer_options.solver_options.base_learning_rate: 0.0005'); they apply in
order, and a repeated field they set replaces the config's value.
Every problem found (unreadable file, syntax error, unknown field, unset
variable, semantic problem) is reported together in one ConfigError.
"""

import os
import re
from typing import Dict, Iterable, List, Mapping, Optional

from google.protobuf import descriptor as descriptor_lib

from max_deeplab_tf.config import textproto
from max_deeplab_tf.config import validation
from max_deeplab_tf.protos import config_pb2

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Fields a mode of trainer.main never reads (dotted paths; a path covers
# its sub-fields). Export builds the model and reads a checkpoint only;
# evaluation reads no training data; training alone no evaluation data.
# model_options.initial_checkpoint is read by evaluation and export only
# when MODEL_DIR holds no checkpoint: the trainer checks it then.
FIELDS_UNUSED_BY_MODE = {
    "export": ("train_dataset_options.file_pattern",
               "eval_dataset_options.file_pattern",
               "trainer_options.synthetic_data",
               "model_options.initial_checkpoint"),
    "eval": ("train_dataset_options.file_pattern",
             "model_options.initial_checkpoint"),
    "continuous_eval": ("train_dataset_options.file_pattern",
                        "model_options.initial_checkpoint"),
    "train": ("eval_dataset_options.file_pattern",),
    "train_and_eval": (),
}


# A quoted string, a comment, or a variable outside both.
_TEXT_TOKEN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|'
    r"(\$\{[A-Za-z_][A-Za-z0-9_]*\})")


def _expand_unquoted_variables(text: str, source: str,
                               environ: Mapping[str, str],
                               problems: List[str]) -> str:
    """Replaces ${NAME} outside strings and comments (numeric fields), in
    the text, recording unset variables with their line."""

    def substitute(match):
        if match.group(1) is None:
            return match.group(0)
        name = match.group(1)[2:-1]
        if name in environ:
            return environ[name]
        line = text.count("\n", 0, match.start()) + 1
        problems.append(
            f"{source}:{line}: environment variable {name} is not set (used "
            f"as {match.group(1)})")
        return "0"

    return _TEXT_TOKEN.sub(substitute, text)


def _unused(path: str, unused: Iterable[str]) -> bool:
    return any(path == field or path.startswith(field + ".")
               for field in unused)


class ConfigError(ValueError):
    """A config has problems; `problems` lists each as 'file:line: field: why'."""

    def __init__(self, source: str, problems: List[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in experiment config "
            f"{source}:\n{lines}")


def _read(path: str) -> str:
    import tensorflow as tf  # gfile, so that gs:// configs work.

    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def _expand_variables(message, prefix: str, environ: Mapping[str, str],
                      texts: Dict[str, str], checker_where, problems,
                      unused: Iterable[str] = ()) -> None:
    """Replaces ${NAME} in every string field, recording unset variables
    (except in the `unused` fields, where an unset one stays as written)."""

    def expand(value: str, path: str) -> str:
        def substitute(match):
            name = match.group(1)
            if name in environ:
                return environ[name]
            if _unused(path, unused):
                return match.group(0)
            problems.append(
                f"{checker_where(path, match.group(0), texts)}: {path}: "
                f"environment variable {name} is not set (used as "
                f"{match.group(0)})")
            return match.group(0)

        return _VARIABLE.sub(substitute, value)

    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.cpp_type == descriptor_lib.FieldDescriptor.CPPTYPE_MESSAGE:
            children = value if field.is_repeated else [value]
            for child in children:
                _expand_variables(child, path + ".", environ, texts,
                                  checker_where, problems, unused)
        elif field.type == descriptor_lib.FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                expanded = [expand(v, path) for v in value]
                del value[:]
                value.extend(expanded)
            else:
                setattr(message, field.name, expand(value, path))


def load_experiment(path: str, overrides: Iterable[str] = (),
                    environ: Optional[Mapping[str, str]] = None,
                    mode: Optional[str] = None
                    ) -> config_pb2.ExperimentOptions:
    """Reads, overrides, expands and validates an experiment config.

    Args:
      path: The textproto file (local, gs://, ...).
      overrides: Textproto snippets applied in order after the file.
      environ: Variables for ${NAME}; defaults to os.environ.
      mode: The trainer mode the config is for; unset variables in fields
        it does not read (FIELDS_UNUSED_BY_MODE) are then not problems.
        None: every field is read.

    Returns:
      The ExperimentOptions.

    Raises:
      ConfigError: listing every problem found, each with file, line, field.
    """
    environ = os.environ if environ is None else environ
    if mode is not None and mode not in FIELDS_UNUSED_BY_MODE:
        raise ConfigError(path, [f"mode {mode!r} is not one of "
                                 f"{sorted(FIELDS_UNUSED_BY_MODE)}"])
    unused = FIELDS_UNUSED_BY_MODE.get(mode, ())
    try:
        text = _read(path)
    except Exception as e:  # gfile raises several error types.
        raise ConfigError(path, [f"{path}: cannot read the config file: {e}"])

    experiment = config_pb2.ExperimentOptions()
    unset = []
    parsed = textproto.parse(
        _expand_unquoted_variables(text, path, environ, unset), experiment,
        path)
    locations, problems, complete = (parsed.locations,
                                     unset + parsed.problems,
                                     parsed.complete and not unset)
    texts = {path: text}
    for index, snippet in enumerate(overrides, start=1):
        source = f"override {index} ({snippet.strip()!r})"
        override = config_pb2.ExperimentOptions()
        unset = []
        snippet_text = _expand_unquoted_variables(
            textproto.expand_dotted_path(snippet), source, environ, unset)
        parsed = textproto.parse(snippet_text, override, source)
        problems.extend(unset + parsed.problems)
        complete = complete and parsed.complete and not unset
        textproto.merge_replacing(override, experiment)
        locations.update(parsed.locations)
        texts[source] = snippet
    if not complete:
        # After a syntax or value error the message is partial; semantic
        # checks on it would only add noise.
        raise ConfigError(path, problems)

    def where(field_path: str, token: str, all_texts: Dict[str, str]) -> str:
        location = locations.get(field_path)
        if location is not None:
            return str(location)
        for source, source_text in all_texts.items():
            for number, line in enumerate(source_text.splitlines(), start=1):
                if token in line:
                    return f"{source}:{number}"
        return path

    _expand_variables(experiment, "", environ, texts, where, problems,
                      unused)
    problems.extend(validation.validate(experiment, locations, path))
    if problems:
        raise ConfigError(path, problems)
    return experiment


__all__ = ["ConfigError", "FIELDS_UNUSED_BY_MODE", "load_experiment"]
