"""Readers for interaction logs in real-world formats; each streams normalized interactions.

A reader turns input files into :class:`Interaction` records (user, item, timestamp, category,
behavior, label, plus the file, 1-based line and source position of the row) and, for every row
it cannot use, a :class:`~tfmoe.data.report.BadRecord` naming the reason, file and line. Readers
stream: they hold one line (or one Parquet batch) at a time, and they read any
:class:`~tfmoe.data.sources.InputSplit` of a file on its own, so Beam workers read big files in
parallel.

Formats (:func:`make_reader` names; aliases in brackets):

* ``sasrec-pairs`` [``ml1m-sasrec``, ``sasrec``]: ``user item`` per line, no timestamps; the order
  of lines is the time order of each user (SASRec's ``ml-1m.txt``).
* ``sequence-lines`` [``beauty-s3rec``, ``s3rec``]: one line per user, ``user item1 item2 ...``
  oldest first (S3-Rec's ``Beauty.txt``). A line without items is an ``empty_user`` error.
* ``movielens-ratings`` [``ml-ratings``]: ``UserID::MovieID::Rating::Timestamp``; the rating is
  the label; ``min_rating`` drops (and counts) lower ratings.
* ``movielens-csv`` [``ml-latest``]: MovieLens ``ratings.csv`` (``ml-latest``, ``ml-latest-small``, ``ml-25m``):
  the header ``userId,movieId,rating,timestamp``, then one rating per line. The rating is the label and, in
  half stars, the behavior (:func:`rating_behavior`: 0.5 -> 1, ..., 5.0 -> 10), so prepared data keeps it;
  ``min_rating`` as above.
* ``taobao-userbehavior`` [``taobao``]: ``user,item,category,behavior,timestamp`` without a
  header; behaviors map to :data:`TAOBAO_BEHAVIORS`; rows need not be in time order.
* ``csv``: delimited text with configurable columns (names with a header, 0-based indices without).
* ``tfmoe-synthetic``: ``csv`` with the header ``user_id,item_id,category_id,timestamp`` written
  by ``tfmoe synthesize``.
* ``parquet``: Parquet files with configurable column names.

Ids are non-negative integers (``id_type="str"`` in ``csv``/``parquet`` accepts any id without
whitespace); timestamps are non-negative Unix seconds (decimals are floored).

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "ml-1m.txt")
    >>> _ = open(path, "w").write("1 10\\n1 11\\n2 10\\n")
    >>> reader = make_reader("ml1m-sasrec")
    >>> [(r.user, r.item, r.line) for r in iter_interactions(reader, [path])]
    [(1, 10, 1), (1, 11, 2), (2, 10, 3)]
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import ClassVar, NamedTuple

from tfmoe.data import sources
from tfmoe.data.report import ERROR_REASONS, BadInputReport, BadRecord, InputError
from tfmoe.utils import validation as v

TAOBAO_BEHAVIORS = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}
INT64_MAX = (1 << 63) - 1
DEFAULT_MAX_LINE_BYTES = 8 << 20
OPTIONAL_FIELDS = ("timestamp", "category", "behavior", "label")
ON_ERROR = ("error", "skip")


class Interaction(NamedTuple):
    """One user-item event. ``position = (file_index, line, index in line)`` is the source order."""

    user: int | str
    item: int | str
    timestamp: int | None
    category: int | str | None
    behavior: int | None
    label: float | None
    file: str
    line: int
    position: tuple


class RowError(Exception):
    """Raised by a row parser: the row becomes a BadRecord with this reason and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- field parsers (shared by every format; accept bytes, str and, for Parquet, Python values) ---

def _show(token) -> str:
    return repr(token.decode("utf-8", "replace") if isinstance(token, bytes) else token)


def _is_plain_digits(token) -> bool:
    return token.isdigit() and (isinstance(token, bytes) or token.isascii())


