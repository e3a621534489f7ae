"""One file's bytes as a bounded stream: opened, decompressed, transcoded to UTF-8, translated.

Every stage is a generator of chunks of at most `chunk_bytes` (plus a few bytes of carry), so a file
of any size passes through in constant memory:

- `raw_chunks` reads a path, a pyarrow `NativeFile` or a binary file object;
- `decompressed_chunks`: gzip and zstd through pyarrow's `CompressedInputStream` (C++, several
  members or frames in a row are fine, a cut-off stream raises), a `.zip` member through `zipfile`
  (which needs a seekable file: a stream is spooled to a temporary file first);
- `utf8_chunks` decodes with an incremental codec (`errors="strict"`: a byte that is not valid in the
  declared encoding raises with its offset in the decompressed content) and drops a leading byte
  order mark whatever the encoding;
- `TerminatorTranslator` rewrites a multi-character delimiter or a custom row terminator into a
  CSV that pyarrow parses: every field is quoted with the control character `\\x1e` (doubled where
  it occurs in the data) and separated by `\\x1f`, rows end in `\\n`. Values may hold anything,
  line breaks included; the limit is that such values are taken literally (no quoting or escaping
  of the source's own), which is how `bcp` / `BULK INSERT` write them. A terminator split across
  two chunks is found: a chunk is cut only where no terminator straddles the cut.
"""

from __future__ import annotations

import codecs
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import IO, BinaryIO, Protocol, TypeAlias, cast

import pyarrow as pa

from ingestion_assets.sources.files.formats import Compression, MalformedFileError

Source: TypeAlias = str | os.PathLike[str] | pa.NativeFile | BinaryIO
DEFAULT_CHUNK_BYTES = 1 << 20
QUOTE = b"\x1e"
DELIMITER = b"\x1f"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _SourceReadFailed(OSError):
    """An I/O error of the source itself, kept apart from a decompressor's complaint."""


class _TaggedReader:
    """Passes reads through, marking the source's own errors so they are not taken for bad data."""

    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        try:
            return bytes(self._inner.read(size))
        except OSError as error:
            raise _SourceReadFailed(str(error)) from error

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


@contextmanager
def opened(source: Source) -> Iterator[_Readable]:
    """The source as a readable binary stream; a path is opened and closed here, others are not."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            yield file
    else:
        yield cast(_Readable, source)


@contextmanager
def seekable(source: Source) -> Iterator[str | IO[bytes] | pa.NativeFile]:
    """The source as a path or seekable file, as Parquet, ORC, zip and Excel readers need."""
    if isinstance(source, str | os.PathLike):
        yield os.fspath(source)
        return
    if _is_seekable(source):
        yield source
        return
    with tempfile.TemporaryFile(prefix="ingest-file-") as spool:
        readable = cast(_Readable, source)
        while chunk := readable.read(DEFAULT_CHUNK_BYTES):
            spool.write(chunk)
        spool.seek(0)
        yield spool


def _is_seekable(source: pa.NativeFile | BinaryIO) -> bool:
    check = getattr(source, "seekable", None)
    return bool(check()) if callable(check) else False


def resolve_compression(compression: Compression, file_name: str) -> Compression:
    """`auto` resolved from the file name's last suffix; any other choice as it is."""
    if compression != "auto":
        return compression
    suffix = PurePath(file_name).suffix.lower()
    if suffix in (".gz", ".gzip"):
        return "gzip"
    if suffix in (".zst", ".zstd"):
        return "zstd"
    if suffix == ".zip":
        return "zip"
    return "none"


