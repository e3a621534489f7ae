"""Pagination styles as small classes behind one interface: first request, next request, the rest.

Each paginator keeps one stream run's state (the first total seen, the links visited) and decides
from a page's body and headers what to ask for next; none of them sends a request, so every style
is tested against plain responses and the reader alone decides how pages are fetched (one by one,
or in parallel when `remaining` knows every other page up front). They stop an API whose pages do
not add up (a total that changes, a link that loops, more than `max_pages`) with a
`PaginationError` instead of writing overlapping or missing records; the faults that reading the
window again may cure (the data moved while it was paged) are `InconsistentPagesError`s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urljoin

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.rest.templates import json_path
from ingestion_assets.specs import (
    CursorPagination,
    LinkHeaderPagination,
    NextUrlPagination,
    OffsetPagination,
    PagePagination,
    Pagination,
)

if TYPE_CHECKING:
    # annotations only: a paginator reads a response, it never makes one
    import requests


class PaginationError(SourceError):
    """The API's pages do not add up: a loop, a changing total, or too many pages."""


class InconsistentPagesError(PaginationError):
    """The pages of one window contradict each other (a moving total, a short or repeated page):
    the data changed while it was paged, so the window is read again from its first page."""


@dataclass(frozen=True)
class PageRequest:
    """One page's URL and query parameters."""

    url: str
    params: dict[str, str]


