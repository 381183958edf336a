"""Reads textproto experiment configs, reporting every problem with its line.

protobuf's text_format stops at the first unknown field. To list all of them,
`scan_fields` walks the token stream against the message descriptor, records
where each field is set (so later semantic checks can name a line), and
collects unknown fields and syntax errors instead of raising.
"""

import dataclasses
import re
from typing import Dict, List, Optional

from google.protobuf import descriptor as descriptor_lib
from google.protobuf import message as message_lib
from google.protobuf import text_format

_CLOSE = {"{": "}", "<": ">"}


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a field was set: a file (or override) name and a 1-based line."""

    source: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclasses.dataclass
class ScanResult:
    """Outcome of `scan_fields`.

    Attributes:
      locations: dotted field path (e.g. 'train_dataset_options.crop_size')
        -> where it was last set.
      problems: human-readable problems, each starting with 'source:line:'.
    """

    locations: Dict[str, Location]
    problems: List[str]


def _current_line(tokenizer) -> int:
    # The tokenizer keeps its 0-based position privately; it has been stable
    # across protobuf 3.x to 7.x.
    return getattr(tokenizer, "_line", -1) + 1


def _skip_value(tokenizer) -> None:
    """Skips one value: a message block, a list or a scalar."""
    for opening, closing in _CLOSE.items():
        if tokenizer.TryConsume(opening):
            depth = 1
            while depth:
                if tokenizer.AtEnd():
                    raise tokenizer.ParseError(f'Expected "{closing}".')
                if tokenizer.token in _CLOSE:
                    depth += 1
                elif tokenizer.token in _CLOSE.values():
                    depth -= 1
                tokenizer.NextToken()
            return
    if tokenizer.TryConsume("["):
        while not tokenizer.TryConsume("]"):
            if tokenizer.AtEnd():
                raise tokenizer.ParseError('Expected "]".')
            _skip_value(tokenizer)
            tokenizer.TryConsume(",")
        return
    tokenizer.TryConsume("-")
    if tokenizer.token[:1] in ("'", '"'):
        while tokenizer.token[:1] in ("'", '"'):
            tokenizer.NextToken()
    else:
        tokenizer.NextToken()


def _scan_message(tokenizer, descriptor, prefix: str, source: str,
                  result: ScanResult, closing: Optional[str]) -> None:
    while True:
        if closing is None and tokenizer.AtEnd():
            return
        if closing is not None and tokenizer.TryConsume(closing):
            return
        if tokenizer.AtEnd():
            raise tokenizer.ParseError(f'Expected "{closing}".')
        line = _current_line(tokenizer)
        name = tokenizer.ConsumeIdentifierOrNumber()
        field = descriptor.fields_by_name.get(name)
        path = f"{prefix}{name}"
        if field is None:
            known = ", ".join(sorted(descriptor.fields_by_name))
            result.problems.append(
                f"{source}:{line}: {path}: unknown field for "
                f"{descriptor.full_name} (known fields: {known})")
            tokenizer.TryConsume(":")
            _skip_value(tokenizer)
        elif field.cpp_type == descriptor_lib.FieldDescriptor.CPPTYPE_MESSAGE:
            result.locations[path] = Location(source, line)
            tokenizer.TryConsume(":")
            is_list = tokenizer.TryConsume("[")
            while True:
                opening = "{" if tokenizer.TryConsume("{") else None
                if opening is None:
                    tokenizer.Consume("<")
                    opening = "<"
                _scan_message(tokenizer, field.message_type, path + ".",
                              source, result, _CLOSE[opening])
                if not is_list or tokenizer.TryConsume("]"):
                    break
                tokenizer.Consume(",")
        else:
            # A repeated scalar (crop_size: 641 crop_size: 641) is located at
            # its first value, where a reader starts looking.
            if field.is_repeated:
                result.locations.setdefault(path, Location(source, line))
            else:
                result.locations[path] = Location(source, line)
            tokenizer.Consume(":")
            _skip_value(tokenizer)
        if not tokenizer.TryConsume(","):
            tokenizer.TryConsume(";")


def scan_fields(text: str, descriptor, source: str) -> ScanResult:
    """Finds unknown fields and syntax errors in a textproto.

    Args:
      text: The textproto.
      descriptor: Descriptor of the top-level message.
      source: Name used in problems and locations (a path, or 'override 1').

    Returns:
      A ScanResult. A syntax error ends the scan (it is the last problem).
    """
    result = ScanResult(locations={}, problems=[])
    tokenizer = text_format.Tokenizer(text.splitlines())
    try:
        _scan_message(tokenizer, descriptor, "", source, result, closing=None)
    except text_format.ParseError as e:
        result.problems.append(f"{source}:{_error_line(e)}: syntax error: "
                               f"{_error_text(e)}")
    return result


def _error_line(error: text_format.ParseError) -> int:
    line = error.GetLine()
    return line if line is not None else 0


def _error_text(error: text_format.ParseError) -> str:
    # The message starts with 'line:column : ' when the position is known.
    return re.sub(r"^\d+:\d+\s*:\s*", "", str(error))


@dataclasses.dataclass
class ParseResult:
    """Outcome of `parse`.

    Attributes:
      locations: As in ScanResult.
      problems: Every problem found.
      complete: False after a syntax or value error: the message is then only
        partially filled and must not be checked further. Unknown fields alone
        leave it complete (they are skipped).
    """

    locations: Dict[str, Location]
    problems: List[str]
    complete: bool


def parse(text: str, message: message_lib.Message, source: str) -> ParseResult:
    """Parses `text` into `message`, collecting every problem."""
    scan = scan_fields(text, message.DESCRIPTOR, source)
    if any(": syntax error: " in p for p in scan.problems):
        return ParseResult(scan.locations, scan.problems, complete=False)
    try:
        # Unknown fields were reported above; skip them to find value errors.
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as e:
        scan.problems.append(
            f"{source}:{_error_line(e)}: {_error_text(e)}")
        return ParseResult(scan.locations, scan.problems, complete=False)
    return ParseResult(scan.locations, scan.problems, complete=True)


_DOTTED_PATH = re.compile(
    r"^\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)\s*(:?)(.*)$", re.S)


def expand_dotted_path(snippet: str) -> str:
    """Turns 'a.b.c: 1' (or 'a.b { c: 1 }') into 'a { b { c: 1 } }'.

    Snippets already in nested textproto form are returned unchanged.
    """
    match = _DOTTED_PATH.match(snippet)
    if not match:
        return snippet
    parts = match.group(1).split(".")
    colon, rest = match.group(2), match.group(3)
    inner = f"{parts[-1]}{colon} {rest.strip()}"
    for part in reversed(parts[:-1]):
        inner = f"{part} {{ {inner} }}"
    return inner


def merge_replacing(source: message_lib.Message,
                    target: message_lib.Message) -> None:
    """Merges the fields set in `source` into `target`.

    Unlike MergeFrom, a repeated field set in `source` replaces the one in
    `target` (so an override 'crop_size: [65, 65]' does not append), and
    sub-messages are merged field by field.
    """
    for field, value in source.ListFields():
        if field.is_repeated:
            target.ClearField(field.name)
            getattr(target, field.name).extend(value)
        elif field.cpp_type == descriptor_lib.FieldDescriptor.CPPTYPE_MESSAGE:
            sub_message = getattr(target, field.name)
            sub_message.SetInParent()
            merge_replacing(value, sub_message)
        else:
            setattr(target, field.name, value)