def decompressed_chunks(
    source: Source,
    file_name: str,
    compression: Compression,
    zip_member: str | None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[bytes]:
    """The file's content, decompressed as its name or `compression` says, chunk by chunk."""
    resolved = resolve_compression(compression, file_name)
    if resolved == "zip":
        yield from _zip_member_chunks(source, file_name, zip_member, chunk_bytes)
        return
    with opened(source) as readable:
        if resolved == "none":
            while chunk := readable.read(chunk_bytes):
                yield bytes(chunk)
            return
        stream = pa.CompressedInputStream(_TaggedReader(readable), resolved)
        while True:
            try:
                chunk = stream.read(chunk_bytes)
            except _SourceReadFailed as error:
                raise cast(BaseException, error.__cause__) from None
            except OSError as error:
                raise _codec_error(file_name, resolved, error) from error
            if not chunk:
                return
            yield chunk


def _codec_error(file_name: str, codec: str, error: OSError) -> MalformedFileError:
    if "truncated" in str(error).lower():
        return MalformedFileError(
            file_name,
            f"the {codec} stream ends before its end marker (truncated)",
            "the file was cut short, e.g. still being uploaded: send it again complete",
        )
    return MalformedFileError(
        file_name,
        f"not a valid {codec} stream ({error})",
        f"send a {codec}-compressed file, or set the format's compression to match the file",
    )


def _zip_member_chunks(
    source: Source, file_name: str, zip_member: str | None, chunk_bytes: int
) -> Iterator[bytes]:
    with seekable(source) as file:
        try:
            archive = zipfile.ZipFile(cast(IO[bytes], file) if not isinstance(file, str) else file)
        except zipfile.BadZipFile as error:
            raise MalformedFileError(
                file_name, f"not a valid zip archive ({error})", "send a complete .zip file"
            ) from error
        with archive:
            members = [info.filename for info in archive.infolist() if not info.is_dir()]
            member = _chosen_member(file_name, members, zip_member)
            try:
                with archive.open(member) as stream:
                    while chunk := stream.read(chunk_bytes):
                        yield chunk
            except (zipfile.BadZipFile, EOFError, OSError) as error:
                raise MalformedFileError(
                    file_name,
                    f"zip member '{member}' is damaged ({error})",
                    "send the archive again complete",
                ) from error


def _chosen_member(file_name: str, members: list[str], zip_member: str | None) -> str:
    listed = ", ".join(members[:10]) + (", ..." if len(members) > 10 else "")
    if zip_member is not None:
        if zip_member not in members:
            raise MalformedFileError(
                file_name,
                f"the zip has no member '{zip_member}' (members: {listed or 'none'})",
                "set zip_member to one of the members",
            )
        return zip_member
    if len(members) != 1:
        raise MalformedFileError(
            file_name,
            f"the zip holds {len(members)} files and none is named (members: {listed or 'none'})",
            "set the format's zip_member to the one to read, or send one file per zip",
        )
    return members[0]


def utf8_chunks(chunks: Iterator[bytes], file_name: str, encoding: str) -> Iterator[bytes]:
    """The chunks decoded from `encoding` and re-encoded as UTF-8, a leading BOM dropped."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    consumed = 0
    first = True
    for data, final in _with_final(chunks):
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(data, final=final)
        except UnicodeDecodeError as error:
            offset = consumed - pending + error.start
            raise MalformedFileError(
                file_name,
                f"byte {error.object[error.start : error.start + 4]!r} at offset {offset} is "
                f"not valid {encoding} ({error.reason})",
                "set the format's encoding to the one the file was written in, "
                "or send the file re-encoded",
            ) from error
        consumed += len(data)
        if first and text:
            text = text.removeprefix("\ufeff")
            first = False
        if text:
            yield text.encode("utf-8")


def utf8_content(
    source: Source,
    file_name: str,
    compression: Compression,
    zip_member: str | None,
    encoding: str,
    chunk_bytes: int,
) -> Iterator[bytes]:
    """The file's text as UTF-8 chunks: decompressed, then transcoded."""
    chunks = decompressed_chunks(source, file_name, compression, zip_member, chunk_bytes)
    return utf8_chunks(chunks, file_name, encoding)


def _with_final(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    for chunk in chunks:
        yield chunk, False
    yield b"", True


class TerminatorTranslator:
    """Rewrites delimited text with multi-character terminators into `\\x1e`-quoted CSV."""

    def __init__(self, delimiter: bytes, row_terminator: bytes | None) -> None:
        # Without a row terminator rows end in \n or \r\n: \r\n is made \n before translating.
        self._crlf = row_terminator is None
        row = b"\n" if row_terminator is None else row_terminator
        # The longer token first: when one contains the other, the longer one is meant.
        self._tokens = sorted([delimiter, row], key=len, reverse=True)
        self._row = row
        self._cut_tokens = [*self._tokens, b"\r\n"] if self._crlf else self._tokens
        self._longest = max(len(token) for token in self._cut_tokens)
        self._carry = b""
        self._row_open = False

    def feed(self, chunk: bytes) -> bytes:
        """The translation of everything up to a safe cut; the rest is kept for the next chunk."""
        buffer = self._carry + chunk
        cut = self._safe_cut(buffer, max(len(buffer) - (self._longest - 1), 0))
        self._carry = buffer[cut:]
        return self._translate(buffer[:cut])

    def finish(self) -> bytes:
        """The translation of what is left, closing the last row."""
        out = self._translate(self._carry)
        self._carry = b""
        if self._row_open:
            out += QUOTE + b"\n"
            self._row_open = False
        return out

    def _safe_cut(self, buffer: bytes, cut: int) -> int:
        moved = True
        while moved:
            moved = False
            for token in self._cut_tokens:
                for back in range(1, len(token)):
                    start = cut - back
                    if start >= 0 and buffer.startswith(token, start):
                        cut, moved = start, True
                        break
        return cut

    def _translate(self, segment: bytes) -> bytes:
        if not segment:
            return b""
        if self._crlf:
            segment = segment.replace(b"\r\n", b"\n")
        out = segment.replace(QUOTE, QUOTE + QUOTE)
        for token in self._tokens:
            end = QUOTE + b"\n" + QUOTE if token == self._row else QUOTE + DELIMITER + QUOTE
            out = out.replace(token, end)
        if not self._row_open:
            out = QUOTE + out
        # Tokens never overlap (the spec checks it), so the longest one the segment ends with is
        # the one that was replaced there; after a row's end the next row's quote waits for data.
        last = next((token for token in self._tokens if segment.endswith(token)), None)
        self._row_open = last != self._row
        return out if self._row_open else out[:-1]


def translated_chunks(chunks: Iterator[bytes], translator: TerminatorTranslator) -> Iterator[bytes]:
    """The chunks through a `TerminatorTranslator`."""
    for chunk in chunks:
        if out := translator.feed(chunk):
            yield out
    if out := translator.finish():
        yield out


class ChunkStream:
    """A read-only binary file over an iterator of chunks, for pyarrow, ijson and expat."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative); empty at the end."""
        parts = [self._buffer]
        available = len(self._buffer)
        while size is None or size < 0 or available < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            parts.append(chunk)
            available += len(chunk)
        data = b"".join(parts)
        if size is None or size < 0 or len(data) <= size:
            self._buffer = b""
            return data
        self._buffer = data[size:]
        return data[:size]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