class Paginator(ABC):
    """Pagination state for one stream run: first request, next request, or all the rest."""

    # pages at positions fixed by their number (page 3 is records 2n..3n-1 whatever page 2 held):
    # a short page before the last one means records were skipped
    fixed_positions: ClassVar[bool] = False
    # the records a full page holds, where the style asks for a page size
    page_size: int | None = None

    def __init__(self, max_pages: int, label: str) -> None:
        self.max_pages = max_pages
        self.label = label

    @property
    def reports_total(self) -> bool:
        """Whether `total` can ever tell: a style that cannot is not asked for a source count."""
        return False

    def expected_records(self) -> int | None:
        """The record count the window's pages must add up to, once the first page told it."""
        return None

    def first(self, request: PageRequest) -> PageRequest:
        """The first page's request."""
        return request

    @abstractmethod
    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        """The next page's request, or None after the last page."""

    def remaining(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> list[PageRequest] | None:
        """After the first page: every other page's request when the total is known, else None."""
        return None

    def check(self, body: Any, response: requests.Response) -> None:  # noqa: B027 - optional hook
        """Raise if a page contradicts an earlier one (e.g. the total changed)."""

    def total(self, body: Any, response: requests.Response) -> int | None:
        """The record count a page reports for the whole request, None when it reports none."""
        return None


def _total(
    body: Any, response: requests.Response, path: str | None, header: str | None
) -> int | None:
    value: Any = None
    if path:
        value = json_path(body, path)
    if value is None and header:
        value = response.headers.get(header)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _CountingPaginator(Paginator):
    """Shared by offset and page pagination: a known total, a flag, or a short page ends it."""

    total_path: str | None
    total_header: str | None
    has_more_path: str | None
    page_size: int

    def __init__(self, max_pages: int, label: str) -> None:
        super().__init__(max_pages, label)
        self.first_total: int | None = None

    @property
    def reports_total(self) -> bool:
        return bool(self.total_path or self.total_header)

    def expected_records(self) -> int | None:
        return self.first_total

    def total(self, body: Any, response: requests.Response) -> int | None:
        return _total(body, response, self.total_path, self.total_header)

    def check(self, body: Any, response: requests.Response) -> None:
        total = self.total(body, response)
        if total is None:
            if self.first_total is not None:
                raise InconsistentPagesError(
                    f"{self.label}: the API reported a total of {self.first_total} on the first "
                    "page and none on a later one, so its pages cannot be checked against it"
                )
            return
        if self.first_total is None:
            self.first_total = total
            # an absurd total fails now, not after max_pages requests one by one
            self._page_count()
        elif total != self.first_total:
            raise InconsistentPagesError(
                f"{self.label}: the API's total changed from {self.first_total} to {total} "
                "during the run, so pages would overlap or skip records; nothing was written. "
                "Re-run the partition once the source is quiet for it."
            )

    def _ends(self, body: Any, response: requests.Response, records: int, fetched: int) -> bool:
        self.check(body, response)
        more = json_path(body, self.has_more_path) if self.has_more_path is not None else None
        if more is False or records == 0:
            return True
        if self.first_total is not None:
            return fetched >= self.first_total
        # a short page ends the stream, unless the API says there is more
        return records < self.page_size and more is not True

    def _page_count(self) -> int:
        assert self.first_total is not None
        pages = -(-self.first_total // self.page_size)
        if pages > self.max_pages:
            raise PaginationError(
                f"{self.label}: the API reports {self.first_total} records, {pages} pages of "
                f"{self.page_size}, more than max_pages ({self.max_pages}); raise max_pages or "
                "the page size if that is right"
            )
        return pages


class OffsetPaginator(_CountingPaginator):
    """`offset`/`limit` parameters."""

    def __init__(self, spec: OffsetPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec
        self.total_path, self.total_header = spec.total_path, spec.total_header
        self.has_more_path, self.page_size = spec.has_more_path, spec.limit

    def _request(self, request: PageRequest, offset: int) -> PageRequest:
        params = {
            **request.params,
            self.spec.offset_param: str(offset),
            self.spec.limit_param: str(self.spec.limit),
        }
        return PageRequest(request.url, params)

    def first(self, request: PageRequest) -> PageRequest:
        return self._request(request, self.spec.start_offset)

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        # advance by what arrived: an API that caps the page size below `limit` loses nothing
        offset = int(request.params[self.spec.offset_param]) + records
        if self._ends(body, response, records, offset - self.spec.start_offset):
            return None
        return self._request(request, offset)

    def remaining(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> list[PageRequest] | None:
        if self._ends(body, response, records, records):
            return []
        if self.first_total is None or self.has_more_path is not None:
            return None
        if records < self.spec.limit:
            # the API capped the page size: the offsets of the other pages are not known
            return None
        start = self.spec.start_offset
        return [
            self._request(request, start + page * self.spec.limit)
            for page in range(1, self._page_count())
        ]


class PageNumberPaginator(_CountingPaginator):
    """`page`/`page_size` parameters."""

    fixed_positions = True

    def __init__(self, spec: PagePagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec
        self.total_path, self.total_header = spec.total_path, spec.total_header
        self.has_more_path, self.page_size = spec.has_more_path, spec.size
        self.total_pages: int | None = None

    def _request(self, request: PageRequest, page: int) -> PageRequest:
        params = {
            **request.params,
            self.spec.page_param: str(page),
            self.spec.size_param: str(self.spec.size),
        }
        return PageRequest(request.url, params)

    def first(self, request: PageRequest) -> PageRequest:
        return self._request(request, self.spec.first_page)

    def check(self, body: Any, response: requests.Response) -> None:
        self._note_pages(body)
        super().check(body, response)

    def _note_pages(self, body: Any) -> None:
        if not self.spec.total_pages_path:
            return
        value = json_path(body, self.spec.total_pages_path)
        pages = int(value) if isinstance(value, int | str) and str(value).isdigit() else None
        if pages is not None and self.total_pages is not None and pages != self.total_pages:
            raise InconsistentPagesError(
                f"{self.label}: the API's total changed from {self.total_pages} to {pages} "
                "pages during the run, so pages would overlap or skip records; nothing was "
                "written. Re-run the partition once the source is quiet for it."
            )
        if self.total_pages is None:
            self.total_pages = pages
            if self.total_pages is not None and self.total_pages > self.max_pages:
                raise PaginationError(
                    f"{self.label}: the API reports {self.total_pages} pages, more than "
                    f"max_pages ({self.max_pages})"
                )

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        self._note_pages(body)
        page = int(request.params[self.spec.page_param])
        pages_done = page - self.spec.first_page + 1
        if self.total_pages is not None:
            self.check(body, response)
            # the page count decides, not a short or empty page: one before the last is a fault
            # the reader reports, never a silent end
            return None if pages_done >= self.total_pages else self._request(request, page + 1)
        if self._ends(body, response, records, pages_done * self.spec.size):
            return None
        return self._request(request, page + 1)

    def remaining(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> list[PageRequest] | None:
        self._note_pages(body)
        if self.total_pages is None:
            if self._ends(body, response, records, self.spec.size):
                return []
            if self.first_total is None or self.has_more_path is not None:
                return None
            pages = self._page_count()
        else:
            pages = self.total_pages
        return [self._request(request, self.spec.first_page + page) for page in range(1, pages)]


class _LoopGuard:
    """Remembers where pagination has been, to stop an API that points back at itself."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.seen: set[str] = set()

    def visit(self, marker: str, what: str) -> None:
        if marker in self.seen:
            raise PaginationError(
                f"{self.label}: the API sent the same {what} twice ({marker[:120]}); its "
                "pagination loops, so the run stops instead of reading pages forever"
            )
        self.seen.add(marker)


class CursorPaginator(Paginator):
    """A continuation token sent back as a parameter."""

    def __init__(self, spec: CursorPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec
        self.guard = _LoopGuard(label)

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        if (
            self.spec.has_more_path is not None
            and json_path(body, self.spec.has_more_path) is False
        ):
            return None
        cursor = json_path(body, self.spec.cursor_path)
        if cursor in (None, "", False):
            return None
        self.guard.visit(str(cursor), "cursor")
        return PageRequest(request.url, {**request.params, self.spec.cursor_param: str(cursor)})


class _FollowingPaginator(Paginator):
    """Follows a URL the API gives for the next page, refusing to visit one twice."""

    what = "next link"

    def __init__(self, max_pages: int, label: str) -> None:
        super().__init__(max_pages, label)
        self.guard = _LoopGuard(label)

    @abstractmethod
    def link(self, body: Any, response: requests.Response) -> str | None:
        """The next page's URL (absolute or relative), or None after the last page."""

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        link = self.link(body, response)
        if not link:
            return None
        url = urljoin(response.url, link)
        self.guard.visit(url, self.what)
        return PageRequest(url, {})


class LinkHeaderPaginator(_FollowingPaginator):
    """RFC 8288 `Link` headers."""

    def __init__(self, spec: LinkHeaderPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec

    def link(self, body: Any, response: requests.Response) -> str | None:
        link = response.links.get(self.spec.rel, {}).get("url")
        return str(link) if link else None


class NextUrlPaginator(_FollowingPaginator):
    """The next page's URL in the body."""

    what = "next URL"

    def __init__(self, spec: NextUrlPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec

    def link(self, body: Any, response: requests.Response) -> str | None:
        link = json_path(body, self.spec.next_path)
        return str(link) if link else None


def paginator_for(spec: Pagination, label: str) -> Paginator:
    """The paginator class for a pagination spec."""
    if isinstance(spec, OffsetPagination):
        return OffsetPaginator(spec, label)
    if isinstance(spec, PagePagination):
        return PageNumberPaginator(spec, label)
    if isinstance(spec, CursorPagination):
        return CursorPaginator(spec, label)
    if isinstance(spec, LinkHeaderPagination):
        return LinkHeaderPaginator(spec, label)
    return NextUrlPaginator(spec, label)