def parse_int_id(token, what: str) -> int:
    """A non-negative integer id, else :class:`RowError` (``missing_value``/``negative_id``/``invalid_id``)."""
    if isinstance(token, (bytes, str)):
        if _is_plain_digits(token):
            return int(token)
        stripped = token.strip()
        if not stripped:
            raise RowError("missing_value", f"{what} id is empty")
        if _is_plain_digits(stripped):
            return int(stripped)
        if stripped[:1] in ("-", b"-") and _is_plain_digits(stripped[1:]):
            raise RowError("negative_id", f"{what} id {int(stripped)} is negative")
        raise RowError("invalid_id", f"{what} id {_show(token)} is not a non-negative integer")
    if token is None:
        raise RowError("missing_value", f"{what} id is null")
    if isinstance(token, int) and not isinstance(token, bool):
        if token < 0:
            raise RowError("negative_id", f"{what} id {token} is negative")
        return token
    raise RowError("invalid_id", f"{what} id {token!r} is not a non-negative integer")


def parse_str_id(token, what: str) -> str:
    """A string id without whitespace (vocabulary files hold one id per line)."""
    if token is None:
        raise RowError("missing_value", f"{what} id is null")
    text = token.decode("utf-8") if isinstance(token, bytes) else str(token)
    text = text.strip()
    if not text:
        raise RowError("missing_value", f"{what} id is empty")
    if any(c.isspace() for c in text):
        raise RowError("invalid_id", f"{what} id {text!r} contains whitespace")
    return text


def parse_timestamp(token) -> int:
    """Unix seconds as a non-negative int (decimals floored), else ``missing_``/``invalid_timestamp``."""
    if isinstance(token, (bytes, str)):
        if _is_plain_digits(token):
            value = int(token)
        else:
            stripped = token.strip()
            if not stripped:
                raise RowError("missing_timestamp", "timestamp is empty")
            try:
                number = float(stripped)
            except ValueError:
                raise RowError("invalid_timestamp", f"timestamp {_show(token)} is not a number") from None
            if not math.isfinite(number) or number < 0:
                raise RowError("invalid_timestamp", f"timestamp {_show(token)} is not a non-negative finite number")
            value = math.floor(number)
    elif token is None:
        raise RowError("missing_timestamp", "timestamp is null")
    elif isinstance(token, int) and not isinstance(token, bool):
        value = token
    elif isinstance(token, float) and math.isfinite(token):
        value = math.floor(token)
    else:
        raise RowError("invalid_timestamp", f"timestamp {token!r} is not a number")
    if value < 0 or value > INT64_MAX:
        raise RowError("invalid_timestamp", f"timestamp {value} is outside [0, 2**63)")
    return value


def parse_label(token) -> float:
    """A finite number, else ``missing_value``/``invalid_label``."""
    if token is None or (isinstance(token, (bytes, str)) and not token.strip()):
        raise RowError("missing_value", "label is empty")
    try:
        value = float(token)
    except (TypeError, ValueError):
        raise RowError("invalid_label", f"label {_show(token)} is not a number") from None
    if not math.isfinite(value):
        raise RowError("invalid_label", f"label {_show(token)} is not finite")
    return value


def parse_behavior(token, behavior_map: Mapping | None) -> int:
    """Maps a behavior name through ``behavior_map``; without a map, a non-negative integer code."""
    if behavior_map is None:
        return parse_int_id(token, "behavior")
    key = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
    key = key.strip() if isinstance(key, str) else key
    if key in behavior_map:
        return behavior_map[key]
    known = ", ".join(sorted(map(str, behavior_map)))
    raise RowError("unknown_behavior", f"behavior {_show(token)} is not one of {known}")


def check_min_label(label: float, min_label: float | None, name: str = "label") -> None:
    if min_label is not None and label < min_label:
        raise RowError("below_min_label", f"{name} {label:g} < min_{name} {min_label:g}")


def _check_behavior_map(owner: str, behavior_map) -> tuple | None:
    if behavior_map is None:
        return None
    if not isinstance(behavior_map, Mapping) or not behavior_map:
        raise ValueError(f"{owner}: `behavior_map` must be a non-empty mapping of name to code, got {behavior_map!r}")
    for name, code in behavior_map.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{owner}: `behavior_map` names must be non-empty strings, got {name!r}")
        v.check_int(owner, f"behavior_map[{name!r}]", code, minimum=1)
    return tuple(sorted(behavior_map.items()))


# --- readers ---

@dataclass(frozen=True)
class Reader:
    """Base of all readers: plans splits of a file and reads each split on its own."""

    format: ClassVar[str] = ""

    @property
    def fields(self) -> frozenset:
        """Which of :data:`OPTIONAL_FIELDS` the records carry (the others are always ``None``)."""
        raise NotImplementedError

    def plan(self, path: str, file_index: int, split_bytes: int) -> list[sources.InputSplit]:
        raise NotImplementedError

    def iter_rows(self, split: sources.InputSplit, first_line: int | None = None):
        """Yields ``(line, rows)`` per usable line (``rows``: ``(user, item, timestamp, category,
        behavior, label)`` tuples) and a :class:`BadRecord` per rejected line, in file order.

        The compact form the Beam job consumes; :meth:`read_split` is the record form.
        """
        raise NotImplementedError

    def read_split(self, split: sources.InputSplit, first_line: int | None = None):
        """Yields :class:`Interaction` and :class:`BadRecord` for one split, in file order."""
        path, file_index = split.path, split.file_index
        for out in self.iter_rows(split, first_line):
            if type(out) is BadRecord:
                yield out
                continue
            line, rows = out
            for k, row in enumerate(rows):
                yield Interaction(*row, path, line, (file_index, line, k))

    def read(self, paths) -> Iterator[Interaction | BadRecord]:
        """Streams whole files (patterns expanded) in order: interactions and bad records."""
        for file_index, path in enumerate(sources.expand_inputs(paths)):
            for split in self.plan(path, file_index, split_bytes=1 << 62):
                yield from self.read_split(split)

    def describe(self) -> dict:
        """The reader's configuration (JSON-ready) for ``summary.json``."""
        return {"format": self.format, **asdict(self)}

    def behavior_codes(self) -> dict | None:
        """The behavior name -> code map the reader applies (``None`` if it maps none)."""
        return None


@dataclass(frozen=True)
class TextReader(Reader):
    """A line-oriented reader; subclasses implement :meth:`parse_line`."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def __post_init__(self):
        v.check_int(type(self).__name__, "max_line_bytes", self.max_line_bytes, minimum=16)

    def plan(self, path, file_index, split_bytes):
        return sources.plan_text_splits(path, file_index, split_bytes)

    def parse_line(self, body: bytes, split: sources.InputSplit) -> list[tuple]:
        """Returns ``[(user, item, timestamp, category, behavior, label), ...]`` or raises RowError."""
        raise NotImplementedError

    def _header_skipped(self, split) -> bool:
        """Whether the split's first line is a header (never, for header-less formats)."""
        return False

    def iter_rows(self, split, first_line=None):
        line_no = split.first_line if first_line is None else first_line
        if line_no is None:
            raise ValueError(f"{split.path}: split {split.split_index} starts at an unknown line; pass first_line")
        path, file_index, parse = split.path, split.file_index, self.parse_line
        skip_header = self._header_skipped(split)
        line_no -= 1
        for line in sources.iter_lines(path, split.start, split.end, self.max_line_bytes):
            line_no += 1
            if skip_header:
                skip_header = False
                continue
            if type(line) is sources.TooLongLine:
                yield BadRecord("line_too_long", path, line_no, _text(line.head),
                                f"line is longer than max_line_bytes={self.max_line_bytes}", (file_index, line_no, 0))
                continue
            body = line.rstrip(b"\r\n")
            if not body.strip():
                yield BadRecord("blank_line", path, line_no, "", "blank line", (file_index, line_no, 0))
                continue
            try:
                rows = parse(body, split)
            except RowError as error:
                reason, detail = error.reason, error.detail
                if reason in ERROR_REASONS and not line.endswith(b"\n"):
                    reason, detail = "truncated", f"incomplete last line (no trailing newline): {detail}"
                yield BadRecord(reason, path, line_no, _text(body), detail, (file_index, line_no, 0))
                continue
            yield line_no, rows


def _text(body: bytes) -> str:
    return body[:400].decode("utf-8", "replace")


def _malformed(fields: list, count: int, layout: str) -> RowError:
    return RowError("malformed", f"expected {count} fields `{layout}`, got {len(fields)}")


def _int(token: bytes, what: str) -> int:
    """:func:`parse_int_id` with a fast path for the common case (a bytes token of ASCII digits)."""
    return int(token) if token.isdigit() else parse_int_id(token, what)


@dataclass(frozen=True)
class SasrecPairsReader(TextReader):
    """``user item`` per line (whitespace-separated); line order is time order per user."""

    format: ClassVar[str] = "sasrec-pairs"

    @property
    def fields(self):
        return frozenset()

    def parse_line(self, body, split):
        parts = body.split()
        if len(parts) != 2:
            raise _malformed(parts, 2, "user item")
        return ((_int(parts[0], "user"), _int(parts[1], "item"), None, None, None, None),)


@dataclass(frozen=True)
class SequenceLinesReader(TextReader):
    """``user item1 item2 ...`` per line, oldest item first."""

    format: ClassVar[str] = "sequence-lines"

    @property
    def fields(self):
        return frozenset()

    def parse_line(self, body, split):
        parts = body.split()
        user = _int(parts[0], "user")
        if len(parts) == 1:
            raise RowError("empty_user", f"user {user} has no items")
        return [(user, _int(item, "item"), None, None, None, None) for item in parts[1:]]


@dataclass(frozen=True)
class _RatingsReader(TextReader):
    """A ratings reader: ``min_rating`` (checked here) drops and counts lower ratings."""

    min_rating: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.min_rating is not None:
            v.check_float(type(self).__name__, "min_rating", self.min_rating)


@dataclass(frozen=True)
class MovielensRatingsReader(_RatingsReader):
    """MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``; label = rating."""

    format: ClassVar[str] = "movielens-ratings"

    @property
    def fields(self):
        return frozenset({"timestamp", "label"})

    def parse_line(self, body, split):
        parts = body.split(b"::")
        if len(parts) != 4:
            raise _malformed(parts, 4, "UserID::MovieID::Rating::Timestamp")
        rating = parse_label(parts[2])
        check_min_label(rating, self.min_rating, "rating")
        return ((_int(parts[0], "user"), _int(parts[1], "item"), parse_timestamp(parts[3]), None, None, rating),)


RATING_STEP = 0.5
MOVIELENS_CSV_HEADER = b"userId,movieId,rating,timestamp"
# behavior code of each MovieLens rating: its number of half stars
RATING_BEHAVIORS = {f"{k * RATING_STEP:.1f}": k for k in range(1, 11)}


def rating_behavior(rating: float) -> int:
    """The behavior code of a MovieLens rating: its half stars (``0.5 -> 1``, ``4.0 -> 8``, ``5.0 -> 10``), else
    :class:`RowError` ``invalid_label`` for a rating off the half-star grid or outside ``[0.5, 5]``."""
    code = rating / RATING_STEP
    if code != int(code) or not 1 <= code <= 10:
        raise RowError("invalid_label", f"rating {rating:g} is not a half star in [0.5, 5]")
    return int(code)


@dataclass(frozen=True)
class MovielensCsvReader(_RatingsReader):
    """MovieLens ``ratings.csv``: header ``userId,movieId,rating,timestamp``; label = rating, behavior = its half
    stars (:func:`rating_behavior`)."""

    format: ClassVar[str] = "movielens-csv"

    @property
    def fields(self):
        return frozenset({"timestamp", "behavior", "label"})

    def behavior_codes(self):
        return dict(RATING_BEHAVIORS)

    def plan(self, path, file_index, split_bytes):
        with sources.open_binary(path) as f:
            header = f.readline(self.max_line_bytes + 1).removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")
        if header != MOVIELENS_CSV_HEADER:
            raise ValueError(f"{path}:1: a MovieLens ratings.csv starts with the header "
                             f"{MOVIELENS_CSV_HEADER.decode()!r}, got {_text(header)!r}")
        return super().plan(path, file_index, split_bytes)

    def _header_skipped(self, split):
        return split.start == 0

    def parse_line(self, body, split):
        parts = body.split(b",")
        if len(parts) != 4:
            raise _malformed(parts, 4, "userId,movieId,rating,timestamp")
        rating = parse_label(parts[2])
        behavior = rating_behavior(rating)
        check_min_label(rating, self.min_rating, "rating")
        return ((_int(parts[0], "user"), _int(parts[1], "item"), parse_timestamp(parts[3]), None, behavior, rating),)


@dataclass(frozen=True)
class TaobaoReader(TextReader):
    """Taobao ``UserBehavior.csv``: ``user,item,category,behavior,timestamp``, no header."""

    format: ClassVar[str] = "taobao-userbehavior"

    @property
    def fields(self):
        return frozenset({"timestamp", "category", "behavior"})

    def behavior_codes(self):
        return dict(TAOBAO_BEHAVIORS)

    def parse_line(self, body, split):
        parts = body.split(b",")
        if len(parts) != 5:
            raise _malformed(parts, 5, "user,item,category,behavior,timestamp")
        return ((_int(parts[0], "user"), _int(parts[1], "item"), parse_timestamp(parts[4]),
                 _int(parts[2], "category"), parse_behavior(parts[3], TAOBAO_BEHAVIORS), None),)


@dataclass(frozen=True)
class ColumnSpec:
    """Which column holds each field (names, or 0-based indices for header-less CSV); ``None`` = absent."""

    user: str | int = "user_id"
    item: str | int = "item_id"
    timestamp: str | int | None = "timestamp"
    category: str | int | None = None
    behavior: str | int | None = None
    label: str | int | None = None

    def used(self) -> dict:
        return {name: column for name, column in asdict(self).items() if column is not None}

    def check(self, owner: str, by_index: bool) -> None:
        kind = "0-based column indices (the file has no header)" if by_index else "column names"
        for name, column in self.used().items():
            ok = (isinstance(column, int) and not isinstance(column, bool) and column >= 0) if by_index \
                else (isinstance(column, str) and column != "")
            if not ok:
                raise ValueError(f"{owner}: column for `{name}` must be one of the {kind}, got {column!r}")
        columns = list(self.used().values())
        if len(set(columns)) != len(columns):
            raise ValueError(f"{owner}: two fields read the same column: {self.used()}")


@dataclass(frozen=True)
class _ColumnarOptions:
    """Options shared by the generic CSV and Parquet readers."""

    columns: ColumnSpec = field(default_factory=ColumnSpec)
    id_type: str = "int"
    behavior_map: Mapping | tuple | None = None
    min_label: float | None = None

    def _check_columnar(self, by_index: bool) -> None:
        owner = type(self).__name__
        if isinstance(self.columns, Mapping):
            object.__setattr__(self, "columns", ColumnSpec(**self.columns))
        if not isinstance(self.columns, ColumnSpec):
            raise ValueError(f"{owner}: `columns` must be a ColumnSpec or a mapping, got {self.columns!r}")
        self.columns.check(owner, by_index)
        v.check_choice(owner, "id_type", self.id_type, ("int", "str"))
        if not isinstance(self.behavior_map, tuple):
            object.__setattr__(self, "behavior_map", _check_behavior_map(owner, self.behavior_map))
        object.__setattr__(self, "_behavior_lookup", dict(self.behavior_map) if self.behavior_map else None)
        if self.min_label is not None:
            if self.columns.label is None:
                raise ValueError(f"{owner}: `min_label` needs a label column")
            v.check_float(owner, "min_label", self.min_label)

    @property
    def fields(self):
        return frozenset(name for name in OPTIONAL_FIELDS if getattr(self.columns, name) is not None)

    def behavior_codes(self):
        return dict(self.behavior_map) if self.behavior_map else None

    def _parse_values(self, values: dict) -> tuple:
        """``values`` maps field name to raw value; returns the normalized 6-tuple or raises RowError."""
        parse_id = parse_int_id if self.id_type == "int" else parse_str_id
        label = values.get("label")
        if "label" in values:
            label = parse_label(label)
            check_min_label(label, self.min_label)
        return (
            parse_id(values["user"], "user"),
            parse_id(values["item"], "item"),
            parse_timestamp(values["timestamp"]) if "timestamp" in values else None,
            parse_id(values["category"], "category") if "category" in values else None,
            parse_behavior(values["behavior"], self._behavior_lookup) if "behavior" in values else None,
            label,
        )


@dataclass(frozen=True)
class CsvReader(_ColumnarOptions, TextReader):
    """Delimited text with configurable columns; one interaction per row.

    Rows must not contain newlines inside quoted fields (interaction logs never need them).
    """

    format: ClassVar[str] = "csv"
    delimiter: str = ","
    header: bool = True
    encoding: str = "utf-8"

    def __post_init__(self):
        TextReader.__post_init__(self)
        owner = type(self).__name__
        v.check_bool(owner, "header", self.header)
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1 or self.delimiter in "\r\n\"":
            raise ValueError(f"{owner}: `delimiter` must be one character other than a quote or newline, "
                             f"got {self.delimiter!r}")
        "".encode(self.encoding)  # raises LookupError for an unknown encoding
        self._check_columnar(by_index=not self.header)

    def _header_skipped(self, split):
        return self.header and split.start == 0

    def plan(self, path, file_index, split_bytes):
        return sources.plan_text_splits(path, file_index, split_bytes, columns=self._resolve_columns(path))

    def _resolve_columns(self, path: str) -> tuple:
        """``((field, index), ...)`` plus the expected field count (-1 = at least) as the last pair."""
        used = self.columns.used()
        if not self.header:
            return (*used.items(), ("__width__", -(max(used.values()) + 1)))
        with sources.open_binary(path) as f:
            first = f.readline(self.max_line_bytes + 1)
        try:
            header_text = first.decode(self.encoding).lstrip("\ufeff").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}:1: CSV header is not valid {self.encoding}: {error}") from None
        names = self._split_fields(header_text)
        missing = [column for column in used.values() if column not in names]
        if missing:
            raise ValueError(f"{path}:1: CSV header has no column {', '.join(map(repr, missing))}; "
                             f"columns are {', '.join(map(repr, names))}")
        return (*((name, names.index(column)) for name, column in used.items()), ("__width__", len(names)))

    def _split_fields(self, text: str) -> list[str]:
        if '"' in text:
            return next(csv.reader([text], delimiter=self.delimiter))
        return text.split(self.delimiter)

    def parse_line(self, body, split):
        try:
            text = body.decode(self.encoding)
        except UnicodeDecodeError as error:
            raise RowError("bad_encoding", f"not valid {self.encoding}: {error.reason} at byte {error.start}") from None
        try:
            parts = self._split_fields(text)
        except csv.Error as error:
            raise RowError("malformed", f"unparseable CSV: {error}") from None
        *columns, (_, width) = split.columns
        if (width >= 0 and len(parts) != width) or (width < 0 and len(parts) < -width):
            expected = f"{width}" if width >= 0 else f"at least {-width}"
            raise RowError("malformed", f"expected {expected} fields, got {len(parts)}")
        return (self._parse_values({name: parts[index] for name, index in columns}),)


@dataclass(frozen=True)
class ParquetReader(_ColumnarOptions, Reader):
    """Parquet files with configurable column names; splits are row groups; lines are 1-based rows."""

    format: ClassVar[str] = "parquet"
    batch_rows: int = 65536

    def __post_init__(self):
        v.check_int(type(self).__name__, "batch_rows", self.batch_rows, minimum=1)
        self._check_columnar(by_index=False)

    def plan(self, path, file_index, split_bytes):
        import pyarrow.parquet as pq

        with sources.open_binary(path, decompress=False) as f:
            metadata = pq.ParquetFile(f).metadata
            names = set(metadata.schema.names)
        missing = [column for column in self.columns.used().values() if column not in names]
        if missing:
            raise ValueError(f"{path}: Parquet file has no column {', '.join(map(repr, missing))}; "
                             f"columns are {', '.join(map(repr, sorted(names)))}")
        splits, group, first_row = [], 0, 1
        while group < metadata.num_row_groups:
            start, size, rows = group, 0, 0
            while group < metadata.num_row_groups and (group == start or size < split_bytes):
                size += metadata.row_group(group).total_byte_size
                rows += metadata.row_group(group).num_rows
                group += 1
            splits.append(sources.InputSplit(path, file_index, len(splits), start, group, first_row))
            first_row += rows
        return splits or [sources.InputSplit(path, file_index, 0, 0, 0, 1)]

    def iter_rows(self, split, first_line=None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        row = (split.first_line if first_line is None else first_line) - 1
        used = self.columns.used()
        groups = list(range(split.start, split.end))
        if not groups:
            return
        with sources.open_binary(split.path, decompress=False) as f:
            batches = pq.ParquetFile(f).iter_batches(batch_size=self.batch_rows, row_groups=groups,
                                                     columns=list(dict.fromkeys(used.values())))
            for batch in batches:
                columns = {}
                for name, column in used.items():
                    array = batch.column(column)
                    if name == "timestamp" and pa.types.is_timestamp(array.type):
                        array = array.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
                    columns[name] = array.to_pylist()
                for values in zip(*columns.values()):
                    row += 1
                    record = dict(zip(columns, values))
                    try:
                        parsed = self._parse_values(record)
                    except RowError as error:
                        yield BadRecord(error.reason, split.path, row, repr(record), error.detail,
                                        (split.file_index, row, 0))
                        continue
                    yield row, (parsed,)


def _synthetic_reader(**options) -> CsvReader:
    columns = ColumnSpec(user="user_id", item="item_id", timestamp="timestamp", category="category_id")
    return CsvReader(columns=columns, header=True, **options)


_FORMATS = {
    "sasrec-pairs": SasrecPairsReader,
    "sequence-lines": SequenceLinesReader,
    "movielens-ratings": MovielensRatingsReader,
    "movielens-csv": MovielensCsvReader,
    "taobao-userbehavior": TaobaoReader,
    "csv": CsvReader,
    "tfmoe-synthetic": _synthetic_reader,
    "parquet": ParquetReader,
}
ALIASES = {
    "ml1m-sasrec": "sasrec-pairs",
    "sasrec": "sasrec-pairs",
    "beauty-s3rec": "sequence-lines",
    "s3rec": "sequence-lines",
    "ml-ratings": "movielens-ratings",
    "ml-latest": "movielens-csv",
    "taobao": "taobao-userbehavior",
}
FORMAT_NAMES = tuple(_FORMATS) + tuple(ALIASES)


def canonical_format(name: str) -> str:
    """The registered name of a format or alias; ``ValueError`` listing the choices otherwise."""
    v.check_choice("make_reader", "format", name, FORMAT_NAMES)
    return ALIASES.get(name, name)


def reader_options(format: str) -> tuple:
    """The option names :func:`make_reader` accepts for ``format``."""
    from dataclasses import fields

    name = canonical_format(format)
    if name == "tfmoe-synthetic":
        return tuple(f.name for f in fields(CsvReader) if f.name not in ("columns", "header"))
    return tuple(f.name for f in fields(_FORMATS[name]))


def make_reader(format: str, **options) -> Reader:
    """Builds the reader of ``format`` (a name or alias above) with reader-specific ``options``."""
    factory = _FORMATS[canonical_format(format)]
    unknown = sorted(set(options) - set(reader_options(format)))
    if unknown:
        raise ValueError(f"make_reader: format {format!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are {', '.join(reader_options(format))}")
    return factory(**options)


def iter_interactions(reader: Reader, paths, on_error: str = "error", report: BadInputReport | None = None):
    """Streams the interactions of ``paths``; bad rows raise :class:`InputError` or are counted.

    With ``on_error="error"`` the first bad row raises an ``InputError`` naming reason, file, line
    and text; with ``"skip"`` bad rows are added to ``report`` (when given) and skipped. Filtered
    and blank rows never raise; they are always added to ``report``.
    """
    v.check_choice("iter_interactions", "on_error", on_error, ON_ERROR)
    for record in reader.read(paths):
        if type(record) is Interaction:
            yield record
            continue
        if report is not None:
            report.add(record)
        if on_error == "error" and record.is_error:
            raise InputError(f"{record.reason}: {record.describe()}")
